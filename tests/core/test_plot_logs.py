"""`flatten-dense plot RUN_DIR`: the CSV log's curves in one PNG; a restart's repeated steps replaced."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from flatten_dense.commands.plot import plot_run, read_run_log
from flatten_dense.core.config import ConfigError

HEADER = "epoch,lr-AdamW/pg1,step,train/loss,train/loss_mask,val/bbox_mAP,val/bbox_mAP_s\n"


def _write(run_dir: Path, version: int, rows: list[str]) -> None:
    path = run_dir / "logs" / f"version_{version}" / "metrics.csv"
    path.parent.mkdir(parents=True)
    path.write_text(HEADER + "".join(rows))


def test_plot_writes_one_png_of_losses_lr_and_validation(tmp_path: Path) -> None:
    _write(tmp_path, 0, [",0.001,9,,,,\n", "0,,9,2.5,0.7,,\n", "0,,9,,,0.1,0.05\n", "1,,19,1.5,0.5,,\n"])
    out = plot_run(tmp_path)
    assert out == tmp_path / "curves.png"
    with Image.open(out) as image:
        assert image.width > 500 and image.height > 600  # three panels


def test_a_restarted_version_replaces_the_steps_it_repeats(tmp_path: Path) -> None:
    _write(tmp_path, 0, ["0,,9,2.5,,,\n", "1,,19,1.5,,,\n", "2,,29,1.0,,,\n"])
    _write(tmp_path, 1, ["1,,19,1.4,,,\n", "2,,29,0.9,,,\n"])
    losses = [(row["step"], row["train/loss"]) for row in read_run_log(tmp_path)]
    assert losses == [(9, 2.5), (19, 1.4), (29, 0.9)]


def test_plot_names_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no CSV log"):
        plot_run(tmp_path)
    with pytest.raises(ConfigError, match="run folder not found"):
        plot_run(tmp_path / "nope")


def test_plot_command_and_tool(tmp_path: Path, capsys) -> None:
    from flatten_dense.cli import main

    _write(tmp_path, 0, ["0,0.001,9,2.5,0.7,0.1,\n"])
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").is_file() and "curves:" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "missing")]) == 2
