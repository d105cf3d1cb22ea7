"""A depthwise conv of a strided token view, storing the view instead of its contiguous copy.

The attention's values v are a view into the (B, N, 3C) projection output, which the attention
function stores anyway. The conv wants them in one dense (channels-last) block, and plain autograd
stores that copy, one more N x C tensor per block; this function stores the view and makes the
copy again in backward (one memory pass). Same maths as `F.conv2d(x, weight, bias, padding, groups=C)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["DepthwiseConvOfView", "depthwise_conv_of_view"]


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
        grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad,
            _dense(x),
            weight,
            [weight.shape[0]] if ctx.has_bias else None,
            [1, 1],
            ctx.padding,
            [1, 1],
            False,
            [0, 0],
            x.shape[1],
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]],
        )
        return grad_x, grad_weight, grad_bias, None


def depthwise_conv_of_view(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
    """`F.conv2d(x, weight, bias, padding=padding, groups=x.shape[1])`, storing x as given."""
    return DepthwiseConvOfView.apply(x, weight, bias, tuple(padding))
