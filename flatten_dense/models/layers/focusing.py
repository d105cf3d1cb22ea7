"""The focused kernel of FLatten attention: ReLU, learnable scale and the focusing function.

Kept apart from the attention module so tests can check Proposition 1 of the paper directly.
`focused_kernel_parts` is the form the attention uses: it returns x**p and the per-token factor
||x|| / ||x**p|| separately, because that factor can be applied to the small per-head results
instead of to a full N x C tensor.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["focused_kernel", "focused_kernel_parts", "focusing_function"]

KERNEL_EPS = 1e-6


def focusing_function(x: Tensor, focusing_factor: float) -> Tensor:
    """y = x**p * ||x|| / ||x**p|| over the last dim: same norm, direction pulled to the nearest axis.

    Expects non-negative x (the ReLU kernel's output). x: (..., C) -> (..., C).
    """
    x_pow = x**focusing_factor
    return x_pow * (x.norm(dim=-1, keepdim=True) / x_pow.norm(dim=-1, keepdim=True))


def focused_kernel(x: Tensor, scale: Tensor, focusing_factor: float) -> Tensor:
    """phi(x): relu(x) + eps, divided by softplus(scale), then focused. x: (B, N, C), scale: (1, 1, C)."""
    x = (F.relu(x) + KERNEL_EPS) / F.softplus(scale)
    return focusing_function(x, focusing_factor)


def focused_kernel_parts(
    x: Tensor, scale: Tensor, focusing_factor: float, *, consume: bool = False
) -> tuple[Tensor, Tensor]:
    """(x_pow, ratio) with phi(x) = x_pow * ratio; x_pow (B, N, C), ratio (B, N, 1).

    Without autograd the work happens in place on one fresh buffer (no other N x C temporaries);
    with `consume=True` the caller hands over `x` itself as that buffer (it is overwritten).
    """
    inplace = not torch.is_grad_enabled()
    if inplace:
        t = (x.clamp_min_(0.0) if consume else x.clamp_min(0.0)).add_(KERNEL_EPS).div_(F.softplus(scale))
    else:
        t = (F.relu(x) + KERNEL_EPS) / F.softplus(scale)
    norm = torch.linalg.vector_norm(t, dim=-1, keepdim=True)
    t_pow = t.pow_(focusing_factor) if inplace else t**focusing_factor
    return t_pow, norm / torch.linalg.vector_norm(t_pow, dim=-1, keepdim=True)
