"""The part of a LightningDataModule every task shares: cached split datasets and rank-aware loaders.

Samplers come from `flatten_dense.core.samplers` and shard by rank themselves (evaluation never
pads, so each image counts once), so the Trainer runs with `use_distributed_sampler=False`.
Evaluation batches are lists (images differ in size); a task chooses how training batches collate.
A format-only run (`flatten-dense test --format-only`) sets `ground_truth = False` before any split
is read: its datasets then need images only (test-server splits have no labels), and
`predict_dataloader` serves the test split's images for `Trainer.predict`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from flatten_dense.core.collate import collate_as_lists
from flatten_dense.core.data_check import SkippingDataset
from flatten_dense.core.resumable_sampler import ResumableDataLoader, SampleSeeded
from flatten_dense.core.samplers import eval_sampler, train_sampler
from flatten_dense.core.skipped_samples import ReportSkipped, ResumableSkipReportingLoader, SkipReportingLoader

__all__ = ["DenseDataModule", "Split"]

Split = Literal["train", "val", "test"]
STAGE_SPLITS: dict[str, tuple[Split, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
}


class DenseDataModule(L.LightningDataModule):
    """Subclasses implement `build_dataset(split)`; datasets are built once, on first use."""

    train_collate: Callable[[list[Any]], Any] = staticmethod(collate_as_lists)
    drop_last_train: bool = False

    def __init__(
        self,
        *,
        root: str | Path,
        batch_size: int,
        eval_batch_size: int,
        num_workers: int,
        pin_memory: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root directory not found: {self.root}")
        if batch_size < 1 or eval_batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"need batch sizes >= 1 and num_workers >= 0, got {batch_size}, {eval_batch_size} and {num_workers}"
            )
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        # False: splits are read without labels or annotations (set before the first split is built)
        self.ground_truth = True
        self._datasets: dict[Split, Dataset] = {}

    def build_dataset(self, split: Split) -> Dataset:
        raise NotImplementedError

    def dataset(self, split: Split) -> Dataset:
        """The split's dataset, built on first use (reading an annotation file can be slow)."""
        if split not in self._datasets:
            self._datasets[split] = self.build_dataset(split)
        return self._datasets[split]

    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS.get(stage or "", ("train", "val", "test")):
            self.dataset(split)

    def skipping(self, split: Split) -> SkippingDataset | None:
        """The split's dataset when `skip_bad_samples` is on (its loaders report what they skip), else None."""
        dataset = self._datasets.get(split)
        return dataset if isinstance(dataset, SkippingDataset) else None

    @staticmethod
    def _skip_reporting(dataset: Dataset, collate_fn: Callable[[list[Any]], Any]) -> dict[str, Any]:
        """Loader arguments that carry decode failures to `SkippedSamplesReport` (none without skipping)."""
        if not isinstance(dataset, SkippingDataset):
            return {"collate_fn": collate_fn}
        return {"collate_fn": ReportSkipped(collate_fn, dataset), "skipping": dataset}

    def _loader(self, dataset: Dataset, *, batch_size: int, sampler, collate_fn, drop_last: bool = False) -> DataLoader:
        skip = self._skip_reporting(dataset, collate_fn)
        return (SkipReportingLoader if "skipping" in skip else DataLoader)(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            **skip,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch), each sample read under its own seed; Lightning saves and restores
        the position in the epoch with every checkpoint, so a resumed run sees the same batches."""
        dataset = self.dataset("train")
        sampler = train_sampler(dataset, seed=self.seed)
        # never drop the only batch there is
        drop_last = self.drop_last_train and len(sampler) >= self.batch_size
        skip = self._skip_reporting(dataset, type(self).train_collate)
        return (ResumableSkipReportingLoader if "skipping" in skip else ResumableDataLoader)(
            SampleSeeded(dataset),
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),  # loader seeds drawn here, not from the global RNG
            progress=self.train_progress,
            **skip,
        )

    def train_progress(self) -> tuple[int, bool]:
        """(training batches done in the current epoch, whether that epoch's batches are all done)."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, False
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return done, done >= trainer.num_training_batches

    def _eval_loader(self, split: Split) -> DataLoader:
        dataset = self.dataset(split)
        return self._loader(
            dataset, batch_size=self.eval_batch_size, sampler=eval_sampler(dataset), collate_fn=collate_as_lists
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        """The test split as evaluation batches, for predictions written without metrics (format-only)."""
        return self._eval_loader("test")
