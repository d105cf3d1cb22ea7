"""Evaluation under DDP (2 CPU processes, gloo) counts every image once and equals one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from detection_helpers import tiny_coco, tiny_config

from flatten_dense.commands.test import test as run_test
from flatten_dense.commands.train import train


@pytest.mark.slow
def test_two_process_evaluation_equals_one_process(tmp_path: Path) -> None:
    root = tiny_coco(tmp_path / "coco", num_train=4, num_val=5)  # odd: a padding sampler would repeat one
    config = tiny_config(tmp_path, "mask_rcnn", root)
    train(config, ["resume=none", "trainer.limit_train_batches=4", "trainer.max_epochs=2"])
    checkpoint = tmp_path / "run_mask_rcnn" / "checkpoints" / "last.ckpt"
    single = run_test(config, checkpoint, ["data.batch_size=1"], results_prefix=tmp_path / "one")
    double = run_test(
        config,
        checkpoint,
        ["data.batch_size=1", "trainer.devices=2", "trainer.strategy=ddp_spawn"],
        results_prefix=tmp_path / "two",
    )
    assert single["metrics"]["test/images"] == double["metrics"]["test/images"] == 5
    for name, value in single["metrics"].items():
        assert double["metrics"][name] == pytest.approx(value, abs=1e-6), name
    # the spawned rank 0's per-class table and result files come back to the command too
    assert single["per_class"] and len(double["per_class"]) == len(single["per_class"])
    for one, two in zip(single["per_class"], double["per_class"]):
        assert {k: v for k, v in two.items() if isinstance(v, str | int)} == {
            k: v for k, v in one.items() if isinstance(v, str | int)
        }
        assert [two[k] for k in one if isinstance(one[k], float)] == pytest.approx(
            [one[k] for k in one if isinstance(one[k], float)], abs=1e-6
        )
    assert double["results"] and sorted(double["results"]) == sorted(single["results"])
    for iou_type, path in double["results"].items():
        ones = json.loads(Path(single["results"][iou_type]).read_text())
        twos = json.loads(Path(path).read_text())
        assert sorted((r["image_id"], r["category_id"]) for r in twos) == sorted(
            (r["image_id"], r["category_id"]) for r in ones
        )
