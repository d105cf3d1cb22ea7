"""SIGTERM / SIGUSR1: every rank stops at the same step boundary, one checkpoint is saved, exit non-zero.

The handler only records the signal. At the end of every training batch the ranks agree through
one `all_reduce(MAX)` whether any of them got one (never a collective inside the handler: that is
what hangs Lightning's own handler when the ranks are at different places). Then all ranks save
`checkpoints/last.ckpt` together and raise `Preempted`, a `SystemExit` with code 128 + signal
(143 for SIGTERM, 138 for SIGUSR1). On SIGUSR1 under SLURM, rank 0 also asks `scontrol requeue`.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
import torch.distributed as dist

__all__ = ["PREEMPTION_SIGNALS", "Preempted", "PreemptionCallback"]

log = logging.getLogger(__name__)

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(SystemExit):
    """Training stopped on a signal after saving; `code` is 128 + the signal number."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint = checkpoint


def _requeue_slurm_job() -> None:
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}" if array_job else os.environ.get("SLURM_JOB_ID")
    if not job or not re.fullmatch(r"[0-9_]+", job):
        return
    try:
        result = subprocess.run(["scontrol", "requeue", job], check=False, capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.warning("could not requeue SLURM job %s: %s", job, error)
        return
    if result.returncode == 0:
        log.warning("requeued SLURM job %s", job)
    else:
        log.warning("scontrol requeue %s failed with code %d", job, result.returncode)


def _log_this_step(trainer: L.Trainer) -> None:
    """Send this step's metrics to the loggers now, as the loop would after this hook (so the resumed
    run's log has no gap)."""
    connector = trainer._logger_connector
    try:
        connector.on_batch_end()
        connector.update_train_step_metrics()
    except Exception as error:  # private Lightning API: a missing log line must not block the exit
        log.debug("could not log the last step before exiting: %s", error)


class PreemptionCallback(L.Callback):
    """Installs the flag-only handlers at train start (after Lightning's, which it replaces)."""

    def __init__(self, checkpoint_dir: Path) -> None:
        self.checkpoint_dir = Path(checkpoint_dir)
        self.received: int = 0
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = self.received or signum  # the first signal decides the exit code

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a SIGTERM that reached Lightning's handler during set-up (restore, sanity check) still counts
        self.received = signal.SIGTERM if getattr(trainer, "received_sigterm", False) else 0
        for signum in PREEMPTION_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._handler)
            except ValueError:  # not the main thread: nothing to install
                return

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if handler is not None:
                signal.signal(signum, handler)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()

    def _agreed_signal(self, trainer: L.Trainer) -> int:
        flag = torch.tensor([self.received], dtype=torch.int64, device=trainer.strategy.root_device)
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        signum = self._agreed_signal(trainer)
        if not signum or trainer.fit_loop._should_accumulate():
            return  # stop at an optimizer step: accumulated gradients are not in a checkpoint
        path = self.checkpoint_dir / "last.ckpt"
        trainer.save_checkpoint(path)  # every rank takes part; rank 0 writes
        _log_this_step(trainer)
        name = signal.Signals(signum).name
        if trainer.is_global_zero:
            log.warning(
                "%s received: saved %s at step %d; exiting with code %d", name, path, trainer.global_step, 128 + signum
            )
            if signum == signal.SIGUSR1 and "SLURM_JOB_ID" in os.environ:
                _requeue_slurm_job()
        raise Preempted(signum, path)
