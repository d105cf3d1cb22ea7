"""`flatten-dense demo --config`: another model on the task's synthetic data, in its own run folder
(the full demos are the README's commands; here train/test/infer are replaced by recorders)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from flatten_dense import tasks
from flatten_dense.commands import demo as demo_module
from flatten_dense.core.config import ConfigError
from flatten_dense.core.image_io import write_png

CASCADE_DEMO = (
    Path(__file__).resolve().parents[1]
    / "configs"
    / "detection"
    / "demo_cascade_mask_rcnn_flatten_pvt_v2_b0_synthetic.yaml"
)


def test_missing_demo_config_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="nope.yaml"):
        demo_module.demo(task="detection", out_dir=tmp_path, config=missing)


def test_another_config_trains_tests_and_draws_in_its_own_folder(monkeypatch, tmp_path: Path) -> None:
    calls: dict[str, tuple] = {}

    def make_data(root: Path) -> Path:
        (root / "val2017").mkdir(parents=True)
        (root / "val2017" / "a.png").touch()
        return root

    spec = dataclasses.replace(tasks.TASKS["detection"], make_demo_data=make_data)
    monkeypatch.setitem(tasks.TASKS, "detection", spec)

    def train(config: Path, overrides: list[str]) -> None:
        calls["train"] = (config, overrides)

    def test(config: Path, checkpoint: Path, overrides: list[str]) -> dict:
        calls["test"] = (config, checkpoint)
        return {"metrics": {"test/bbox_mAP": 0.5}}

    def infer(config: Path, checkpoint: Path, images: list[Path], out_dir: Path, overrides: list[str]) -> list[Path]:
        calls["infer"] = (config, images)
        out_dir.mkdir(parents=True)
        return [write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), out_dir / "a.png")]

    monkeypatch.setattr(demo_module, "train", train)
    monkeypatch.setattr(demo_module, "test", test)
    monkeypatch.setattr(demo_module, "infer", infer)
    result = demo_module.demo(task="detection", out_dir=tmp_path, config=CASCADE_DEMO)
    run_dir = tmp_path / CASCADE_DEMO.stem
    assert calls["train"][0] == CASCADE_DEMO and f"trainer.default_root_dir={run_dir}" in calls["train"][1]
    assert calls["test"] == (CASCADE_DEMO, run_dir / "checkpoints" / "best.ckpt")
    assert calls["infer"][1] == [tmp_path / "data_detection" / "val2017" / "a.png"]
    assert result["test/bbox_mAP"] == 0.5 and (run_dir / "demo.json").is_file()
    assert (run_dir / "predictions.png").is_file()
