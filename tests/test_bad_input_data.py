"""Bad data never surprises: every planted fault is one stderr line, exit 2, naming the culprit,
found at start-up (before the first training step); `data.skip_bad_samples` skips instead;
`check-data` prints its table; 16-bit images are scaled, not clipped."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flatten_dense.cli import main
from flatten_dense.core.image_io import read_rgb_image
from flatten_dense.detection.task import DetectionTask
from flatten_dense.segmentation.synthetic import make_synthetic_ade20k
from flatten_dense.segmentation.task import SegmentationTask

sys.path.insert(0, str(Path(__file__).parent / "detection"))
from detection_helpers import tiny_coco, tiny_config  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SEG_CONFIG = CONFIGS / "segmentation" / "demo_sem_fpn_flatten_pvt_v2_b0_synthetic.yaml"


@pytest.fixture(scope="module")
def clean_coco(tmp_path_factory) -> Path:
    return tiny_coco(tmp_path_factory.mktemp("clean_coco"))


@pytest.fixture
def coco(clean_coco: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny COCO data to break."""
    return Path(shutil.copytree(clean_coco, tmp_path / "coco"))


@pytest.fixture
def no_step(monkeypatch):
    """A training step that fails loudly: a fault found before step 1 never reaches it."""

    def step(self, *args, **kwargs):
        raise AssertionError("a training step ran")

    monkeypatch.setattr(DetectionTask, "training_step", step)
    monkeypatch.setattr(SegmentationTask, "training_step", step)


def _annotations(root: Path, split: str = "train") -> tuple[Path, dict]:
    path = root / "annotations" / f"instances_{split}2017.json"
    return path, json.loads(path.read_text())


def _polygon_annotation(data: dict) -> dict:
    return next(a for a in data["annotations"] if isinstance(a.get("segmentation"), list) and not a.get("iscrowd"))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == err[-1], err
    return errors[0]


def _train(config: Path, *overrides: str) -> int:
    return main(["train", str(config), "resume=none", *overrides])


@pytest.mark.parametrize("numbers", [2, 4, 5])
def test_short_or_odd_polygon_is_one_line_naming_file_and_annotation(numbers, coco, tmp_path, capsys, no_step):
    path, data = _annotations(coco)
    ann = _polygon_annotation(data)
    ann["segmentation"] = [[float(v) for v in range(1, numbers + 1)]]
    path.write_text(json.dumps(data))
    image = next(i for i in data["images"] if i["id"] == ann["image_id"])["file_name"]
    assert _train(tiny_config(tmp_path, "mask_rcnn", coco)) == 2
    line = _one_error_line(capsys)
    assert image in line and f"annotation {ann['id']}" in line and f"{numbers} numbers" in line
    assert not (tmp_path / "run_mask_rcnn" / "checkpoints").exists()


def test_unknown_category_and_bad_rle_are_named(coco, tmp_path, capsys, no_step):
    path, data = _annotations(coco)
    data["annotations"][0]["category_id"] = 999
    path.write_text(json.dumps(data))
    assert _train(tiny_config(tmp_path, "mask_rcnn", coco)) == 2
    line = _one_error_line(capsys)
    assert "unknown category_id 999" in line and f"annotation {data['annotations'][0]['id']}" in line

    data["annotations"][0]["category_id"] = data["categories"][0]["id"]
    ann = _polygon_annotation(data)
    ann["segmentation"] = {"size": [3, 3], "counts": [9]}
    path.write_text(json.dumps(data))
    assert _train(tiny_config(tmp_path, "mask_rcnn", coco)) == 2
    line = _one_error_line(capsys)
    assert "RLE size [3, 3]" in line and f"annotation {ann['id']}" in line


def test_corrupt_validation_image_is_found_before_the_first_step(coco, tmp_path, capsys, no_step):
    _, data = _annotations(coco, "val")
    victim = coco / "val2017" / data["images"][-1]["file_name"]  # past any sanity batch
    victim.write_bytes(b"not an image")
    assert _train(tiny_config(tmp_path, "retinanet", coco)) == 2
    line = _one_error_line(capsys)
    assert str(victim) in line and "bad val sample" in line


def test_image_of_another_size_than_the_json_says(coco, tmp_path, capsys, no_step):
    _, data = _annotations(coco)
    victim = coco / "train2017" / data["images"][0]["file_name"]
    Image.new("RGB", (7, 5)).save(victim)
    assert _train(tiny_config(tmp_path, "retinanet", coco)) == 2
    line = _one_error_line(capsys)
    assert str(victim) in line and "7x5" in line


