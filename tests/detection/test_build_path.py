"""The one build path on detection configs: validation at load time, derived data keys, infer with
overrides and folders, checkpoints of another task, result files that COCOeval agrees with."""

from __future__ import annotations

import json
import traceback
from pathlib import Path

import pytest
import torch
from detection_helpers import CONFIGS, tiny_coco, tiny_config
from faster_coco_eval import COCO, COCOeval_faster

from flatten_dense.cli import main
from flatten_dense.commands.build import build_datamodule, load_run, task_from_checkpoint
from flatten_dense.commands.test import test as run_test
from flatten_dense.commands.train import train
from flatten_dense.core.config import ConfigError

CASCADE = CONFIGS / "detection" / "demo_cascade_mask_rcnn_flatten_pvt_v2_b0_synthetic.yaml"


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return tiny_coco(tmp_path_factory.mktemp("coco"))


@pytest.fixture(scope="module")
def trained_mask_rcnn(coco_root: Path, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("mask_rcnn")
    config = tiny_config(folder, "mask_rcnn", coco_root)
    train(config, ["resume=none"])
    return config, folder / "run_mask_rcnn" / "checkpoints" / "last.ckpt"


def test_cascade_refuses_torchvision_box_regression_weights(capsys) -> None:
    """torchvision spells it bbox_reg_weights; the cascade has per-stage coders and used to drop it silently."""
    assert main(["train", str(CASCADE), "+model.bbox_reg_weights=[10,10,5,5]"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "model.bbox_reg_weights" in error and "cascade_mask_rcnn" in error


def test_all_problems_of_a_config_are_reported_together_before_building(capsys) -> None:
    overrides = ["+model.fpn_channel=16", "+data.batch_sise=2", "+name=x", "trainer.max_epochs=twelve"]
    assert main(["train", str(CASCADE), *overrides]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "4 problems" in error
    for culprit in ("model.fpn_channel", "data.batch_sise", "'name'", "trainer.max_epochs"):
        assert culprit in error


@pytest.mark.parametrize("detector, masks", [("mask_rcnn", True), ("retinanet", False)])
def test_masks_are_loaded_exactly_when_the_detector_needs_them(detector: str, masks: bool, coco_root, tmp_path) -> None:
    run = load_run(tiny_config(tmp_path, detector, coco_root), create_run_dir=False)
    assert build_datamodule(run).with_masks is masks


def test_with_masks_cannot_disagree_with_the_detector(coco_root: Path, tmp_path: Path) -> None:
    """Mask R-CNN with data.with_masks=false used to crash with a KeyError on the first step."""
    config = tiny_config(tmp_path, "mask_rcnn", coco_root)
    with pytest.raises(ConfigError, match="'data.with_masks' is set by the run"):
        load_run(config, ["+data.with_masks=false"], create_run_dir=False)


def test_errors_keep_their_cause(tmp_path: Path, monkeypatch, capsys) -> None:
    config = tiny_config(tmp_path, "retinanet", tmp_path / "no_such_coco")
    assert main(["train", str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"error: data.root directory not found: {tmp_path / 'no_such_coco'}"
    monkeypatch.setenv("FLATTEN_DENSE_DEBUG", "1")
    with pytest.raises(FileNotFoundError) as error:  # the original exception, not a re-worded one
        main(["train", str(config)])
    frames = [frame.filename for frame in traceback.extract_tb(error.value.__traceback__)]
    assert frames[-1].endswith("core/datamodule.py")


@pytest.mark.slow
def test_infer_applies_overrides_takes_folders_and_writes_one_picture_each(
    trained_mask_rcnn, coco_root, tmp_path
) -> None:
    config, checkpoint = trained_mask_rcnn
    overrides = ["model.box_score_thresh=0.99"]
    task = task_from_checkpoint(load_run(config, overrides, create_run_dir=False), checkpoint)
    assert task.model.roi_heads.score_thresh == 0.99 and not task.training
    images = coco_root / "val2017"
    out = tmp_path / "pictures"
    # key=value overrides may stand anywhere, also after the options
    assert main(["infer", str(config), str(checkpoint), str(images), "--out", str(out), *overrides]) == 0
    assert sorted(p.stem for p in out.iterdir()) == sorted(p.stem for p in images.iterdir())


def test_infer_refuses_a_checkpoint_of_the_other_task(coco_root: Path, tmp_path: Path, capsys) -> None:
    config = tiny_config(tmp_path, "retinanet", coco_root)
    other = tmp_path / "segmentation.ckpt"
    hparams = {"model": {"num_classes": 4}, "optimizer": {"lr": 1e-3}, "class_names": ["a", "b", "c", "d"]}
    torch.save({"state_dict": {}, "hyper_parameters": hparams, "task_class": "SegmentationTask"}, other)
    image = next((coco_root / "val2017").iterdir())
    assert main(["infer", str(config), str(other), str(image), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "trained for segmentation" in error and "detection config" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cocoeval_on_the_results_files_equals_the_printed_table(trained_mask_rcnn, coco_root, tmp_path) -> None:
    """Full precision, one file per IoU type (mmdet's names): the files reproduce the metrics exactly."""
    config, checkpoint = trained_mask_rcnn
    # a low score threshold keeps many detections, so rounding would show
    summary = run_test(config, checkpoint, ["model.box_score_thresh=0.0"], results_prefix=tmp_path / "results")
    ground_truth = COCO(str(coco_root / "annotations" / "instances_val2017.json"))
    for iou_type in ("bbox", "segm"):
        path = tmp_path / f"results.{iou_type}.json"
        assert Path(summary["results"][iou_type]) == path
        results = json.loads(path.read_text())
        assert results, "an untrained detector at threshold 0 still detects something"
        evaluator = COCOeval_faster(
            ground_truth, ground_truth.loadRes(str(path)), iou_type, print_function=lambda *a: None
        )
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert evaluator.stats[0] == pytest.approx(summary["metrics"][f"test/{iou_type}_mAP"], abs=1e-6)
        assert evaluator.stats[1] == pytest.approx(summary["metrics"][f"test/{iou_type}_mAP_50"], abs=1e-6)
