"""Preemption and faults, through the real train command in a subprocess, on tiny synthetic COCO.

Every run trains the same 8 steps (2 epochs of 4 batches, a step checkpoint every 2 steps); an
interrupted run resumed by rerunning the same command must end with the same global step and the
same weights as the uninterrupted one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flatten_dense.core.checkpointing import non_finite_tensors

sys.path.insert(0, str(Path(__file__).parent / "detection"))
from detection_helpers import tiny_coco, tiny_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(REPO / "tools" / "train.py")]
STEPS = 8  # 2 epochs x 4 batches
OVERRIDES = [
    "trainer.limit_train_batches=4",
    "trainer.max_epochs=2",
    "trainer.limit_val_batches=1",
    "checkpoint.every_n_steps=2",
    "checkpoint.keep_last=2",
    "logging.pictures=0",
]

pytestmark = pytest.mark.slow


def _config(folder: Path, coco: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return tiny_config(folder, "retinanet", coco)


def _train(config: Path, *extra: str, stop_when: Path | None = None, sig: int = signal.SIGTERM, timeout: float = 600):
    """Run the train command; with `stop_when`, send `sig` as soon as that file exists. -> (rc, stderr)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([*TRAIN, str(config), *OVERRIDES, *extra], stderr=subprocess.PIPE, text=True, env=env)
    if stop_when is not None:
        deadline = time.monotonic() + timeout
        while not stop_when.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(sig)
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _max_difference(a: Path, b: Path) -> float:
    first, second = _load(a)["state_dict"], _load(b)["state_dict"]
    assert first.keys() == second.keys()
    return max(float((first[k].double() - second[k].double()).abs().max()) for k in first if first[k].numel())


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return tiny_coco(tmp_path_factory.mktemp("coco"), num_train=8, num_val=2)


@pytest.fixture(scope="module")
def reference(coco: Path, tmp_path_factory) -> Path:
    """last.ckpt of the uninterrupted run."""
    config = _config(tmp_path_factory.mktemp("reference"), coco)
    rc, err = _train(config)
    assert rc == 0, err[-2000:]
    last = config.parent / "run_retinanet" / "checkpoints" / "last.ckpt"
    assert _load(last)["global_step"] == STEPS
    return last


def _assert_same_as_reference(last: Path, reference: Path, what: str) -> None:
    assert _load(last)["global_step"] == STEPS
    difference = _max_difference(last, reference)
    print(f"{what}: final step {STEPS}, max abs weight difference to the uninterrupted run {difference:.3g}")
    assert difference <= 1e-6


def test_sigterm_mid_epoch_saves_exits_143_and_resumes_exactly(coco: Path, reference: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, coco)
    checkpoints = tmp_path / "run_retinanet" / "checkpoints"
    rc, err = _train(config, stop_when=checkpoints / "step-00000006.ckpt")  # in epoch 1 (steps 5-8)
    assert rc == 143, err[-2000:]
    assert "SIGTERM received: saved" in err
    saved = _load(checkpoints / "last.ckpt")
    assert 4 < saved["global_step"] < STEPS  # newer than the last epoch end (step 4)
    print(f"SIGTERM: exit {rc}, checkpoint at step {saved['global_step']}, 0 steps lost")
    rc, err = _train(config)
    assert rc == 0, err[-2000:]
    assert "resuming from" in err
    _assert_same_as_reference(checkpoints / "last.ckpt", reference, "after SIGTERM")
    versions = list((tmp_path / "run_retinanet" / "logs").glob("version_*"))
    assert len(versions) == 1  # the log continues
    steps = [line.split(",") for line in (versions[0] / "metrics.csv").read_text().splitlines()]
    header = steps[0]
    losses = [int(row[header.index("step")]) for row in steps[1:] if row[header.index("train/loss")]]
    assert losses == sorted(set(losses)) == list(range(STEPS))  # each step logged once


def test_sigkill_at_two_points_resumes_exactly(coco: Path, reference: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, coco)
    checkpoints = tmp_path / "run_retinanet" / "checkpoints"
    rc, _ = _train(config, stop_when=checkpoints / "step-00000002.ckpt", sig=signal.SIGKILL)  # epoch 0
    assert rc == -signal.SIGKILL
    rc, _ = _train(config, stop_when=checkpoints / "step-00000006.ckpt", sig=signal.SIGKILL)  # epoch 1
    assert rc == -signal.SIGKILL
    rc, err = _train(config)
    assert rc == 0, err[-2000:]
    _assert_same_as_reference(checkpoints / "last.ckpt", reference, "after two SIGKILLs")


def test_truncated_last_checkpoint_is_set_aside(coco: Path, reference: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, coco)
    checkpoints = tmp_path / "run_retinanet" / "checkpoints"
    rc, err = _train(config, stop_when=checkpoints / "step-00000006.ckpt", sig=signal.SIGUSR1)  # SLURM's requeue
    assert rc == 128 + signal.SIGUSR1, err[-2000:]
    last = checkpoints / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # what a kill during a non-atomic write leaves
    rc, err = _train(config)
    assert rc == 0, err[-2000:]
    warnings = [line for line in err.splitlines() if "set aside" in line]
    assert len(warnings) == 1 and "last.ckpt" in warnings[0], err[-2000:]
    assert "step-00000006.ckpt" in err  # resumed from the previous good one
    assert (checkpoints / "last.ckpt.corrupt").is_file()
    _assert_same_as_reference(last, reference, "after a truncated last.ckpt")


def test_diverging_run_stops_in_one_line_and_keeps_no_nan(coco: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, coco)
    rc, err = _train(config, "optimizer.lr=1e6", "checkpoint.max_bad_steps=2", "checkpoint.every_n_steps=1")
    assert rc not in (0, 143), err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training stopped at step" in errors[0] and "last good checkpoint" in errors[0]
    assert "Traceback" not in err
    kept = list((tmp_path / "run_retinanet" / "checkpoints").glob("*.ckpt"))
    for path in kept:
        assert not non_finite_tensors(_load(path)["state_dict"]), path
    print(f"lr=1e6: exit {rc}; {errors[0]}; {len(kept)} kept checkpoints, all finite")
