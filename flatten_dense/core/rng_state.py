"""Every rank's Python, NumPy and torch random states, saved in each checkpoint and restored on resume.

With augmentations seeded per sample (`SampleSeeded`), these states are the model's randomness
only (dropout, drop-path), so restoring them makes a resumed run draw what the uninterrupted one
drew. States are stored as tensors and plain lists (the file loads with `weights_only=True`).
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist

__all__ = ["RNGStateCallback", "capture_rng", "restore_rng"]


def capture_rng() -> dict[str, Any]:
    """This process's random states."""
    version, keys, position, has_gauss, cached = np.random.get_state()
    python_version, python_internal, python_gauss = random.getstate()
    state: dict[str, Any] = {
        "python": [python_version, list(python_internal), python_gauss],
        "numpy": [str(version), torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    python_version, python_internal, python_gauss = state["python"]
    random.setstate((python_version, tuple(python_internal), python_gauss))
    version, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((version, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RNGStateCallback(L.Callback):
    """Gathers every rank's random states into the checkpoint (`state_dict` runs on all ranks)."""

    def state_dict(self) -> dict[str, Any]:
        mine = capture_rng()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(states, mine)
            return {"ranks": states}
        return {"ranks": [mine]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ranks = state.get("ranks") or []
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if rank < len(ranks):
            restore_rng(ranks[rank])
