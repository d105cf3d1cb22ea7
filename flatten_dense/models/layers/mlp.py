"""Transformer MLPs: the plain two-layer MLP and PVTv2's MLP with a depthwise 3x3 conv."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .fused_linear import fused_linear, in_inference

__all__ = ["INFERENCE_CHUNK_TOKENS", "DepthwiseConvMlp", "Mlp"]

INFERENCE_CHUNK_TOKENS = 4096  # tokens per MLP chunk in inference (row-wise maths: same numbers)


def gelu(x: Tensor) -> Tensor:
    """Exact GELU; in place without autograd (the hidden activations are the largest tensors)."""
    if torch.is_grad_enabled():
        return F.gelu(x)
    return torch.ops.aten.gelu_(x)


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (the GELU is the `gelu` function: in place when there is no autograd)."""

    def __init__(self, dim: int, hidden_dim: int, *, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        return self.drop(self.fc2(self.drop(gelu(self.fc1(x)))))

    def residual_inference(self, x: Tensor, norm: nn.Module, grid: tuple[int, int] | None = None) -> Tensor:
        """x + mlp(norm(x)) without autograd, in token chunks. x: (B, N, C) -> (B, N, C).

        Each chunk goes norm -> fc1 + GELU -> fc2 + residual while it is in cache, so neither the
        normalised tokens nor the hidden activation (up to 8 x C wide: 128 MiB for PVT-T's first
        stage at 1024 x 1024) is ever a full N x C buffer. Row-wise maths: the same numbers.
        """
        if not in_inference(self):
            raise RuntimeError("residual_inference is for eval mode without autograd")
        chunks = [
            fused_linear(
                fused_linear(norm(chunk), self.fc1.weight, self.fc1.bias, gelu=True),
                self.fc2.weight,
                self.fc2.bias,
                residual=chunk,
            )
            for chunk in ((x,) if torch.compiler.is_compiling() else x.split(INFERENCE_CHUNK_TOKENS, dim=1))
        ]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)


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

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = gelu(self.dwconv(self.fc1(x), grid))
        return self.drop(self.fc2(self.drop(x)))

    def residual_inference(self, x: Tensor, norm: nn.Module, grid: tuple[int, int]) -> Tensor:
        """x + mlp(norm(x)) without autograd, the residual add fused into fc2. (B, N, C) -> same."""
        if not in_inference(self):
            raise RuntimeError("residual_inference is for eval mode without autograd")
        hidden = fused_linear(norm(x), self.fc1.weight, self.fc1.bias)
        hidden = gelu(self.dwconv(hidden, grid))
        return fused_linear(hidden, self.fc2.weight, self.fc2.bias, residual=x)
