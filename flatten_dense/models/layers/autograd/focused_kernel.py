"""The focused kernel phi(x) = focus((relu(x) + eps) / softplus(scale)) storing only its input.

Plain autograd of `layers.focusing.focused_kernel` keeps about six N x C tensors per call (the ReLU
mask, the scaled tensor, its power, the products of the norm ratio); this function keeps x alone
and rebuilds that elementwise chain in backward (one cheap pass over x).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..focusing import focused_kernel

__all__ = ["FocusedKernel", "focused_kernel_recomputed", "focused_kernel_backward"]


def focused_kernel_backward(x: Tensor, scale: Tensor, focusing_factor: float, grad: Tensor) -> tuple[Tensor, Tensor]:
    """(d x, d scale) of sum(grad * phi(x)): the chain rebuilt from x and differentiated locally."""
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        scale = scale.detach().requires_grad_()
        phi = focused_kernel(x, scale, focusing_factor)
        grad_x, grad_scale = torch.autograd.grad(phi, (x, scale), grad)
    return grad_x, grad_scale


class FocusedKernel(torch.autograd.Function):
    """phi(x) for x (B, N, C), scale (1, 1, C); saves x and scale, recomputes the rest in backward."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, focusing_factor: float) -> Tensor:
        ctx.save_for_backward(x, scale)
        ctx.focusing_factor = focusing_factor
        return focused_kernel(x, scale, focusing_factor)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        x, scale = ctx.saved_tensors
        grad_x, grad_scale = focused_kernel_backward(x, scale, ctx.focusing_factor, grad)
        return grad_x, grad_scale, None


def focused_kernel_recomputed(x: Tensor, scale: Tensor, focusing_factor: float) -> Tensor:
    """`focusing.focused_kernel(x, scale, p)` with the elementwise chain recomputed in backward."""
    return FocusedKernel.apply(x, scale, focusing_factor)
