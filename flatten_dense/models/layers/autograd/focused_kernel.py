"""The focused kernel phi(x) = focus((relu(x) + eps) / softplus(scale)) storing only its input.

Plain autograd of `layers.focusing.focused_kernel` keeps about six N x C tensors per call (the ReLU
mask, the scaled tensor, its power, the products of the norm ratio); this function keeps x alone
and rebuilds that elementwise chain in backward (one cheap pass over x).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..focusing import KERNEL_EPS, focused_kernel, focused_kernel_parts

__all__ = [
    "FocusedKernel",
    "focused_kernel_backward",
    "focused_kernel_recomputed",
    "focused_kernel_vjp",
    "focused_kernel_without_grad",
]


def focused_kernel_without_grad(x: Tensor, scale: Tensor, focusing_factor: float) -> Tensor:
    """phi(x) in one fresh buffer (`focused_kernel_parts`' in-place chain): for code without autograd."""
    x_pow, ratio = focused_kernel_parts(x, scale, focusing_factor)
    return x_pow.mul_(ratio)


def focused_kernel_vjp(x: Tensor, scale: Tensor, focusing_factor: float, grad: Tensor) -> tuple[Tensor, Tensor]:
    """(d x, d scale) of sum(grad * phi(x)), written out by hand with few N x C buffers.

    With s = softplus(scale), t = (relu(x) + eps) / s, u = t**p, a = ||t||, b = ||u||, phi = (a/b) u
    and G = sum(grad * u) per token:
        dL/du = (a/b) grad - G (a/b) u / b^2,   dL/dt = dL/du * p u / t + G t / (a b)
        dL/dx = dL/dt / s * [x > 0],           dL/dscale = -sum(dL/dt * t) / s * sigmoid(scale)
    """
    p = focusing_factor
    s = torch.nn.functional.softplus(scale)
    t = x.clamp_min(0.0).add_(KERNEL_EPS).div_(s)  # buffer 1
    a = torch.linalg.vector_norm(t, dim=-1, keepdim=True)  # B N 1
    u = t.pow(p)  # buffer 2
    b = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    r = a / b
    g_dot_u = (grad * u).sum(dim=-1, keepdim=True)  # B N 1 (a transient buffer)
    grad_t = torch.addcmul(grad * r, u, g_dot_u * r / b.square(), value=-1.0)  # dL/du, buffer 3
    grad_t.mul_(u).mul_(p).div_(t)  # * p t**(p-1)
    del u
    grad_t.addcmul_(t, g_dot_u / (a * b))
    grad_s = (grad_t * t).sum(dim=tuple(range(grad_t.dim() - 1)), keepdim=True).div_(s).neg_()
    grad_scale = grad_s * torch.sigmoid(scale)
    grad_x = grad_t.div_(s).mul_(x > 0)
    return grad_x, grad_scale.reshape(scale.shape)


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
