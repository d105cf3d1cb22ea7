"""The focused kernel of FLatten attention: ReLU, learnable scale and the focusing function.

Kept apart from the attention module so tests can check Proposition 1 of the paper directly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["focusing_function", "focused_kernel"]

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
