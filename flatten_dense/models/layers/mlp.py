"""Transformer MLPs: the plain two-layer MLP and PVTv2's MLP with a depthwise 3x3 conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Mlp", "DepthwiseConvMlp", "INFERENCE_CHUNK_TOKENS"]

INFERENCE_CHUNK_TOKENS = 4096  # tokens per MLP chunk in inference (row-wise maths: same numbers)


def gelu(x: Tensor) -> Tensor:
    """Exact GELU; in place without autograd (the hidden activations are the largest tensors)."""
    if torch.is_grad_enabled():
        return F.gelu(x)
    return torch.ops.aten.gelu_(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, *, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        if self.training or torch.is_grad_enabled() or x.shape[1] <= INFERENCE_CHUNK_TOKENS:
            return self.drop(self.fc2(self.drop(gelu(self.fc1(x)))))
        # Inference on many tokens: run the MLP over token chunks so the hidden activation (up to
        # 8 x C wide) stays small and in cache instead of a fresh N x 8C buffer (128 MiB for
        # PVT-T's first stage at 1024 x 1024) that the allocator maps and the kernel page-faults in.
        out = torch.empty_like(x)
        for start in range(0, x.shape[1], INFERENCE_CHUNK_TOKENS):
            chunk = x[:, start : start + INFERENCE_CHUNK_TOKENS]
            out[:, start : start + INFERENCE_CHUNK_TOKENS] = self.fc2(gelu(self.fc1(chunk)))
        return out


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
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = gelu(self.dwconv(self.fc1(x), grid))
        return self.drop(self.fc2(self.drop(x)))
