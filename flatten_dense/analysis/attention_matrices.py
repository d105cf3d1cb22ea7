"""The equivalent N x N attention matrices of one focused linear attention layer.

From the layer's own projections (and key position encoding) on real tokens, for one head h
of width d: with q, k, v (N, d) the head's slices,
    softmax:       A = softmax(q k^T / sqrt(d))
    linear (ReLU): A = phi(q) phi(k)^T / rowsum, phi(t) = relu(t) + 1e-6 (no scale, no focusing)
    focused:       A = (phi(q) phi(k)^T / n) / (phi(q) . mean(phi(k)) + 1e-6), phi = the layer's
                   `focused_kernel` over all C channels, as `FocusedLinearAttention.forward`
    + DWC:         A + D_c, D_c the N x N matrix of the depthwise conv's channel c (zero padding,
                   bias left out: it is not linear in v)
so that the layer's output before `proj` is A_focused v + DWC(v) for every head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from flatten_dense.models.layers import FocusedLinearAttention
from flatten_dense.models.layers.focused_linear_attention import NORMALISER_EPS
from flatten_dense.models.layers.focusing import KERNEL_EPS, focused_kernel

__all__ = [
    "HeadTokens",
    "dwc_matrix",
    "focused_matrix",
    "head_tokens",
    "pool_tokens",
    "relu_linear_matrix",
    "softmax_matrix",
]


@dataclass
class HeadTokens:
    """The layer's q, k, v (N, C) and focused kernels phi(q), phi(k) (N, C) on a grid, float64."""

    q: Tensor
    k: Tensor
    v: Tensor
    q_phi: Tensor
    k_phi: Tensor
    grid: tuple[int, int]
    num_heads: int

    @property
    def head_dim(self) -> int:
        return self.q.shape[-1] // self.num_heads

    def head(self, t: Tensor, h: int) -> Tensor:
        d = self.head_dim
        return t[:, h * d : (h + 1) * d]


def pool_tokens(x: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """(1, H*W, C) tokens on `grid` -> (1, h*w, C) on `size` by area averaging (no change if equal)."""
    if tuple(grid) == tuple(size):
        return x
    batch, _, channels = x.shape
    as_map = x.reshape(batch, grid[0], grid[1], channels).permute(0, 3, 1, 2)
    pooled = F.adaptive_avg_pool2d(as_map, size)
    return pooled.flatten(2).transpose(1, 2)


@torch.no_grad()
def head_tokens(layer: FocusedLinearAttention, x: Tensor, grid: tuple[int, int]) -> HeadTokens:
    """q, k (with the key position encoding), v and the focused kernels of tokens x (1, N, C)."""
    q, k, v = layer.project_qkv(x)
    position = layer.key_position(grid)  # learned (resized), sinusoidal or none
    if position is not None:
        k = k + position
    q, k, v = (t[0].double() for t in (q, k, v))
    scale = layer.scale[0].double()
    q_phi = focused_kernel(q[None], scale[None], layer.focusing_factor)[0]
    k_phi = focused_kernel(k[None], scale[None], layer.focusing_factor)[0]
    return HeadTokens(q=q, k=k, v=v, q_phi=q_phi, k_phi=k_phi, grid=tuple(grid), num_heads=layer.num_heads)


def softmax_matrix(t: HeadTokens, h: int) -> Tensor:
    q, k = t.head(t.q, h), t.head(t.k, h)
    return torch.softmax(q @ k.T / t.head_dim**0.5, dim=-1)


def relu_linear_matrix(t: HeadTokens, h: int) -> Tensor:
    q, k = F.relu(t.head(t.q, h)) + KERNEL_EPS, F.relu(t.head(t.k, h)) + KERNEL_EPS
    scores = q @ k.T
    return scores / scores.sum(dim=-1, keepdim=True)


def focused_matrix(t: HeadTokens, h: int) -> Tensor:
    q, k = t.head(t.q_phi, h), t.head(t.k_phi, h)
    n = k.shape[0]
    normaliser = q @ k.mean(dim=0, keepdim=True).T + NORMALISER_EPS  # N 1
    return (q @ k.T / n) / normaliser


def dwc_matrix(layer: FocusedLinearAttention, grid: tuple[int, int], channel: int) -> Tensor:
    """D (N, N) with (D v)_i = the depthwise conv of channel `channel` at token i (no bias)."""
    height, width = grid
    n = height * width
    weight = layer.dwc.weight[channel : channel + 1].detach().double()  # 1 1 k k
    basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, height, width)
    columns = F.conv2d(basis, weight, padding=layer.dwc.padding)  # one-hot token j -> column j
    return columns.reshape(n, n).T
