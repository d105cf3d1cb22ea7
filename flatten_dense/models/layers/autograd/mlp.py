"""fc2(GELU(h)) storing h only: the GELU output (the widest tensor of a block) is rebuilt in backward.

Plain autograd keeps both h (for GELU's backward) and GELU(h) (for fc2's weight gradient); the
hidden width is 4-8 x C, so this saves the largest activation of every MLP for one extra GELU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["GeluLinear", "gelu_linear"]


class GeluLinear(torch.autograd.Function):
    """F.linear(F.gelu(h), weight, bias) (exact GELU); saves h and weight."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(hidden, weight)
        ctx.has_bias = bias is not None
        # The GEMM's dtype under autocast (bf16/fp16) or the input's: backward runs its GEMMs in it too.
        device = hidden.device.type
        autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
        ctx.compute_dtype = torch.get_autocast_dtype(device) if autocast else hidden.dtype
        return F.linear(F.gelu(hidden), weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        hidden, weight = ctx.saved_tensors
        dtype = ctx.compute_dtype
        grad = grad.to(dtype)
        grad_2d = grad.reshape(-1, grad.shape[-1])
        grad_hidden = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_act = grad @ weight.to(dtype)  # (..., hidden)
            grad_hidden = torch.ops.aten.gelu_backward(grad_act.to(hidden.dtype), hidden)
        if ctx.needs_input_grad[1]:
            activation = F.gelu(hidden).to(dtype)  # recomputed
            grad_weight = (grad_2d.t() @ activation.reshape(-1, activation.shape[-1])).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_2d.sum(dim=0).to(weight.dtype)
        return grad_hidden, grad_weight, grad_bias


def gelu_linear(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear(F.gelu(hidden), weight, bias), storing `hidden` only."""
    return GeluLinear.apply(hidden, weight, bias)
