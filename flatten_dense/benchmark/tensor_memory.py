"""Peak of live tensor memory during one call on CPU, from the profiler's allocation records.

The resident-set high-water mark (the issue's CPU memory figure) also counts what the C library
keeps after frees, heap fragmentation and library scratch space, so it moves by 10-25% between
otherwise identical processes on this machine. PyTorch's CPU allocator reports every tensor
allocation and free to the profiler (`profile_memory=True`); summing those records in time order
gives the live tensor bytes, whose peak is deterministic: the CPU analogue of CUDA's
`max_memory_allocated`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["peak_tensor_bytes"]


def peak_tensor_bytes(fn: Callable[[], object]) -> int:
    """Highest live tensor memory, in bytes above what was live before, while `fn()` runs."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        fn()
    records = sorted(
        (event.start_ns(), event.nbytes())
        for event in profile.profiler.kineto_results.events()
        if event.name() == "[memory]"
    )
    live = peak = 0
    for _, change in records:  # + on allocation, - on free
        live += change
        peak = max(peak, live)
    return peak
