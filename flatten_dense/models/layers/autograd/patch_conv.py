"""A non-overlapping patch conv (kernel == stride, no padding) whose weight gradient is one GEMM.

Such a conv is a linear map of each k x k patch: with the patches of x as rows P (B*Ho*Wo, k*k*Cin)
and the output gradient as rows G (B*Ho*Wo, Cout), dW = G^T P. On CPU oneDNN's own weight
gradient for these shapes is 2-4x slower than that GEMM (interleaved medians, AMD EPYC, 2 threads:
PVT-T's stage-2 embedding at 1024 x 1024, 64 -> 128 channels, 39 against 9 ms; stage 3 30 against
9 ms; the 4 x 4 stems 8-11 against 6-7 ms), and it was most of the conv's backward. Forward and
input gradient stay oneDNN's (both about as fast as a GEMM here).
Same maths as `F.conv2d(x, weight, bias, stride=k)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["PatchConv", "patch_conv", "patch_rows"]


def patch_rows(x: Tensor, kernel: tuple[int, int]) -> Tensor:
    """x (B, C, H, W), H and W multiples of the kernel -> (B*Ho*Wo, kh*kw*C) rows in (kh, kw, C) order."""
    batch, channels, height, width = x.shape
    kh, kw = kernel
    patches = x.permute(0, 2, 3, 1).reshape(batch, height // kh, kh, width // kw, kw, channels)
    return patches.permute(0, 1, 3, 2, 4, 5).reshape(-1, kh * kw * channels)  # B Ho Wo kh kw C


class PatchConv(torch.autograd.Function):
    """F.conv2d(x, weight, bias, stride=kernel) for x (B, Cin, H, W) with H, W multiples of the kernel."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride=weight.shape[-2:])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        x, weight = ctx.saved_tensors
        kernel = list(weight.shape[-2:])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, kernel, [0, 0], [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            out_channels, in_channels = weight.shape[:2]
            grad_rows = grad.permute(0, 2, 3, 1).reshape(-1, out_channels)  # B*Ho*Wo Cout (a view if channels-last)
            grad_weight = grad_rows.t() @ patch_rows(x, (kernel[0], kernel[1]))  # Cout (kh kw Cin)
            grad_weight = grad_weight.view(out_channels, *kernel, in_channels).permute(0, 3, 1, 2).contiguous()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_weight, grad_bias


def patch_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`F.conv2d(x, weight, bias, stride=kernel)`, for H and W multiples of the kernel."""
    return PatchConv.apply(x, weight, bias)
