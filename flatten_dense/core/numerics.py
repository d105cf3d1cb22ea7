"""The numerical guard: a step with a non-finite loss or gradient is skipped, counted, and bounded.

The check runs on the gradients just before the optimizer step (after DDP has averaged them, so
every rank sees the same verdict and they stay in step); a NaN or infinite loss makes its
gradients non-finite too. A bad step's gradients are dropped, so the optimizer leaves the weights
and its state as they were. `train/skipped_steps` counts them in the logs; after `max_bad_steps`
consecutive ones training stops with `NonFiniteTraining`, one line naming the step and the last
good checkpoint. (`AtomicCheckpointIO` refuses to write non-finite weights besides.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

__all__ = ["NonFiniteTraining", "NumericalGuard"]

log = logging.getLogger(__name__)


class NonFiniteTraining(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def _gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if not grads:
        return True
    norms = torch._foreach_norm(grads)
    return bool(torch.isfinite(torch.stack(norms)).all())


class NumericalGuard(L.Callback):
    """Skips optimizer steps whose gradients are not finite; stops after `max_bad_steps` in a row.

    `last_good_checkpoint()` names the checkpoint to point the user at when stopping.
    """

    def __init__(self, max_bad_steps: int, last_good_checkpoint: Callable[[], str | None]) -> None:
        self.max_bad_steps = int(max_bad_steps)
        self.last_good_checkpoint = last_good_checkpoint
        self.skipped = 0
        self.consecutive = 0

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if _gradients_finite(optimizer):
            self.consecutive = 0
            return
        optimizer.zero_grad(set_to_none=True)  # the optimizer skips parameters without gradients
        self.skipped += 1
        self.consecutive += 1
        step = trainer.global_step + 1
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False, rank_zero_only=True)
        if self.consecutive == 1 and trainer.is_global_zero:
            log.warning("step %d: non-finite loss or gradient, optimizer step skipped", step)
        if self.consecutive >= self.max_bad_steps:
            good = self.last_good_checkpoint() or "none (no finite checkpoint was written)"
            raise NonFiniteTraining(
                f"training stopped at step {step}: {self.consecutive} consecutive steps with a non-finite loss or "
                f"gradient ({self.skipped} skipped in all); last good checkpoint: {good}. Lower optimizer.lr, "
                "set trainer.gradient_clip_val, or raise checkpoint.max_bad_steps"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.consecutive = int(state.get("consecutive", 0))


def newest_checkpoint_in(folder: Path) -> str | None:
    """The newest `.ckpt` file under `folder` (the last good one: non-finite weights are never written)."""
    files = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns) if folder.is_dir() else []
    return str(files[-1]) if files else None
