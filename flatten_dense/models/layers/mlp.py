"""Transformer MLPs: the plain two-layer MLP and PVTv2's MLP with a depthwise 3x3 conv.

The plain forms; `fast_layers.FastMlp` / `FastDepthwiseConvMlp` are the fast paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DepthwiseConvMlp", "Mlp"]


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int, *, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:  # (B, N, C) -> same
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class _DepthwiseConv(nn.Module):
    """Holds `dwconv` one level down, matching the released key `mlp.dwconv.dwconv.weight`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:  # (B, N, C) -> (B, N, C)
        """Tokens (B, H, W, C) are NCHW in channels-last memory: conv on them with no layout copies."""
        batch, tokens, channels = x.shape
        x = x.reshape(batch, grid[0], grid[1], channels).permute(0, 3, 1, 2)
        x = self.dwconv(x.contiguous(memory_format=torch.channels_last))
        return x.permute(0, 2, 3, 1).reshape(batch, tokens, channels)


class DepthwiseConvMlp(nn.Module):
    """PVTv2's MLP: fc1 -> depthwise 3x3 conv on the token grid -> GELU -> fc2."""

    def __init__(self, dim: int, hidden_dim: int, *, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = _DepthwiseConv(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:  # (B, N, C) -> same
        x = F.gelu(self.dwconv(self.fc1(x), grid))
        return self.drop(self.fc2(self.drop(x)))
