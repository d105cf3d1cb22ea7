"""Evaluation under DDP (2 CPU processes, gloo) counts every image once and equals one process."""

from __future__ import annotations

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
    single = run_test(config, checkpoint, ["data.batch_size=1"])
    double = run_test(config, checkpoint, ["data.batch_size=1", "trainer.devices=2", "trainer.strategy=ddp_spawn"])
    assert single["metrics"]["test/images"] == double["metrics"]["test/images"] == 5
    for name, value in single["metrics"].items():
        assert double["metrics"][name] == pytest.approx(value, abs=1e-6), name
