"""Keep freed memory in the process on glibc, so large tensors do not page-fault on every allocation.

glibc's malloc hands allocations above its mmap threshold (at most 32 MiB, adjusted at run time)
straight to the kernel and unmaps them on free, and trims the heap top when much is free. A dense
backbone at detection resolutions allocates and frees tensors of tens to hundreds of MiB per layer,
so every one of them is mapped afresh and its pages are faulted in one by one by the kernel that
writes it: on this project's 2-core machine that was a quarter of flatten_pvt_t's forward time at
1024 x 1024. Raising both thresholds makes malloc reuse the freed memory instead, which is what
PyTorch's own CPU launcher (`torch.backends.xeon.run_cpu`) gets by preloading jemalloc or tcmalloc.
The cost is memory: what is freed stays with the process until it exits, and reuse leaves some
fragmentation, so the resident high-water mark can be somewhat above the live peak (measured in
docs/benchmarks.md: 1448/1024 ratios of 2.00x and 2.10x with it, 2.04x and 2.03x without).

The command-line tools call `tune_cpu_allocator()` once at start; set FLATTEN_DENSE_MALLOC_TUNING=0
to keep glibc's defaults. Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD_BYTES", "TRIM_THRESHOLD_BYTES", "tune_cpu_allocator"]

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 30  # older glibc refuses more than 32 MiB: then that is used
FALLBACK_MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = (1 << 31) - 1  # mallopt takes an int

_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds once per process; True when they are in effect."""
    global _tuned
    if _tuned is not None:
        return _tuned
    _tuned = False
    if os.environ.get("FLATTEN_DENSE_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return _tuned
    libc_name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(libc_name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return _tuned
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mmap_set = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) or mallopt(
        M_MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD_BYTES
    )
    _tuned = bool(mmap_set) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _tuned
