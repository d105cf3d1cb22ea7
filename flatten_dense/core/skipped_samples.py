"""`data.skip_bad_samples`: one warning per epoch and split, counted over every worker and rank.

A sample can be skipped at two points: the start-up check leaves it out (`SkippingDataset.left_out`,
the same every epoch and on every rank), or it fails to decode when read and the next good sample
takes its place. The second happens in whichever process reads it (a DataLoader worker, or the main
process with `num_workers=0`), so the record travels with the batch:

1. `ReportSkipped`, the loader's collate function, runs where the samples were read and returns
   `(batch, Skipped(failures since its last batch))`;
2. `SkipReportingLoader` (main process) takes the pair apart, hands the failures to the split's
   `SkippingDataset.record` and yields the plain batch, so no task sees the record;
3. `SkippedSamplesReport`, a callback, takes the split's records at the end of each training,
   validation, test and predict epoch, gathers them from every rank under DDP, and rank 0 warns
   once: how many samples were skipped and the first few files (with annotation ids). An epoch
   without skips is silent.

A record is counted with its batch when the loader hands the batch out, so it holds for persistent
workers, any number of workers and a batch fetched ahead by Lightning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch.distributed as dist
from torch.utils.data import DataLoader

from flatten_dense.core.data_check import FIRST_SHOWN, Problem, SkippingDataset
from flatten_dense.core.resumable_sampler import ResumableDataLoader

__all__ = [
    "ReportSkipped",
    "ResumableSkipReportingLoader",
    "SkipReportingLoader",
    "Skipped",
    "SkippedSamplesReport",
    "skip_warning",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Skipped:
    """The samples that failed to decode while one batch was read (not a Sequence, so pinning keeps it)."""

    failed: tuple[Problem, ...] = ()


class ReportSkipped:
    """A collate function that sends the batch's decode failures along: `(collate_fn(samples), Skipped)`.

    It runs in the process that read the samples; `dataset` is that process's copy of the split's
    `SkippingDataset` (a worker gets the dataset and the collate function in one pickle, or by fork,
    so they stay the same object).
    """

    def __init__(self, collate_fn: Callable[[list[Any]], Any], dataset: SkippingDataset) -> None:
        self.collate_fn = collate_fn
        self.dataset = dataset

    def __call__(self, samples: list[Any]) -> tuple[Any, Skipped]:
        return self.collate_fn(samples), Skipped(self.dataset.take_failed())


class SkipReportingLoader(DataLoader):
    """A DataLoader whose collate function is `ReportSkipped`: records the failures, yields batches."""

    def __init__(self, *args: Any, skipping: SkippingDataset, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.collate_fn, ReportSkipped):
            raise TypeError("SkipReportingLoader needs a ReportSkipped collate function")
        self.skipping = skipping

    def __iter__(self) -> Iterator[Any]:
        for batch, skipped in super().__iter__():  # pinned memory turns the pair into a list
            self.skipping.record(skipped.failed)
            yield batch


class ResumableSkipReportingLoader(SkipReportingLoader, ResumableDataLoader):
    """The training loader with both: resumable position and skip records."""


def skip_warning(what: str, dataset: SkippingDataset, failed: Sequence[Problem]) -> str | None:
    """The epoch's one warning line, or None when nothing was skipped.

    `failed` may name a sample more than once (DDP pads a rank's shard with repeats; a sample can
    fail again as another's replacement): each sample counts once.
    """
    left_out = list(dataset.left_out)
    seen = {p.index for p in left_out}
    decode: list[Problem] = []
    for problem in failed:
        if problem.index not in seen:
            seen.add(problem.index)
            decode.append(problem)
    if not seen:
        return None
    parts = []
    for problems, how in ((left_out, "left out by the start-up check"), (decode, "failed to decode")):
        if problems:
            shown = "; ".join(p.line() for p in problems[:FIRST_SHOWN])
            more = f"; +{len(problems) - FIRST_SHOWN} more" if len(problems) > FIRST_SHOWN else ""
            parts.append(f"{len(problems)} {how}: {shown}{more}")
    total = len(dataset.dataset)
    source = f" of {dataset.source}" if dataset.source else ""
    return f"data.skip_bad_samples: {what}: skipped {len(seen)} of {total} sample(s){source} ({' / '.join(parts)})"


def _gather(problems: list[Problem]) -> list[Problem]:
    """Every rank's problems (a collective: every rank calls it at the same hook), or these alone."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return problems
    everyone: list[list[Problem] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, problems)
    return [p for rank in everyone for p in (rank or [])]


class SkippedSamplesReport(L.Callback):
    """One warning per epoch and split with what `data.skip_bad_samples` skipped (rank 0, all ranks' counts).

    The datamodule provides `skipping(split)`: the split's `SkippingDataset`, or None when samples
    are not skipped (then this does nothing).
    """

    def _report(self, trainer: L.Trainer, split: str, what: str) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        skipping = getattr(datamodule, "skipping", None)
        dataset = skipping(split) if callable(skipping) else None
        if dataset is None:
            return
        failed = _gather(dataset.take_epoch())
        line = skip_warning(what, dataset, failed)
        if line is not None and trainer.is_global_zero:
            log.warning("%s", line)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, "train", f"train epoch {trainer.current_epoch}")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        what = "val sanity check" if trainer.sanity_checking else f"val epoch {trainer.current_epoch}"
        self._report(trainer, "val", what)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, "test", "test")

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, "test", "predict")
