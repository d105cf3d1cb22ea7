"""COCO detection data: dataset decoding, transforms alignment, DataModule, synthetic generator."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from faster_coco_eval import COCO
from faster_coco_eval.core import mask as mask_utils
from PIL import Image
from torchvision import tv_tensors

from flatten_dense.core.collate import collate_as_lists
from flatten_dense.detection.coco import CocoDetection
from flatten_dense.detection.datamodule import CocoDataModule
from flatten_dense.detection.synthetic import CATEGORIES, make_synthetic_coco
from flatten_dense.detection.transforms import build_detection_transforms

H, W = 20, 30  # hand-made image size


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """Written independently of the generator: runs over the column-major pixels, zeros first."""
    flat = mask.flatten(order="F").tolist()
    counts, current, run = [], 0, 0
    for v in flat:
        if v != current:
            counts.append(run)
            current, run = v, 0
        run += 1
    counts.append(run)
    return {"size": [mask.shape[0], mask.shape[1]], "counts": counts}


def _expected_masks() -> dict[str, np.ndarray]:
    rle_mask = np.zeros((H, W), np.uint8)
    rle_mask[10:15, 20:26] = 1  # 5 x 6 block
    rle_mask[12, 27] = 1  # plus one stray pixel
    crowd = np.zeros((H, W), np.uint8)
    crowd[1:4, 12:18] = 1
    crowd[5:7, 14:16] = 1
    return {"rle": rle_mask, "crowd": crowd}


def _write_coco(root: Path, split: str = "train") -> Path:
    """A hand-made COCO split with known pixels: polygon, compressed RLE, uncompressed RLE (crowd),
    a degenerate box, an empty grayscale image and a palette image; category ids 9 and 5."""
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / f"{split}2017").mkdir(parents=True, exist_ok=True)
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(root / f"{split}2017" / "a.png")
    gray = np.full((H, W), 77, np.uint8)
    Image.fromarray(gray).save(root / f"{split}2017" / "gray.png")  # mode "L"
    Image.fromarray(rgb).convert("P").save(root / f"{split}2017" / "palette.png")

    masks = _expected_masks()
    compressed = mask_utils.encode(np.asfortranarray(masks["rle"]))
    compressed = {"size": compressed["size"], "counts": compressed["counts"].decode("ascii")}
    data = {
        "images": [
            {"id": 42, "file_name": "a.png", "height": H, "width": W},
            {"id": 7, "file_name": "gray.png", "height": H, "width": W},
            {"id": 99, "file_name": "palette.png", "height": H, "width": W},
        ],
        "categories": [{"id": 9, "name": "nine"}, {"id": 5, "name": "five"}],  # unsorted on purpose
        "annotations": [
            # polygon rectangle: pycocotools fills columns 2..7, rows 3..8
            {
                "id": 1,
                "image_id": 42,
                "category_id": 9,
                "bbox": [2, 3, 6, 6],
                "area": 36.0,
                "iscrowd": 0,
                "segmentation": [[2, 3, 8, 3, 8, 9, 2, 9]],
            },
            {
                "id": 2,
                "image_id": 42,
                "category_id": 5,
                "bbox": [20, 10, 8, 5],
                "area": 31.0,
                "iscrowd": 0,
                "segmentation": compressed,
            },
            {
                "id": 3,
                "image_id": 42,
                "category_id": 9,
                "bbox": [12, 1, 6, 6],
                "area": 22.0,
                "iscrowd": 1,
                "segmentation": _uncompressed_rle(masks["crowd"]),
            },
            {
                "id": 4,
                "image_id": 42,
                "category_id": 5,
                "bbox": [5, 5, 0.5, 4],
                "area": 2.0,
                "iscrowd": 0,
                "segmentation": [[5, 5, 5.5, 5, 5.5, 9, 5, 9]],
            },  # degenerate: width < 1
            {
                "id": 5,
                "image_id": 99,
                "category_id": 5,
                "bbox": [1, 1, 4, 0],
                "area": 0.0,
                "iscrowd": 0,
                "segmentation": [],
            },  # degenerate: height 0
            {
                "id": 6,
                "image_id": 99,
                "category_id": 5,
                "bbox": [25, 15, 10, 10],
                "area": 25.0,
                "iscrowd": 0,
                "segmentation": [],
            },  # pokes out of the image: clamped to [25, 15, 30, 20]
        ],
    }
    path = root / "annotations" / f"instances_{split}2017.json"
    path.write_text(json.dumps(data))
    return root


@pytest.fixture()
def coco_root(tmp_path: Path) -> Path:
    return _write_coco(tmp_path / "coco")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_coco(tmp_path_factory.mktemp("synth"), num_train=24, num_val=6, image_size=(64, 96), seed=3)


def _by_image_id(ds: CocoDetection, image_id: int):
    return ds[ds.ids.index(image_id)]


# ----------------------------------------------------------------------------- dataset


def test_polygon_and_rle_masks_decode_to_the_right_pixels(coco_root: Path) -> None:
    ds = CocoDetection(coco_root, "train")
    image, target = _by_image_id(ds, 42)
    expected = _expected_masks()
    masks = target["masks"]
    assert isinstance(masks, tv_tensors.Mask) and masks.dtype == torch.uint8 and masks.shape == (3, H, W)
    polygon = np.zeros((H, W), np.uint8)
    polygon[3:9, 2:8] = 1
    assert np.array_equal(masks[0].numpy(), polygon)
    assert np.array_equal(masks[1].numpy(), expected["rle"])  # compressed RLE (counts as str)
    assert np.array_equal(masks[2].numpy(), expected["crowd"])  # uncompressed RLE
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert tuple(target["boxes"].canvas_size) == (H, W)
    assert target["boxes"].tolist() == [[2, 3, 8, 9], [20, 10, 28, 15], [12, 1, 18, 7]]
    assert target["area"].dtype == torch.float32 and target["area"].tolist() == [36.0, 31.0, 22.0]
    assert target["image_id"] == 42 and isinstance(target["image_id"], int)
    assert image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert image[0].eq(200).all() and image[1:].eq(0).all()


def test_crowd_flag_kept_and_labels_contiguous(coco_root: Path) -> None:
    ds = CocoDetection(coco_root, "train")
    _, target = _by_image_id(ds, 42)
    assert target["iscrowd"].tolist() == [0, 0, 1]
    assert target["iscrowd"].dtype == torch.int64 and target["labels"].dtype == torch.int64
    # ids sorted: 5 -> label 1, 9 -> label 2
    assert target["labels"].tolist() == [2, 1, 2]


def test_non_contiguous_ids_round_trip(coco_root: Path) -> None:
    ds = CocoDetection(coco_root, "train")
    assert ds.category_ids == [5, 9] and ds.class_names == ["five", "nine"] and ds.num_classes == 2
    assert ds.label_to_category_id == {1: 5, 2: 9}
    for label, cat in ds.label_to_category_id.items():
        assert ds.category_id_to_label[cat] == label
    assert ds.labels_to_category_ids(torch.tensor([2, 1, 2])).tolist() == [9, 5, 9]


def test_empty_image_and_grayscale_become_rgb(coco_root: Path) -> None:
    ds = CocoDetection(coco_root, "train")
    image, target = _by_image_id(ds, 7)
    assert image.shape == (3, H, W) and image.eq(77).all()
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, H, W) and target["iscrowd"].shape == (0,) and target["area"].shape == (0,)
    palette_image, palette_target = _by_image_id(ds, 99)
    assert palette_image.shape == (3, H, W)
    # the box poking out of the image is clamped, not dropped; no segmentation -> filled box
    assert palette_target["boxes"].tolist() == [[25, 15, 30, 20]]
    assert palette_target["masks"][0].sum().item() == 25


def test_without_masks(coco_root: Path) -> None:
    _, target = _by_image_id(CocoDetection(coco_root, "train", with_masks=False), 42)
    assert "masks" not in target and target["boxes"].shape == (3, 4)


def test_degenerate_boxes_dropped_and_logged_once(coco_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="flatten_dense.detection.coco"):
        ds = CocoDetection(coco_root, "train")
    records = [r for r in caplog.records if r.name == "flatten_dense.detection.coco"]
    assert len(records) == 1 and "dropped 2 " in records[0].getMessage()
    assert sum(len(ds[i][1]["labels"]) for i in range(len(ds))) == 4


def test_missing_files_name_the_path(coco_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        CocoDetection(tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        CocoDetection(coco_root, "val")
    (coco_root / "train2017" / "gray.png").unlink()
    ds = CocoDetection(coco_root, "train")
    with pytest.raises(FileNotFoundError, match="gray.png"):
        _by_image_id(ds, 7)


def test_corrupt_image_is_value_error_naming_the_file(coco_root: Path) -> None:
    (coco_root / "train2017" / "gray.png").write_bytes(b"not a png at all")
    good = (coco_root / "train2017" / "a.png").read_bytes()
    (coco_root / "train2017" / "palette.png").write_bytes(good[: len(good) // 2])  # truncated
    ds = CocoDetection(coco_root, "train")
    with pytest.raises(ValueError, match="gray.png"):
        _by_image_id(ds, 7)
    with pytest.raises(ValueError, match="palette.png"):
        _by_image_id(ds, 99)


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"images": [], "categories": []}),
        json.dumps({"images": [{"id": 1}], "annotations": [], "categories": []}),
    ],
)
def test_malformed_annotation_file_is_value_error_naming_it(coco_root: Path, content: str) -> None:
    (coco_root / "annotations" / "instances_train2017.json").write_text(content)
    with pytest.raises(ValueError, match="instances_train2017.json"):
        CocoDetection(coco_root, "train")


# ----------------------------------------------------------------------------- transforms


def _sample():
    """3 x 20 x 30 image; two instances whose masks fill their boxes exactly, plus a 1.5-px sliver."""
    image = tv_tensors.Image(torch.randint(0, 256, (3, H, W), dtype=torch.uint8))
    boxes = [[2, 4, 10, 12], [20, 0, 30, 6], [14, 14, 15.5, 18]]
    masks = torch.zeros(3, H, W, dtype=torch.uint8)
    masks[0, 4:12, 2:10] = 1
    masks[1, 0:6, 20:30] = 1
    masks[2, 14:18, 14:15] = 1
    target = {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes), format="XYXY", canvas_size=(H, W)),
        "labels": torch.tensor([1, 2, 3]),
        "masks": tv_tensors.Mask(masks),
        "iscrowd": torch.tensor([0, 1, 0]),
        "area": torch.tensor([64.0, 60.0, 4.0]),
        "image_id": 5,
    }
    return image, target


def _mask_box(mask: torch.Tensor) -> list[int]:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]


def test_train_flip_and_resize_keep_everything_aligned() -> None:
    image, target = _sample()
    transform = build_detection_transforms("train", min_size=40, max_size=1000, flip_prob=1.0)
    out_image, out = transform(image, target)
    assert out_image.dtype == torch.float32 and out_image.shape == (3, 40, 60)
    assert 0.0 <= out_image.min() and out_image.max() <= 1.0
    # flipped by hand: x -> 30 - x, then everything doubled
    assert out["boxes"].tolist() == [[40, 8, 56, 24], [0, 0, 20, 12], [29, 28, 32, 36]]
    assert tuple(out["boxes"].canvas_size) == (40, 60)
    assert out["labels"].tolist() == [1, 2, 3] and out["iscrowd"].tolist() == [0, 1, 0]
    assert out["area"].tolist() == [256.0, 240.0, 16.0]  # scaled by (40 * 60) / (20 * 30)
    assert out["masks"].shape == (3, 40, 60)
    for mask, box in zip(out["masks"][:2], out["boxes"][:2]):
        assert _mask_box(mask) == box.int().tolist()
        assert mask.sum().item() == (box[2] - box[0]) * (box[3] - box[1])
    assert out["image_id"] == 5


def test_sanitize_drops_shrunken_boxes_with_their_labels_iscrowd_area_and_masks() -> None:
    image, target = _sample()
    transform = build_detection_transforms("train", min_size=10, max_size=1000, flip_prob=0.0)
    _, out = transform(image, target)  # scale 0.5: the 1.5-px sliver becomes 0.75 px and goes
    assert out["boxes"].tolist() == [[1, 2, 5, 6], [10, 0, 15, 3]]
    assert out["labels"].tolist() == [1, 2] and out["iscrowd"].tolist() == [0, 1]
    assert out["area"].tolist() == [16.0, 15.0] and out["masks"].shape == (2, 10, 15)


def test_multiscale_picks_sizes_from_the_list() -> None:
    torch.manual_seed(0)
    sizes = [16, 24, 32]
    transform = build_detection_transforms("train_multiscale", min_size=sizes, max_size=1000)
    seen = set()
    for _ in range(30):
        image, target = _sample()
        out_image, out = transform(image, target)
        seen.add(out_image.shape[-2])  # height is the shorter side
        assert out["masks"].shape[-2:] == out_image.shape[-2:]
    assert seen <= set(sizes) and len(seen) > 1
    capped = build_detection_transforms("train_multiscale", min_size=[32, 40], max_size=36)
    assert capped(*_sample())[0].shape[-2:] == (24, 36)  # longer side capped at max_size


def test_eval_only_converts_to_float_and_pickles() -> None:
    image, target = _sample()
    transform = build_detection_transforms("eval")
    out_image, out = transform(image, target)
    assert out_image.dtype == torch.float32 and out_image.shape == image.shape
    assert torch.allclose(out_image, image.float() / 255)
    assert out["boxes"].tolist() == target["boxes"].tolist() and out["area"].tolist() == [64.0, 60.0, 4.0]
    for kind in ("train", "train_multiscale", "eval"):
        pickle.loads(pickle.dumps(build_detection_transforms(kind)))  # spawned workers need this
    with pytest.raises(ValueError, match="unknown"):
        build_detection_transforms("bogus")
    with pytest.raises(ValueError, match="train_multiscale"):
        build_detection_transforms("train", min_size=[1, 2])


# ----------------------------------------------------------------------------- collate / DataModule


def test_collate_gives_lists(coco_root: Path) -> None:
    ds = CocoDetection(coco_root, "train", transforms=build_detection_transforms("eval"))
    images, targets = collate_as_lists([ds[0], ds[1]])
    assert isinstance(images, list) and isinstance(targets, list) and len(images) == len(targets) == 2
    assert all(isinstance(t, dict) for t in targets)


def test_datamodule_yields_batches(synthetic_root: Path) -> None:
    dm = CocoDataModule(root=synthetic_root, batch_size=4, num_workers=0, train_min_size=48, train_max_size=200)
    assert dm.num_classes == 3 and dm.category_ids == [3, 7, 12]  # available before setup()
    assert dm.class_names == [c["name"] for c in CATEGORIES]
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == len(targets) == 4
    assert all(img.dtype == torch.float32 and min(img.shape[-2:]) == 48 for img in images)
    assert all(t["masks"].shape[-2:] == img.shape[-2:] for img, t in zip(images, targets))
    val_images, val_targets = next(iter(dm.val_dataloader()))
    assert all(img.shape[-2:] == (64, 96) for img in val_images)  # eval keeps the original size
    assert [t["image_id"] for t in val_targets] == [25, 26, 27, 28]  # sequential, never shuffled
    dm.setup("test")
    assert sum(len(b[0]) for b in dm.test_dataloader()) == 6


def test_datamodule_multiscale_and_errors(synthetic_root: Path, tmp_path: Path) -> None:
    dm = CocoDataModule(
        root=synthetic_root,
        batch_size=2,
        num_workers=0,
        train_pipeline="train_multiscale",
        train_min_size=range(32, 65, 16),
        train_max_size=300,
    )
    dm.setup("fit")
    images, _ = next(iter(dm.train_dataloader()))
    assert all(min(img.shape[-2:]) in (32, 48, 64) for img in images)
    with pytest.raises(FileNotFoundError, match="missing_root"):
        CocoDataModule(root=tmp_path / "missing_root")
    with pytest.raises(ValueError, match="train_pipeline"):
        CocoDataModule(root=synthetic_root, train_pipeline="eval")


# ----------------------------------------------------------------------------- synthetic generator


def test_synthetic_dataset_has_the_promised_properties(synthetic_root: Path) -> None:
    coco = COCO(str(synthetic_root / "annotations" / "instances_train2017.json"))
    assert sorted(coco.getCatIds()) == [3, 7, 12]
    images = coco.dataset["images"]
    assert len(images) == 24 and all(img["file_name"].endswith(".png") for img in images)
    colors = {c["id"]: np.array(c["color"]) for c in CATEGORIES}
    kinds = {"polygon": 0, "compressed": 0, "uncompressed": 0, "crowd": 0, "empty": 0, "gray": 0}
    for img in images:
        pil = Image.open(synthetic_root / "train2017" / img["file_name"])
        assert pil.size == (96, 64)
        kinds["gray"] += pil.mode == "L"
        pixels = np.asarray(pil.convert("RGB")).astype(np.float32)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        kinds["empty"] += not anns
        instances = [a for a in anns if not a["iscrowd"]]
        assert (len(instances) >= 1) == bool(anns) and len(instances) <= 4
        for ann in anns:
            seg = ann["segmentation"]
            if isinstance(seg, list):
                kinds["polygon"] += 1
            else:
                kinds["compressed" if isinstance(seg["counts"], str) else "uncompressed"] += 1
            kinds["crowd"] += ann["iscrowd"]
            mask = coco.annToMask(ann).astype(bool)
            assert ann["area"] == mask.sum()
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            assert np.allclose(ann["bbox"], mask_utils.toBbox(rle))
            if not ann["iscrowd"]:  # big objects: 20-60% of the shorter side
                assert 0.15 * 64 <= max(ann["bbox"][2:]) <= 0.65 * 64
            if pil.mode == "RGB":  # one distinct colour per category
                assert np.abs(pixels[mask].mean(0) - colors[ann["category_id"]]).max() < 12
    assert kinds["polygon"] > kinds["compressed"] > 0
    assert kinds["uncompressed"] == kinds["crowd"] > 0
    assert kinds["empty"] >= 1 and kinds["gray"] >= 2
    val = json.loads((synthetic_root / "annotations" / "instances_val2017.json").read_text())
    assert {i["id"] for i in val["images"]}.isdisjoint(i["id"] for i in images)


def test_synthetic_generator_is_deterministic(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a = files(make_synthetic_coco(tmp_path / "a", num_train=4, num_val=2, image_size=(48, 64), seed=1))
    b = files(make_synthetic_coco(tmp_path / "b", num_train=4, num_val=2, image_size=(48, 64), seed=1))
    c = files(make_synthetic_coco(tmp_path / "c", num_train=4, num_val=2, image_size=(48, 64), seed=2))
    assert a == b and a != c and len(a) == 8


def test_synthetic_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flatten_dense.detection.synthetic import main

    main([str(tmp_path / "cli"), "--num-train", "3", "--num-val", "2", "--height", "48", "--width", "64"])
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli")
    ds = CocoDetection(tmp_path / "cli", "val")
    assert len(ds) == 2 and ds[0][0].shape == (3, 48, 64)
