"""FLOP counting and the machine's own dense fp32 matmul throughput (the yardstick for FLOP/s).

FLOPs are what `torch.utils.flop_counter.FlopCounterMode` counts: matmuls, convolutions and
attention kernels (2 FLOPs per multiply-add); elementwise work and norms count zero. A model's
"fraction of matmul peak" is therefore how close it gets to spending all its time in dense GEMMs.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import (
    FlopCounterMode,
    flop_registry,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

__all__ = ["count_flops", "matmul_flops_per_second"]


def _linear_flops(x_shape: torch.Size, weight_shape: torch.Size) -> int:
    return 2 * math.prod(x_shape[:-1]) * x_shape[-1] * weight_shape[0]


# torch's counter knows aten's matmuls but not oneDNN's fused linear, which our CPU inference path
# uses (flatten_dense/models/layers/fused_linear.py): count it as the GEMM it is.
_ONEDNN_LINEAR = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
if _ONEDNN_LINEAR is not None:

    @register_flop_formula(_ONEDNN_LINEAR)
    def _onednn_linear_flops(x_shape, second, third, fourth, *args, out_val=None, **kwargs) -> int:
        # default: (X, W, B, attr, scalars, algorithm); binary: (X, other, W, B, attr)
        weight_shape = second if isinstance(fourth, str) else third
        return _linear_flops(x_shape, weight_shape)


# Nor the CPU flash-attention kernels that F.scaled_dot_product_attention dispatches to on CPU
# (PVT's softmax counterpart, CSWin's softmax stripes): the same counts as the CUDA kernels.
_CPU_SDPA = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_CPU_SDPA_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
if _CPU_SDPA is not None and _CPU_SDPA not in flop_registry:

    @register_flop_formula(_CPU_SDPA)
    def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)


if _CPU_SDPA_BACKWARD is not None and _CPU_SDPA_BACKWARD not in flop_registry:

    @register_flop_formula(_CPU_SDPA_BACKWARD)
    def _cpu_sdpa_backward_flops(grad_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_shape, query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of one call of `fn` (forward, or forward + backward if `fn` does both)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops_per_second(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    sizes: tuple[int, ...] = (1024, 2048, 4096),
    repeats: int = 5,
) -> dict[str, float]:
    """Best median FLOP/s of square `a @ b` over `sizes`: the dense fp32 ceiling this machine reaches now.

    Measured in the same run as the models, with the same thread count, so ratios against it
    are not skewed by a busy or throttled machine on another day.
    """
    device = torch.device(device)
    best = {"flops_per_second": 0.0, "size": 0}
    for size in sizes:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        out = torch.empty(size, size, device=device, dtype=dtype)
        for _ in range(2):
            torch.matmul(a, b, out=out)
        times = []
        for _ in range(repeats):
            _synchronize(device)
            start = time.perf_counter()
            torch.matmul(a, b, out=out)
            _synchronize(device)
            times.append(time.perf_counter() - start)
        rate = 2.0 * size**3 / statistics.median(times)
        if rate > best["flops_per_second"]:
            best = {"flops_per_second": rate, "size": size}
    return best
