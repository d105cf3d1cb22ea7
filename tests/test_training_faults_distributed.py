"""SIGTERM to one rank of a 2-process (gloo, CPU) run started as SLURM would: both ranks stop at the
same step, one checkpoint is written, both exit 143 within a bound, and a rerun resumes from it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "detection"))
from detection_helpers import tiny_coco, tiny_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = [
    "trainer.devices=2",
    "trainer.strategy=ddp",
    "trainer.limit_train_batches=4",
    "trainer.max_epochs=2",
    "trainer.limit_val_batches=1",
    "checkpoint.every_n_steps=2",
    "logging.pictures=0",
]
EXIT_BOUND_S = 120  # both ranks gone this long after the signal (the save included)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_ranks(config: Path, port: int) -> list[subprocess.Popen]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TORCHELASTIC", "WORLD_SIZE", "RANK"))}
    base.update(
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="train",
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_NNODES="1",
        SLURM_NODELIST="localhost",
        SLURM_NODEID="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    return [
        subprocess.Popen(
            [sys.executable, str(REPO / "tools" / "train.py"), str(config), *OVERRIDES],
            env={**base, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]


@pytest.mark.slow
def test_sigterm_on_one_rank_stops_both_saves_once_and_resumes(tmp_path: Path) -> None:
    coco = tiny_coco(tmp_path / "coco", num_train=16, num_val=2)  # 4 batches of 2 per rank and epoch
    config = tiny_config(tmp_path, "retinanet", coco)
    checkpoints = tmp_path / "run_retinanet" / "checkpoints"
    ranks = _slurm_ranks(config, _free_port())
    deadline = time.monotonic() + 900
    while not (checkpoints / "step-00000006.ckpt").exists() and time.monotonic() < deadline:
        assert all(p.poll() is None for p in ranks), [p.communicate()[1][-2000:] for p in ranks]
        time.sleep(0.01)
    ranks[1].send_signal(signal.SIGTERM)  # not rank 0: the ranks must agree, not wait for rank 0
    sent = time.monotonic()
    errors = [p.communicate(timeout=EXIT_BOUND_S)[1] for p in ranks]
    took = time.monotonic() - sent
    codes = [p.returncode for p in ranks]
    print(f"2 ranks under SLURM variables: exit codes {codes}, both gone {took:.1f} s after SIGTERM to rank 1")
    assert codes == [143, 143], errors[0][-2000:] + errors[1][-2000:]
    assert sum(e.count("SIGTERM received: saved") for e in errors) == 1  # rank 0 writes, once
    saved = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert 4 < saved["global_step"] < 8
    ranks = _slurm_ranks(config, _free_port())
    errors = [p.communicate(timeout=900)[1] for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], errors[0][-2000:] + errors[1][-2000:]
    assert "resuming from" in errors[0] and "last.ckpt" in errors[0]
    final = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["global_step"] == 8
