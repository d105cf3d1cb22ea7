"""Run logs that read well anywhere: a progress bar in a terminal, plain lines everywhere else.

In a terminal the Trainer shows Lightning's TQDM bar (with ETA). Outside one (SLURM, CI,
`> file`) a bar writes thousands of carriage-return updates into the log; there `LineProgress`
prints one line every `every_n_steps` steps or `every_n_seconds` seconds, whichever comes first:

    [train] epoch 2/12 step 150/900 loss 0.8312 lr 1.00e-04 7.9 img/s eta 0:01:35

plus one line of validation progress every `every_n_seconds` and one line of validation metrics
at each validation end. Only global rank 0 prints. The config's top-level `logging` section holds
the choice (`LoggingOptions` is its receiver, so its keys are validated like every section), and
the number of validation pictures drawn at each validation (`core/prediction_pictures.py`).

`silence_lightning_tips` drops Lightning's "💡 Tip" advertising lines (logged at Trainer init).
`progress` wraps any loop of known length (analysis, data generation) the same way.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TextIO, TypeVar

import lightning as L
from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar

from flatten_dense.core.prediction_pictures import Draw, PredictionPictures

__all__ = ["DETAIL_METRICS", "LineProgress", "LoggingOptions", "format_eta", "progress", "silence_lightning_tips"]

T = TypeVar("T")
TIP_PREFIX = "💡 Tip"
# the logger Lightning's rank_zero_info writes through (lightning.pytorch.utilities.rank_zero sets it)
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
# metrics left out of log lines and curves to keep them readable: COCO's per-size APs and recalls
DETAIL_METRICS = re.compile(r"_(s|m|l)$|mAR")


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIP_PREFIX)


_TIP_FILTER = _DropTips()


def silence_lightning_tips() -> None:
    """Drop Lightning's advertising tips (litlogger, litmodels); idempotent, other messages stay."""
    for name in (RANK_ZERO_LOGGER, "lightning.fabric.utilities.rank_zero", "lightning_utilities.core.rank_zero"):
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)


