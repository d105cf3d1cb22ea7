"""Detectors end to end on a tiny COCO-format dataset: build, train two steps, evaluate, draw."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from detection_helpers import CONFIGS, MASK_DETECTORS, build_model, tiny_coco, tiny_config

from flatten_dense.cli import main
from flatten_dense.commands.infer import infer
from flatten_dense.commands.test import test as run_test
from flatten_dense.commands.train import train
from flatten_dense.detection import build_detector, list_detectors
from flatten_dense.detection.coco import CocoDetection
from flatten_dense.detection.metrics import build_coco_metric, metric_targets, summarize_coco
from flatten_dense.models.checkpoint import CheckpointMismatchError

DETECTION_CONFIGS = sorted((CONFIGS / "detection").glob("*.yaml"))


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return tiny_coco(tmp_path_factory.mktemp("coco"))


@pytest.mark.parametrize("config", DETECTION_CONFIGS, ids=lambda p: p.stem)
def test_every_detection_config_builds(config: Path) -> None:
    model = build_model(config, ["model.num_classes=80"])
    assert model.num_foreground_classes == 80


@pytest.mark.parametrize(
    "config, paper_millions",
    [
        ("mask_rcnn_flatten_pvt_t_fpn_1x_coco", 32.0),
        ("mask_rcnn_flatten_swin_t_fpn_1x_coco", 49.0),
        ("cascade_mask_rcnn_flatten_swin_t_fpn_3x_coco", 87.0),
        ("cascade_mask_rcnn_flatten_swin_s_fpn_3x_coco", 108.0),
    ],
)
def test_parameter_counts_match_the_paper(config: str, paper_millions: float) -> None:
    model = build_model(CONFIGS / "detection" / f"{config}.yaml")
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(millions - paper_millions) / paper_millions < 0.03


@pytest.mark.slow
@pytest.mark.parametrize("detector", list_detectors())
def test_two_training_steps_then_evaluation(detector: str, coco_root: Path, tmp_path: Path) -> None:
    config = tiny_config(tmp_path, detector, coco_root)
    metrics = train(config, ["resume=none"])
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    run_dir = tmp_path / f"run_{detector}"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "checkpoints" / "best.ckpt").is_file()
    summary = run_test(config, run_dir / "checkpoints" / "last.ckpt", results_prefix=tmp_path / "results")
    assert 0.0 <= summary["metrics"]["test/bbox_mAP"] <= 1.0
    assert ("test/segm_mAP" in summary["metrics"]) == (detector in MASK_DETECTORS)
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["metrics"] == summary["metrics"]
    iou_types = ("bbox", "segm") if detector in MASK_DETECTORS else ("bbox",)
    assert sorted(summary["results"]) == sorted(iou_types)
    for iou_type in iou_types:
        results = json.loads((tmp_path / f"results.{iou_type}.json").read_text())
        assert all(r["category_id"] in (3, 7, 12) for r in results)  # the file's ids, not labels
    pictures = infer(
        config,
        run_dir / "checkpoints" / "last.ckpt",
        [next((coco_root / "val2017").iterdir())],
        out_dir=tmp_path / "pics",
    )
    assert pictures[0].is_file()


def without_annotations(root: Path, folder: Path) -> Path:
    """The validation split as a test server hands it out: images and an image-info file (images
    and categories, no `annotations` list, like COCO's image_info_test-dev2017.json)."""
    shutil.copytree(root / "val2017", folder / "val2017")
    info = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    (folder / "annotations").mkdir()
    image_info = {"images": info["images"], "categories": info["categories"]}
    (folder / "annotations" / "instances_val2017.json").write_text(json.dumps(image_info))
    return folder


def test_format_only_writes_the_results_files_without_annotations(coco_root: Path, tmp_path: Path, capsys) -> None:
    """`--format-only --out-dir` on data without annotations writes DIR/results.bbox.json and
    DIR/results.segm.json, the very detections `--results-prefix` writes from the labelled run."""
    config = tiny_config(tmp_path, "mask_rcnn", coco_root)
    train(config, ["resume=none", "+model.box_score_thresh=0.0"])
    checkpoint = tmp_path / "run_mask_rcnn" / "checkpoints" / "last.ckpt"
    run_test(config, checkpoint, ["+model.box_score_thresh=0.0"], results_prefix=tmp_path / "labelled")
    metrics = (tmp_path / "run_mask_rcnn" / "metrics.json").read_text()
    server = without_annotations(coco_root, tmp_path / "server")
    out_dir = tmp_path / "submission"
    argv = ["test", str(config), str(checkpoint), f"data.root={server}", "+model.box_score_thresh=0.0"]
    assert main([*argv, "--format-only", "--out-dir", str(out_dir)]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["results.bbox.json", "results.segm.json"]
    for iou_type in ("bbox", "segm"):
        written = json.loads((out_dir / f"results.{iou_type}.json").read_text())
        assert written and written == json.loads((tmp_path / f"labelled.{iou_type}.json").read_text())
    assert "COCO-format bbox results written to" in capsys.readouterr().out
    assert (tmp_path / "run_mask_rcnn" / "metrics.json").read_text() == metrics  # no metrics, nothing replaced
    assert main(argv) == 2  # the same data cannot be evaluated: there is nothing to score against
    assert "missing list 'annotations' (an image-info file: `test --format-only`" in capsys.readouterr().err


def test_ground_truth_as_prediction_scores_one(coco_root: Path) -> None:
    dataset = CocoDetection(coco_root, "val")
    metric = build_coco_metric(with_masks=True)
    for index in range(len(dataset)):
        _, target = dataset[index]
        targets = metric_targets([target], with_masks=True)
        keep = targets[0]["iscrowd"] == 0
        prediction = {
            "boxes": targets[0]["boxes"][keep],
            "labels": targets[0]["labels"][keep],
            "scores": torch.ones(int(keep.sum())),
            "masks": targets[0]["masks"][keep],
        }
        metric.update([prediction], targets)
    summary = summarize_coco(metric.compute())
    assert summary["bbox_mAP"] == pytest.approx(1.0)
    assert summary["segm_mAP"] == pytest.approx(1.0)


def test_detector_output_returns_to_the_original_image_size() -> None:
    model = build_detector(
        "faster_rcnn", backbone="flatten_pvt_v2_b0", num_classes=3, test_min_size=96, test_max_size=128, fpn_channels=32
    ).eval()
    with torch.no_grad():
        outputs = model([torch.rand(3, 50, 70)])
    boxes = outputs[0]["boxes"]
    assert boxes.numel() == 0 or (boxes[:, 2].max() <= 70 + 1e-3 and boxes[:, 3].max() <= 50 + 1e-3)


def test_unknown_config_key_is_one_line(coco_root: Path, tmp_path: Path, capsys) -> None:
    config = tiny_config(tmp_path, "retinanet", coco_root)
    assert main(["train", str(config), "+model.fpn_channel=16"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "model.fpn_channel" in error and "fpn_channels" in error and "\n" not in error


def test_missing_data_root_is_named(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "retinanet", tmp_path / "no_such_coco")
    with pytest.raises(FileNotFoundError, match="no_such_coco"):
        train(config)


def test_checkpoint_of_another_model_is_refused(coco_root: Path, tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "retinanet", coco_root)
    bad = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.head.weight": torch.zeros(1)}}, bad)
    with pytest.raises(CheckpointMismatchError, match="other.ckpt"):
        run_test(config, bad)


@pytest.mark.slow
def test_training_resumes_from_the_last_finished_epoch(coco_root: Path, tmp_path: Path) -> None:
    config = tiny_config(tmp_path, "retinanet", coco_root)
    last = tmp_path / "run_retinanet" / "checkpoints" / "last.ckpt"
    train(config, ["resume=none"])
    first = torch.load(last, map_location="cpu", weights_only=False)
    assert (first["epoch"], first["global_step"]) == (0, 2)
    train(config, ["trainer.max_epochs=2"])  # no resume= given: continues from last.ckpt
    second = torch.load(last, map_location="cpu", weights_only=False)
    assert (second["epoch"], second["global_step"]) == (1, 4)
