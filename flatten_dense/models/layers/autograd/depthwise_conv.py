"""The backward of a stride-1 depthwise conv, with the weight gradient as a conv where that pays.

The attention function (`linear_attention.py`) runs FLatten's DWC of the values inside itself and
calls this in its backward: dense is the (channels-last) conv input it rebuilt from the stored
projections, so the conv keeps no copy of its own.

The weight gradient is a conv too: dW[c, i, j] = sum_{b,h,w} g[b, c, h, w] x_pad[b, c, h + i, w + j]
is x (padded) convolved with each image's output gradient as a (C, 1, Ho, Wo) depthwise kernel.
For FLatten's 5 x 5 DWC on CPU, oneDNN runs that forward faster than its own depthwise weight
gradient, the bulk of the conv's backward (interleaved, AMD EPYC, 2 threads, medians: 64 channels
at 256 x 256 71 against 109 ms, 128 at 128 x 128 16 against 35 ms, Swin's 25 windows of 96 x 56 x 56
30 against 49 ms; a tie at 64 x 128 x 128). Not for every shape: with a 3 x 3 kernel the same
trick is 10x slower (64 or 256 channels at 256 x 256), and it was measured on CPU only; so it runs
on CPU for kernels of 25 taps or more, and oneDNN / cuDNN's own weight gradient everywhere else.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["depthwise_conv_backward", "depthwise_weight_grad", "map_tokens", "token_maps"]


def token_maps(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """Tokens (B, N, C) of a row-major grid (H, W) as dense channels-last maps (B, C, H, W): the
    conv's input layout (a copy only where the tokens are strided, e.g. a view into qkv)."""
    batch, _, channels = tokens.shape
    maps = tokens.reshape(batch, grid[0], grid[1], channels).permute(0, 3, 1, 2)
    return maps.contiguous(memory_format=torch.channels_last)


def map_tokens(maps: Tensor) -> Tensor:
    """(B, C, H, W) maps -> (B, N, C) tokens (a view for channels-last maps)."""
    batch, channels = maps.shape[:2]
    return maps.permute(0, 2, 3, 1).reshape(batch, -1, channels)


def depthwise_conv_backward(
    grad: Tensor, dense: Tensor, weight: Tensor, padding: tuple[int, int], needs: tuple[bool, bool, bool]
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(d x, d weight, d bias) of F.conv2d(dense, weight, bias, padding=padding, groups=C) for the
    output gradient grad (B, C, Ho, Wo); `needs` says which of the three to compute."""
    channels = dense.shape[1]
    weight_by_conv = needs[1] and _conv_weight_grad_pays(dense, weight)
    grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
        grad,
        dense,
        weight,
        None,
        [1, 1],
        list(padding),
        [1, 1],
        False,
        [0, 0],
        channels,
        [needs[0], needs[1] and not weight_by_conv, False],
    )
    if weight_by_conv:
        grad_weight = depthwise_weight_grad(dense, grad, list(padding))
    grad_bias = grad.sum(dim=(0, 2, 3)) if needs[2] else None
    return grad_x, grad_weight, grad_bias


def _conv_weight_grad_pays(x: Tensor, weight: Tensor) -> bool:
    """Where the conv-as-weight-gradient was measured faster: CPU, kernels of 25 taps or more."""
    return x.device.type == "cpu" and x.shape[0] > 0 and weight.shape[-2] * weight.shape[-1] >= 25


def depthwise_weight_grad(x: Tensor, grad: Tensor, padding: list[int]) -> Tensor:
    """dL/dW (C, 1, kh, kw) of a stride-1 depthwise conv of x (B, C, H, W) with output gradient
    grad (B, C, Ho, Wo), B >= 1: per image, x convolved with the gradient as its kernel, summed."""
    channels = x.shape[1]
    total: Tensor | None = None
    for image, image_grad in zip(x, grad, strict=True):
        part = F.conv2d(image.unsqueeze(0), image_grad.unsqueeze(1), padding=padding, groups=channels)  # 1 C kh kw
        total = part if total is None else total.add_(part)
    return total.transpose(0, 1).contiguous()  # C 1 kh kw
