"""Samplers that shard datasets across distributed ranks.

Lightning's default `DistributedSampler` pads the dataset with repeated samples so every rank
gets the same number of batches. That is fine for training but makes evaluation count some
images twice, so evaluation uses `ShardedEvalSampler`, which never pads.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch.distributed as dist
from torch.utils.data import Sampler, SequentialSampler

from flatten_dense.core.resumable_sampler import ResumableSampler

__all__ = ["ShardedEvalSampler", "distributed_world", "train_sampler", "eval_sampler"]


def distributed_world() -> tuple[int, int]:
    """Return (rank, world_size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ShardedEvalSampler(Sampler[int]):
    """Deterministic shard `rank::world_size` of `range(length)`: each index on exactly one rank."""

    def __init__(self, length: int, *, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.length = length
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def train_sampler(dataset, *, seed: int = 0) -> ResumableSampler:
    """Shuffling sampler, this rank's shard: the order depends on (seed, epoch) only, and a resumed
    run starts part-way into an epoch (Lightning calls its `set_epoch`)."""
    rank, world_size = distributed_world()
    return ResumableSampler(len(dataset), seed=seed, rank=rank, world_size=world_size)


def eval_sampler(dataset) -> Sampler[int]:
    """Sequential sampler; under DDP a non-padding shard so every image is counted once."""
    rank, world_size = distributed_world()
    if world_size > 1:
        return ShardedEvalSampler(len(dataset), rank=rank, world_size=world_size)
    return SequentialSampler(dataset)