@pytest.mark.parametrize(
    "split, change, message",
    [
        ("train", "annotations", "no (non-crowd) annotations: training would learn background only"),
        ("val", "annotations", "no ground truth to evaluate"),
        ("train", "images", "lists no images"),
    ],
)
def test_empty_train_set_or_validation_without_ground_truth_is_refused(
    split, change, message, coco, tmp_path, capsys, no_step
):
    path, data = _annotations(coco, split)
    if change == "images":
        data["images"] = []
    data["annotations"] = []
    path.write_text(json.dumps(data))
    assert _train(tiny_config(tmp_path, "retinanet", coco)) == 2
    line = _one_error_line(capsys)
    assert message in line and path.name in line


def _truncate(path: Path) -> None:
    """Keep the header (so the start-up check passes) and cut the pixel data."""
    data = path.read_bytes()
    path.write_bytes(data[: max(80, len(data) // 3)])


def test_decode_failure_in_a_worker_process_is_one_line(coco, tmp_path, capsys):
    _, data = _annotations(coco)
    victims = [coco / "train2017" / i["file_name"] for i in data["images"]]
    for victim in victims:
        _truncate(victim)
    assert _train(tiny_config(tmp_path, "retinanet", coco), "data.num_workers=2") == 2
    line = _one_error_line(capsys)
    assert "in DataLoader worker" in line and any(str(v) in line for v in victims) and "Traceback" not in line


def _skip_warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.getMessage().startswith("data.skip_bad_samples")
    ]


@pytest.mark.parametrize("workers", [0, 2])
def test_skip_bad_samples_warns_once_per_epoch_and_split(workers, coco, tmp_path, caplog):
    """Train: one sample the start-up check leaves out (unknown category), one that passes the check
    but fails to decode (cut pixel data); val: one that fails to decode. With workers the failures
    happen in worker processes: the warnings come from the main process, one per epoch and split."""
    path, data = _annotations(coco)
    ann = data["annotations"][0]
    ann["category_id"] = 999
    path.write_text(json.dumps(data))
    left_out = next(i for i in data["images"] if i["id"] == ann["image_id"])["file_name"]
    truncated = next(i["file_name"] for i in data["images"] if i["file_name"] != left_out)
    _truncate(coco / "train2017" / truncated)
    val_truncated = _annotations(coco, "val")[1]["images"][-1]["file_name"]
    _truncate(coco / "val2017" / val_truncated)
    config = tiny_config(tmp_path, "retinanet", coco)
    caplog.set_level(logging.INFO)
    overrides = ["+data.skip_bad_samples=true", f"data.num_workers={workers}", "trainer.max_epochs=2"]
    assert _train(config, *overrides) == 0
    warnings = _skip_warnings(caplog)
    by_epoch = sorted(w.split(": ")[1] for w in warnings)
    assert by_epoch == ["train epoch 0", "train epoch 1", "val epoch 0", "val epoch 1"], warnings
    for line in warnings:
        if ": train epoch" in line:
            assert "skipped 2 of 4 sample(s)" in line, line
            assert f"1 left out by the start-up check: {coco / 'train2017' / left_out} (annotation {ann['id']})" in line
            assert f"1 failed to decode: {coco / 'train2017' / truncated}: " in line, line
        else:
            assert "skipped 1 of 3 sample(s)" in line and f"{coco / 'val2017' / val_truncated}: " in line, line
            assert "left out" not in line, line
    assert (tmp_path / "run_retinanet" / "checkpoints" / "last.ckpt").is_file()


def test_skip_bad_samples_is_silent_in_an_epoch_without_skips(coco, tmp_path, caplog):
    config = tiny_config(tmp_path, "retinanet", coco)
    assert _train(config, "+data.skip_bad_samples=true", "data.num_workers=2", "trainer.limit_val_batches=1") == 0
    assert _skip_warnings(caplog) == []
    assert (tmp_path / "run_retinanet" / "checkpoints" / "last.ckpt").is_file()


def test_check_data_prints_a_table_and_exits_2_on_a_broken_copy(coco, tmp_path, capsys):
    config = tiny_config(tmp_path, "mask_rcnn", coco)
    assert main(["check-data", str(config)]) == 0
    out = capsys.readouterr().out
    assert "split" in out and "verdict" in out and out.count(" ok") == 2
    path, data = _annotations(coco)
    _polygon_annotation(data)["segmentation"] = [[1, 2, 3, 4, 5]]
    path.write_text(json.dumps(data))
    (coco / "val2017" / _annotations(coco, "val")[1]["images"][0]["file_name"]).write_bytes(b"junk")
    assert main(["check-data", str(config)]) == 2
    captured = capsys.readouterr()
    assert "BAD" in captured.out and captured.out.count("bad: ") == 2
    err = captured.err.strip()
    assert "\n" not in err and "2 bad sample(s)" in err
    assert main(["check-data", str(config), "+data.skip_bad_samples=true"]) == 0


# ------------------------------------------------------------------ segmentation


@pytest.fixture
def ade(tmp_path: Path) -> Path:
    return make_synthetic_ade20k(tmp_path / "ade", num_train=4, num_val=2, image_size=(48, 64), num_classes=4)


def _seg_train(ade: Path, tmp_path: Path) -> int:
    return _train(
        SEG_CONFIG,
        f"data.root={ade}",
        f"trainer.default_root_dir={tmp_path / 'run'}",
        "data.num_workers=0",
    )


def _label(ade: Path, split: str, k: int = 0) -> Path:
    return sorted((ade / "annotations" / split).glob("*.png"))[k]


def test_labels_above_the_class_count_are_found_at_start_up(ade, tmp_path, capsys, no_step):
    label = _label(ade, "training")
    values = np.asarray(Image.open(label)).copy()
    values[0, :3] = 19
    Image.fromarray(values.astype(np.uint8), mode="L").save(label)
    assert _seg_train(ade, tmp_path) == 2
    line = _one_error_line(capsys)
    assert str(label) in line and "label values 19 are out of range for 4 classes" in line


def test_label_of_another_size_and_validation_without_ground_truth(ade, tmp_path, capsys, no_step):
    label = _label(ade, "validation")
    Image.fromarray(np.ones((5, 5), np.uint8), mode="L").save(label)
    assert _seg_train(ade, tmp_path) == 2
    assert str(label) in _one_error_line(capsys)
    for k, image in enumerate(sorted((ade / "images" / "validation").iterdir())):
        width, height = Image.open(image).size
        Image.fromarray(np.zeros((height, width), np.uint8), mode="L").save(_label(ade, "validation", k))
    assert _seg_train(ade, tmp_path) == 2
    assert "no ground truth to evaluate" in _one_error_line(capsys)


# ------------------------------------------------------------------ image modes


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64, dtype=np.uint16).reshape(8, 8)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    image = read_rgb_image(tmp_path / "g16.png")
    assert image.dtype == torch.uint8 and image.shape == (3, 8, 8)
    expected = torch.from_numpy(((ramp.astype(np.int64) + 128) // 257).astype(np.uint8))
    assert torch.equal(image[0], expected) and torch.equal(image[0], image[2])
    assert 100 < image.float().mean() < 155  # a ramp, not saturated white

    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "half.tif")
    assert torch.all(read_rgb_image(tmp_path / "half.tif") == 128)
    Image.fromarray(np.full((4, 4), 7.5, np.float32)).save(tmp_path / "hdr.tif")
    with pytest.raises(ValueError, match=r"hdr.tif: PIL mode 'F' with values 7.5..7.5 has no 8-bit meaning"):
        read_rgb_image(tmp_path / "hdr.tif")


def _report_on_rank(rank: int, folder: Path, port: int) -> None:
    """One DDP rank: a skipping dataset whose decode failures differ per rank, reported at epoch end."""
    import torch.distributed as dist

    from flatten_dense.core.data_check import Problem, SkippingDataset
    from flatten_dense.core.skipped_samples import SkippedSamplesReport

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    dataset = SkippingDataset(list(range(8)), [Problem(0, "a.png", "unknown category_id 9", 4)], split="train")
    # sample 3 fails on both ranks (a padded shard repeats it), 5 on rank 0 only, 6 on rank 1 only
    dataset.record([Problem(3, "c.png", "truncated"), Problem(5 + rank, f"r{rank}.png", "truncated")])
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logging.getLogger("flatten_dense.core.skipped_samples").addHandler(handler)
    trainer = type(
        "Trainer",
        (),
        {
            "datamodule": type("DM", (), {"skipping": lambda self, split: dataset if split == "train" else None})(),
            "is_global_zero": rank == 0,
            "current_epoch": 3,
        },
    )()
    SkippedSamplesReport().on_train_epoch_end(trainer, None)
    SkippedSamplesReport().on_train_epoch_end(trainer, None)  # nothing new: start-up skips only
    (folder / f"rank{rank}.json").write_text(json.dumps(lines))
    dist.destroy_process_group()


def test_skip_report_under_ddp_counts_every_rank_once_on_rank_zero(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_report_on_rank, args=(tmp_path, port), nprocs=2, start_method="fork")
    assert json.loads((tmp_path / "rank1.json").read_text()) == []
    first, second = json.loads((tmp_path / "rank0.json").read_text())
    assert first.startswith("data.skip_bad_samples: train epoch 3: skipped 4 of 8 sample(s)"), first
    assert "1 left out by the start-up check: a.png (annotation 4)" in first
    assert "3 failed to decode: c.png: truncated; r0.png: truncated; r1.png: truncated" in first
    assert second.startswith("data.skip_bad_samples: train epoch 3: skipped 1 of 8") and "failed" not in second
