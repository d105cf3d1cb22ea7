"""A depthwise conv of a strided token view, storing the view instead of its contiguous copy.

The attention's values v are a view into the (B, N, 3C) projection output, which the attention
function stores anyway. The conv wants them in one dense (channels-last) block, and plain autograd
stores that copy, one more N x C tensor per block; this function stores the view and makes the
copy again in backward (one memory pass). Same maths as `F.conv2d(x, weight, bias, padding, groups=C)`.

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
from torch.autograd.function import once_differentiable

__all__ = ["DepthwiseConvOfView", "depthwise_conv_of_view", "depthwise_weight_grad"]


def _dense(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last)


class DepthwiseConvOfView(torch.autograd.Function):
    """F.conv2d(x, weight, bias, padding=padding, groups=C) for x (B, C, H, W) in any layout."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = list(padding), bias is not None
        return F.conv2d(_dense(x), weight, bias, padding=padding, groups=x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        dense = _dense(x)
        weight_by_conv = ctx.needs_input_grad[1] and _conv_weight_grad_pays(x, weight)
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad,
            dense,
            weight,
            None,
            [1, 1],
            ctx.padding,
            [1, 1],
            False,
            [0, 0],
            x.shape[1],
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1] and not weight_by_conv, False],
        )
        if weight_by_conv:
            grad_weight = depthwise_weight_grad(dense, grad, ctx.padding)
        grad_bias = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_weight, grad_bias, None


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


def depthwise_conv_of_view(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
    """`F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])`, storing x as given."""
    return DepthwiseConvOfView.apply(x, weight, bias, tuple(padding))
