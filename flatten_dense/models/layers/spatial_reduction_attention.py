"""PVT's softmax spatial-reduction attention: keys and values from a grid shrunk by `sr_ratio`.

The softmax counterpart of focused linear attention in the PVT family (an attention-type option
of the same backbone, used for the side-by-side speed comparison).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .fused_linear import project_output, split_linear

__all__ = ["SpatialReductionAttention"]


class SpatialReductionAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, sr_ratio: int, qkv_bias: bool = True, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.sr_ratio = sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(
        self, x: Tensor, grid: tuple[int, int], valid: Tensor | None = None, *, residual: Tensor | None = None
    ) -> Tensor:
        """x: (B, N, C) on grid (H, W) -> (B, N, C), plus `residual` when given.

        `valid` is accepted for interface parity (PVT never pads tokens). Projections go through
        the same fused linear path as focused linear attention, so comparisons are like for like.
        """
        batch, tokens, channels = x.shape
        heads = self.num_heads
        (q,) = split_linear(x, [self.q], channels)
        q = q.reshape(batch, tokens, heads, -1).transpose(1, 2)  # B h N d
        if self.sr_ratio > 1:
            x_grid = x.transpose(1, 2).reshape(batch, channels, grid[0], grid[1])
            x = self.norm(self.sr(x_grid).flatten(2).transpose(1, 2))  # B n C
        k, v = (
            t.reshape(batch, -1, heads, channels // heads).transpose(1, 2) for t in split_linear(x, [self.kv], channels)
        )
        out = F.scaled_dot_product_attention(q, k, v)  # B h N d
        return project_output(self.proj, self.proj_drop, out.transpose(1, 2).reshape(batch, tokens, channels), residual)
