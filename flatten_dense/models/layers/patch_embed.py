"""Patch embeddings: a strided conv + LayerNorm, turning an NCHW map into tokens on a grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PatchEmbed"]


class PatchEmbed(nn.Module):
    """Conv (kernel, stride, padding) then LayerNorm. Returns tokens (B, N, C) and their grid (H, W).

    Non-overlapping embeddings (kernel == stride, padding 0) first pad the input on the bottom and
    right to a multiple of the stride, so any input size works (as mmdet's Swin does).
    """

    def __init__(self, in_channels: int, dim: int, *, kernel: int, stride: int, padding: int = 0, eps: float = 1e-5):
        super().__init__()
        self.stride = stride
        self.pad_to_stride = kernel == stride and padding == 0
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=kernel, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        return self.tokens(self.proj(self.padded(x)))

    def padded(self, x: Tensor) -> Tensor:
        """The conv's input: padded to a multiple of the stride (non-overlapping), channels-last."""
        if self.pad_to_stride:
            pad_h = (-x.shape[-2]) % self.stride
            pad_w = (-x.shape[-1]) % self.stride
            if pad_h or pad_w:
                x = F.pad(x, (0, pad_w, 0, pad_h))
        # Channels-last in, channels-last out: the conv's output then reads as (B, N, C) tokens
        # without a copy (a no-op for the later stages, whose maps already are channels-last views).
        return x.contiguous(memory_format=torch.channels_last)

    def tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """The conv's output (B, C, H, W) -> normalised tokens (B, N, C) and their grid (H, W)."""
        grid = (x.shape[-2], x.shape[-1])
        return self.norm(x.flatten(2).transpose(1, 2)), grid