def format_eta(seconds: float) -> str:
    """Seconds -> 'H:MM:SS' ('?' when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _batch_size(batch: Any) -> int:
    """Images in a batch: ([images], [targets]) lists or a stacked (images, labels) pair."""
    if isinstance(batch, (list, tuple)) and batch:
        first = batch[0]
        if isinstance(first, (list, tuple)):
            return len(first)
        shape = getattr(first, "shape", None)
        if shape is not None and len(shape) > 0:
            return int(shape[0])
    return 1


def _loss_value(outputs: Any) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    try:
        return float(loss)
    except (TypeError, ValueError, RuntimeError):
        return None


class LineProgress(ProgressBar):
    """Plain-line progress (no carriage returns): every N steps or seconds, global rank 0 only.

    Being a `ProgressBar`, it replaces Lightning's TQDM bar in the Trainer.
    """

    def __init__(self, *, every_n_steps: int = 50, every_n_seconds: float = 60.0, stream: TextIO | None = None) -> None:
        super().__init__()
        if every_n_steps < 1 or every_n_seconds <= 0:
            raise ValueError(f"need every_n_steps >= 1 and every_n_seconds > 0, got {every_n_steps}, {every_n_seconds}")
        self.every_n_steps = int(every_n_steps)
        self.every_n_seconds = float(every_n_seconds)
        self._stream = stream
        self._enabled = True
        self._fit_start = 0.0
        self._first_step = 0
        self._last_print = 0.0
        self._window_start = 0.0
        self._window_images = 0
        self._eval_start = 0.0
        self._eval_last = 0.0
        self._last_step = -1

    # ----- ProgressBar interface -----
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled and self.trainer.is_global_zero

    def print(self, *args: Any, **kwargs: Any) -> None:
        if self.is_enabled:
            kwargs.setdefault("flush", True)
            print(*args, file=self._stream or sys.stdout, **kwargs)

    # ----- training -----
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.monotonic()
        self._fit_start = self._last_print = self._window_start = now
        self._first_step = trainer.global_step
        self._window_images = 0

    def _total_steps(self, trainer: L.Trainer) -> float:
        try:
            return float(trainer.estimated_stepping_batches)
        except Exception:  # e.g. an unsized training loader
            return math.inf

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._window_images += _batch_size(batch) * trainer.world_size
        step = trainer.global_step
        now = time.monotonic()
        due = step % self.every_n_steps == 0 or now - self._last_print >= self.every_n_seconds
        if not due or step == self._last_step or not self.is_enabled:  # (gradient accumulation repeats a step)
            return
        self._last_step = step
        total = self._total_steps(trainer)
        done = step - self._first_step
        eta = (total - step) * (now - self._fit_start) / done if done > 0 and math.isfinite(total) else math.inf
        rate = self._window_images / max(now - self._window_start, 1e-9)
        epochs = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        parts = [f"[train] epoch {trainer.current_epoch + 1}{epochs}"]
        parts.append(f"step {step}/{int(total)}" if math.isfinite(total) else f"step {step}")
        loss = _loss_value(outputs)
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        parts += [f"{rate:.1f} img/s", f"eta {format_eta(eta)}"]
        self.print(" ".join(parts))
        self._last_print = self._window_start = now
        self._window_images = 0

    # ----- evaluation -----
    def _eval_begin(self) -> None:
        self._eval_start = self._eval_last = time.monotonic()

    def _eval_batch(self, stage: str, batch_idx: int, total: float) -> None:
        now = time.monotonic()
        if now - self._eval_last < self.every_n_seconds:
            return
        done = batch_idx + 1
        eta = (total - done) * (now - self._eval_start) / done if math.isfinite(total) else math.inf
        of = f"/{int(total)}" if math.isfinite(total) else ""
        self.print(f"[{stage}] batch {done}{of} eta {format_eta(eta)}")
        self._eval_last = now

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_begin()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._current_eval_dataloader_idx = dataloader_idx
        self._eval_batch("val", batch_idx, self.total_val_batches_current_dataloader)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {
            k: v
            for k, v in trainer.callback_metrics.items()
            if k.startswith("val/") and v.numel() == 1 and not DETAIL_METRICS.search(k)
        }
        shown = " ".join(f"{k} {float(v):.4f}" for k, v in sorted(metrics.items()))
        took = format_eta(time.monotonic() - self._eval_start)
        self.print(f"[val] epoch {trainer.current_epoch + 1} step {trainer.global_step} {shown} ({took})".rstrip())

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_begin()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._current_eval_dataloader_idx = dataloader_idx
        self._eval_batch("test", batch_idx, self.total_test_batches_current_dataloader)

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._eval_begin()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._current_eval_dataloader_idx = dataloader_idx
        self._eval_batch("predict", batch_idx, self.total_predict_batches_current_dataloader)


@dataclass(frozen=True)
class LoggingOptions:
    """The config's top-level `logging` section (every key optional).

    progress: "auto" is a TQDM bar when stdout is a terminal, else `LineProgress` lines every
    `every_n_steps` steps or `every_n_seconds` seconds; "bar" and "lines" force one of them.
    pictures: validation images drawn with predictions at each validation (0: none), written to
    RUN_DIR/pictures/epoch_XXX.png (and TensorBoard); detections from `picture_score_threshold` up
    (0.3: lower than infer's 0.5, so early epochs show their first hesitant detections).
    """

    every_n_steps: int = 50
    every_n_seconds: float = 60.0
    progress: Literal["auto", "bar", "lines"] = "auto"
    pictures: int = 4
    picture_score_threshold: float = 0.3

    def progress_bar(self) -> ProgressBar:
        silence_lightning_tips()
        if self.progress == "bar" or (self.progress == "auto" and _is_terminal(sys.stdout)):
            return TQDMProgressBar()
        return LineProgress(every_n_steps=self.every_n_steps, every_n_seconds=self.every_n_seconds)

    def callbacks(
        self, trainer_kwargs: Mapping[str, Any], *, draw: Draw | None = None, pictures_dir: Path | None = None
    ) -> list[L.Callback]:
        """The Trainer's display callbacks: the progress display (unless the trainer section turns the
        bar off) and, given a task's `draw`, the per-validation pictures."""
        silence_lightning_tips()
        callbacks: list[L.Callback] = []
        if trainer_kwargs.get("enable_progress_bar", True):
            callbacks.append(self.progress_bar())
        if draw is not None and pictures_dir is not None and self.pictures > 0:
            callbacks.append(
                PredictionPictures(
                    draw, pictures_dir, num_images=self.pictures, score_threshold=self.picture_score_threshold
                )
            )
        return callbacks


def progress(
    items: Iterable[T], *, total: int | None = None, desc: str = "", every_n_seconds: float = 10.0
) -> Iterator[T]:
    """Iterate `items` with a TQDM bar in a terminal, else a line every `every_n_seconds` and at the end
    (both on stderr, so a command's own output on stdout stays clean for scripts)."""
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    if _is_terminal(sys.stderr):
        from tqdm.auto import tqdm

        yield from tqdm(items, total=total, desc=desc, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_n_seconds or done == total:
            eta = (total - done) * (now - start) / done if total else math.inf
            of = f"/{total}" if total else ""
            print(f"[{desc or 'progress'}] {done}{of} eta {format_eta(eta)}", file=sys.stderr, flush=True)
            last = now
