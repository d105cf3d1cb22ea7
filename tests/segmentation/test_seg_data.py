"""ADE20K dataset, segmentation transforms, synthetic generator and DataModule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from flatten_dense.segmentation.ade20k import ADE20KDataset
from flatten_dense.segmentation.datamodule import ADE20KDataModule
from flatten_dense.segmentation.synthetic import make_synthetic_ade20k
from flatten_dense.segmentation.transforms import (
    PadToSize,
    PhotoMetricDistortion,
    RandomCropCatMax,
    build_segmentation_transforms,
    rescale_size,
)


def _write_pair(root: Path, stem: str, image: Image.Image, label: Image.Image, split: str = "training") -> None:
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    image.save(root / "images" / split / f"{stem}.png")
    label.save(root / "annotations" / split / f"{stem}.png")


def _sample(image: torch.Tensor, label: torch.Tensor) -> tuple[tv_tensors.Image, dict]:
    return tv_tensors.Image(image), {"mask": tv_tensors.Mask(label), "image_id": "x"}


# ---------------------------------------------------------------- dataset


def test_reduce_zero_label_and_label_modes(tmp_path: Path) -> None:
    values = np.array([[0, 1, 2], [150, 255, 7]], dtype=np.uint8)
    _write_pair(tmp_path, "gray", Image.new("RGB", (3, 2)), Image.fromarray(values, "L"))
    palette_label = Image.fromarray(values, "L").convert("P")
    palette_label.putpalette([200, 10, 10] * 256)  # colours unrelated to the indices
    _write_pair(tmp_path, "pal", Image.new("RGB", (3, 2)), palette_label)
    reduced = ADE20KDataset(tmp_path, "training")
    raw = ADE20KDataset(tmp_path, "training", reduce_zero_label=False, num_classes=151)  # 150 is a class here
    expected = torch.tensor([[255, 0, 1], [149, 255, 6]])
    for i in range(2):
        image, target = reduced[i]
        assert isinstance(target["mask"], tv_tensors.Mask) and target["mask"].dtype == torch.int64
        assert torch.equal(target["mask"], expected)
        assert torch.equal(raw[i][1]["mask"], torch.from_numpy(values.astype(np.int64)))
    assert [reduced[i][1]["image_id"] for i in range(2)] == ["gray", "pal"]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_images_become_rgb(tmp_path: Path, mode: str) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    pil = Image.fromarray(rgb, "RGB")
    if mode == "L":
        pil = pil.convert("L")
    elif mode == "RGBA":
        pil = Image.fromarray(np.dstack([rgb, np.full((5, 4), 37, np.uint8)]), "RGBA")
    else:
        pil = pil.convert("P")
    _write_pair(tmp_path, "a", pil, Image.new("L", (4, 5), 1))
    image, target = ADE20KDataset(tmp_path, "training")[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8
    assert image.shape == (3, 5, 4) and target["mask"].shape == (5, 4)
    if mode == "L":
        gray = torch.from_numpy(np.array(pil)).long()
        assert all(torch.equal(image[c].long(), gray) for c in range(3))
    if mode == "RGBA":  # alpha dropped, colours kept
        assert torch.equal(image, torch.from_numpy(rgb).permute(2, 0, 1))


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="images/training"):
        ADE20KDataset(tmp_path, "training")
    _write_pair(tmp_path, "ok", Image.new("RGB", (4, 4)), Image.new("L", (4, 4)))
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "training" / "lonely.jpg")
    with pytest.raises(FileNotFoundError, match="lonely.jpg"):
        ADE20KDataset(tmp_path, "training")
    (tmp_path / "images" / "training" / "lonely.jpg").unlink()
    (tmp_path / "images" / "training" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "annotations" / "training" / "broken.png").write_bytes(b"")
    dataset = ADE20KDataset(tmp_path, "training")
    with pytest.raises(ValueError, match="broken.png"):
        dataset[0]
    Image.new("RGB", (4, 4)).save(tmp_path / "annotations" / "training" / "ok.png")  # RGB label
    with pytest.raises(ValueError, match="ok.png.*not an index image"):
        dataset[1]


# ---------------------------------------------------------------- transforms


def test_rescale_size_matches_mmcv() -> None:
    assert rescale_size(400, 600, (2048, 512)) == (512, 768)  # short edge bound
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)  # long edge bound
    assert rescale_size(150, 200, (256, 128)) == (128, 171)


def test_small_image_padded_with_ignore() -> None:
    image = torch.full((3, 20, 30), 200, dtype=torch.uint8)
    label = torch.ones(20, 30, dtype=torch.long)
    t = build_segmentation_transforms(
        "train", scale=(30, 20), ratio_range=(1.0, 1.0), crop_size=(32, 40), photometric=False, flip_prob=0.0
    )
    out_image, target = t(*_sample(image, label))
    assert out_image.shape == (3, 32, 40) and target["mask"].shape == (32, 40)
    assert (target["mask"][:20, :30] == 1).all() and (target["mask"][20:] == 255).all()
    assert (target["mask"][:, 30:] == 255).all()
    assert out_image.dtype == torch.float32 and ((out_image[:, :20, :30] * 255).round() == 200).all()
    assert (out_image[:, 20:] == 0).all() and (out_image[:, :, 30:] == 0).all()
    assert isinstance(out_image, tv_tensors.Image) and isinstance(target["mask"], tv_tensors.Mask)


def test_cat_max_ratio_ignores_ignore_index() -> None:
    crop = RandomCropCatMax((10, 10), cat_max_ratio=0.75)
    mask = torch.zeros(10, 10, dtype=torch.long)
    mask[6:] = 255  # 60 % class 0, 40 % ignored: one class only once ignore is excluded
    assert not crop._acceptable(mask, (0, 0, 10, 10))
    mask[:1] = 1  # 50 % class 0, 10 % class 1: 0.83 of the valid pixels is class 0
    assert not crop._acceptable(mask, (0, 0, 10, 10))
    mask[:3] = 1  # 30 % class 0, 30 % class 1
    assert crop._acceptable(mask, (0, 0, 10, 10))


def test_cat_max_ratio_retries_towards_mixed_crops() -> None:
    label = torch.zeros(64, 64, dtype=torch.long)
    label[:, 44:] = 1  # only crops reaching far right mix the classes enough
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    checker = RandomCropCatMax((32, 32), cat_max_ratio=0.75)

    def acceptable_fraction(ratio: float) -> float:
        crop = RandomCropCatMax((32, 32), cat_max_ratio=ratio)
        hits = 0
        for _ in range(60):
            _, target = crop(*_sample(image, label))
            assert target["mask"].shape == (32, 32)
            hits += checker._acceptable(target["mask"], (0, 0, 32, 32))
        return hits / 60

    torch.manual_seed(0)
    without_retry, with_retry = acceptable_fraction(1.0), acceptable_fraction(0.75)
    assert without_retry < 0.5 and with_retry > 0.9
    # a single-class label never satisfies the ratio: the last try is kept, at the crop size
    _, target = RandomCropCatMax((16, 16))(*_sample(image, torch.zeros(64, 64, dtype=torch.long)))
    assert target["mask"].shape == (16, 16)


def _encoded_sample(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of labels 0..k with image = 10 * label in every channel, so alignment is checkable."""
    yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    label = (yy // 8) * 4 + (xx // 8) % 4
    return (label * 10).to(torch.uint8).expand(3, -1, -1).clone(), label


def test_train_transform_keeps_image_and_label_aligned() -> None:
    image, label = _encoded_sample(48, 64)
    exact = build_segmentation_transforms(  # no resampling: crop, flip and pad must match exactly
        "train", scale=(64, 48), ratio_range=(1.0, 1.0), crop_size=(40, 40), photometric=False, flip_prob=0.5
    )
    resized = build_segmentation_transforms(
        "train", scale=(128, 96), ratio_range=(1.0, 1.0), crop_size=(40, 40), photometric=False, flip_prob=0.5
    )
    torch.manual_seed(1)
    for _ in range(6):
        out, target = exact(*_sample(image, label))
        valid = target["mask"] != 255
        assert torch.equal((out[0][valid] * 255).round().long(), target["mask"][valid] * 10)
        out, target = resized(*_sample(image, label))  # 2x: bilinear image vs nearest label
        mask = target["mask"]
        interior = torch.zeros_like(mask, dtype=torch.bool)  # away from block borders and padding
        interior[1:-1, 1:-1] = (
            (mask[1:-1, 1:-1] != 255)
            & (mask[1:-1, 1:-1] == mask[:-2, 1:-1])
            & (mask[1:-1, 1:-1] == mask[2:, 1:-1])
            & (mask[1:-1, 1:-1] == mask[1:-1, :-2])
            & (mask[1:-1, 1:-1] == mask[1:-1, 2:])
        )
        assert interior.sum() > 400
        assert torch.equal((out[0][interior] * 255).round().long(), mask[interior] * 10)


def test_eval_transform_converts_only() -> None:
    """Evaluation images keep their size: the segmentor resizes to its test scale and back."""
    image, label = _encoded_sample(30, 40)
    out, target = build_segmentation_transforms("eval")(*_sample(image, label))
    assert out.dtype == torch.float32 and out.shape == image.shape and torch.equal(target["mask"], label)
    assert torch.allclose(out, image.float() / 255)
    with pytest.raises(ValueError, match="kind"):
        build_segmentation_transforms("test")


def test_photometric_distortion_changes_colour_not_layout() -> None:
    torch.manual_seed(0)
    image, label = _encoded_sample(16, 16)
    image[1] = 255 - image[1]  # some colour, so hue/saturation have an effect
    changed = 0
    for _ in range(8):
        out, target = PhotoMetricDistortion()(*_sample(image, label))
        assert out.dtype == torch.uint8 and out.shape == image.shape and target["mask"] is not None
        changed += not torch.equal(out, image)
    assert changed >= 6  # each of 4 steps fires with p=0.5: all skipped in 1/16 of the draws
    gray = torch.full((3, 8, 8), 90, dtype=torch.uint8)
    for _ in range(8):  # no hue or saturation on gray: channels stay equal
        out, _ = PhotoMetricDistortion()(*_sample(gray, torch.zeros(8, 8, dtype=torch.long)))
        assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


def test_pad_to_size_noop_when_large_enough() -> None:
    image, label = _encoded_sample(16, 16)
    out, target = PadToSize((8, 8))(*_sample(image, label))
    assert torch.equal(out, image) and torch.equal(target["mask"], label)


# ---------------------------------------------------------------- synthetic data + DataModule


def test_synthetic_dataset_loads_through_datamodule(tmp_path: Path) -> None:
    root = make_synthetic_ade20k(tmp_path / "syn", num_train=6, num_val=3, image_size=48, num_classes=5, seed=0)
    label_modes = {Image.open(p).mode for p in (root / "annotations" / "training").iterdir()}
    image_modes = {Image.open(p).mode for p in (root / "images" / "training").iterdir()}
    suffixes = {p.suffix for p in (root / "images" / "training").iterdir()}
    assert label_modes == {"L", "P"} and "L" in image_modes and suffixes == {".jpg", ".png"}
    dataset = ADE20KDataset(root, "validation")
    assert len(dataset) == 3
    values = torch.cat([dataset[i][1]["mask"].flatten() for i in range(3)]).unique()
    assert set(values.tolist()) <= set(range(5)) | {255} and 255 in values.tolist() and len(values) > 2

    dm = ADE20KDataModule(
        root=root, batch_size=4, num_workers=0, train_scale=(64, 48), crop_size=32, ratio_range=(0.5, 1.5), seed=0
    )
    assert dm.num_classes == 5 and dm.class_names[0] == "class_0"
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32  # one input convention: [0, 1]
    assert masks.shape == (4, 32, 32) and masks.dtype == torch.int64
    assert len(dm.train_dataloader()) == 1  # 6 images, batch 4, last partial batch dropped
    images, targets = next(iter(dm.val_dataloader()))
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == 1
    assert images[0].shape[-2:] == dataset[0][0].shape[-2:] and images[0].dtype == torch.float32  # own size
    assert targets[0]["mask"].shape == dataset[0][1]["mask"].shape  # label at original size
