"""A training data order that a resumed run reproduces exactly, on any number of ranks.

- `ResumableSampler`: the epoch's order is a permutation drawn from (seed, epoch) alone, sharded by
  rank like `DistributedSampler` (padded so every rank gets as many samples); it can start part-way
  into an epoch.
- `SampleSeeded`: each training sample is read under its own random seed, drawn from (seed, epoch,
  index), so augmentations do not depend on what ran before (other samples, dropout, workers) and
  the global RNG is left as it was: the model's random state is then only the trainer's and a
  checkpoint's copy of it is enough to continue exactly.
- `ResumableDataLoader`: a DataLoader with Lightning's `state_dict`/`load_state_dict` interface, so
  Lightning stores the position (epoch, batches done in it) in every checkpoint and restores it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["ResumableDataLoader", "ResumableSampler", "RestoreDataPosition", "SampleSeeded", "sample_seed"]

_MASK = (1 << 63) - 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for one sample of one epoch (a SplitMix64-style mix: neighbours are unrelated)."""
    value = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & _MASK
    value ^= value >> 31
    value = (value * 0xD6E8FEB86659FD93) & _MASK
    return value ^ (value >> 29)


class ResumableSampler(Sampler):
    """Shuffled indices of `range(length)` for one rank; yields `(index, sample seed)` pairs.

    The order of epoch `e` is `randperm(length)` under the seed `seed + e` (what `DistributedSampler`
    does), so it does not depend on how many epochs this process has seen. `start_at(epoch, n)`
    makes the next iteration of that epoch skip its first `n` samples (a resumed run).
    """

    def __init__(self, length: int, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.length = length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, samples) to skip on the next iteration

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def start_at(self, epoch: int, samples: int) -> None:
        self.epoch = int(epoch)
        self._skip = (int(epoch), int(samples))

    def indices(self) -> list[int]:
        """This rank's indices of the current epoch, in order."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        per_rank = -(-self.length // self.world_size)
        padded = order + order[: per_rank * self.world_size - len(order)] if order else order
        return padded[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self.indices()
        skip, self._skip = self._skip, None
        start = skip[1] if skip is not None and skip[0] == self.epoch else 0
        for index in indices[start:]:
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return -(-self.length // self.world_size)


class SampleSeeded(Dataset):
    """`dataset[index]` read under the seed that comes with the index; plain indices pass through.

    Python's, NumPy's and torch's (CPU) generators are seeded for the read and restored after it.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # class names, ids, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        if not isinstance(item, tuple):
            return self.dataset[item]
        index, seed = item
        python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(seed)
            np.random.seed(seed % (1 << 32))
            torch.manual_seed(seed)
            return self.dataset[index]
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
            torch.set_rng_state(torch_state)


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `ResumableSampler` whose position Lightning saves and restores.

    `progress()` says how far the trainer is: (batches done in the current epoch, whether the
    epoch's batches are all done). The loader cannot count this itself, since Lightning fetches a
    batch ahead of the one it trains on.
    """

    def __init__(self, *args: Any, progress: Callable[[], tuple[int, bool]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError("ResumableDataLoader needs a ResumableSampler")
        self.progress = progress

    def state_dict(self) -> dict[str, int]:
        batches, epoch_done = self.progress()
        return {"epoch": self.sampler.epoch, "batches": int(batches), "epoch_done": int(bool(epoch_done))}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("epoch_done"):
            self.sampler.start_at(int(state["epoch"]) + 1, 0)
        else:
            self.sampler.start_at(int(state["epoch"]), int(state["batches"]) * int(self.batch_size or 1))


class RestoreDataPosition(L.Callback):
    """Applies the checkpoint's loader position when Lightning has not (and restarts the iterator).

    Lightning builds the train loader (and its first iterator) before it restores a checkpoint when
    a schedule asks for `estimated_stepping_batches`; the saved position would then be ignored and
    the resumed epoch would replay its first batches.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        fit_loop = trainer.fit_loop
        if not getattr(fit_loop, "_combined_loader_states_to_load", None) or fit_loop._combined_loader is None:
            return
        fit_loop._combined_loader._load_state_dicts(fit_loop._combined_loader_states_to_load)
        fit_loop._combined_loader_states_to_load = []
        if fit_loop._data_fetcher is not None:
            iter(fit_loop._data_fetcher)  # a fresh iterator from the restored position
