"""Checkpoints that are never half-written, never hold non-finite weights, and the choice of one to resume.

- `AtomicCheckpointIO`: Lightning's `TorchCheckpointIO`, but the file is written under a temporary
  name in the destination folder, flushed and fsynced, then renamed over the old one (a kill or a
  full disk leaves the previous file intact); a checkpoint whose weights are not all finite is not
  written at all (one warning).
- `BestCheckpoint`: `ModelCheckpoint` that never chooses `best` on a non-finite metric, nor on -1
  (what COCO mAP reports when there is no ground truth).
- `resume_candidates` / `newest_complete_checkpoint`: the run's checkpoints (`last`, periodic step
  files, Lightning's `hpc_ckpt_N`), newest first; one that does not load is set aside (renamed to
  `NAME.corrupt`) with a one-line warning and the next is tried.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint

__all__ = [
    "AtomicCheckpointIO",
    "BestCheckpoint",
    "CheckpointOptions",
    "atomic_save",
    "newest_complete_checkpoint",
    "non_finite_tensors",
    "resume_candidates",
    "set_aside",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointOptions:
    """The `checkpoint` config section (every task).

    every_n_steps: a step checkpoint `checkpoints/step-NNNNNNNN.ckpt` every N optimizer steps; when
        not given, one every `every_minutes` of training (so at most that much work is at risk).
    keep_last: how many step checkpoints to keep (the newest); `last.ckpt` (every epoch end and on
        a signal) and `best.ckpt` are kept besides.
    max_bad_steps: training stops after this many consecutive steps with a non-finite loss or gradient
        (each one is skipped and counted in `train/skipped_steps`).
    """

    every_n_steps: int | None = None
    every_minutes: float = 30.0
    keep_last: int = 3
    max_bad_steps: int = 20

    def __post_init__(self) -> None:
        if self.every_n_steps is not None and self.every_n_steps < 1:
            raise ValueError(f"checkpoint.every_n_steps must be >= 1, got {self.every_n_steps}")
        if self.every_minutes <= 0 or self.keep_last < 1 or self.max_bad_steps < 1:
            raise ValueError(
                "checkpoint.every_minutes must be > 0 and keep_last, max_bad_steps >= 1, got "
                f"{self.every_minutes}, {self.keep_last}, {self.max_bad_steps}"
            )


def non_finite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold a NaN or an infinity."""
    return [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(payload: Any, path: str | os.PathLike) -> None:
    """`torch.save` to `path` through a temporary file in the same folder: fsync, rename, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    _fsync_folder(path.parent)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic writes (see `atomic_save`); checkpoints with non-finite weights are refused."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        bad = non_finite_tensors(checkpoint.get("state_dict") or {})
        if bad:
            log.warning(
                "not writing %s: %d weight tensors are not finite (e.g. %s); the previous checkpoint is kept",
                path,
                len(bad),
                bad[0],
            )
            return
        atomic_save(checkpoint, path)


def _bad_metric(value: Any) -> bool:
    if value is None:
        return True
    number = float(value.item() if isinstance(value, torch.Tensor) else value)
    return not math.isfinite(number) or number == -1.0


class BestCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` on a metric that skips NaN/inf and -1 ("no ground truth") values."""

    def check_monitor_top_k(self, trainer: Any, current: torch.Tensor | None = None) -> bool:
        if _bad_metric(current):
            return False
        return super().check_monitor_top_k(trainer, current)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:  # set aside meanwhile by another rank
        return -1


def resume_candidates(run_dir: Path) -> list[Path]:
    """The run's resumable checkpoints, newest (modification time) first; `best` is not one of them."""
    folder = run_dir / "checkpoints"
    found = [p for p in folder.glob("*.ckpt") if not p.name.startswith("best")] if folder.is_dir() else []
    found += list(run_dir.glob("hpc_ckpt_*.ckpt"))
    return sorted(found, key=_mtime, reverse=True)


def set_aside(path: Path, reason: str) -> Path:
    """Rename a broken checkpoint to NAME.corrupt (NAME.corrupt-2, ... if taken) and warn in one line."""
    target = path.with_name(path.name + ".corrupt")
    number = 2
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt-{number}")
        number += 1
    os.replace(path, target)
    log.warning("checkpoint %s does not load (%s): set aside as %s", path, reason, target.name)
    return target


def _problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from, or None when it loads and its weights are finite."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # truncated, empty or foreign files raise many types
        return " ".join(str(error).split())[:200] or type(error).__name__
    if not isinstance(payload, dict) or "state_dict" not in payload or "global_step" not in payload:
        return "not a training checkpoint"
    bad = non_finite_tensors(payload["state_dict"])
    if bad:
        return f"{len(bad)} non-finite weight tensors, e.g. {bad[0]}"
    return None


def newest_complete_checkpoint(run_dir: Path, *, rename: bool = True) -> Path | None:
    """The newest checkpoint of the run that loads; the broken ones met on the way are set aside
    (by one process only: `rename=False` on the other ranks, which skip them)."""
    for path in resume_candidates(run_dir):
        problem = _problem(path)
        if problem is None:
            return path
        if rename:
            set_aside(path, problem)
    return None
