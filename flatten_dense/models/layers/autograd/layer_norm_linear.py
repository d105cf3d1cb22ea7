"""F.linear(LayerNorm(x)) storing x only: the normalised tokens are rebuilt in backward.

Plain autograd keeps x (for LayerNorm's backward) and LayerNorm(x) (for the linear's weight
gradient): two N x C tensors. The block's residual stream x is kept anyway, so rebuilding
y = (x - mean) * rstd * gamma + beta from x and the stored per-token mean and rstd (one cheap
pass) saves one N x C tensor per fused pair. An `offset` (the attention's key position table)
can be added into a column range of the output, which is then not a second stored tensor.
Plain equations:
    y = LN(x);  out = y W^T + b;  out[..., s:s+w] += P
    dW = g^T y;  db = sum(g);  dy = g W;  (dx, dgamma, dbeta) = LN's backward of dy;  dP = g[..., s:s+w]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["LayerNormLinear", "layer_norm_linear"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The linear's dtype under autocast (bf16/fp16) or the input's: backward's GEMMs run in it too."""
    device = x.device.type
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    return torch.get_autocast_dtype(device) if autocast else x.dtype


class LayerNormLinear(torch.autograd.Function):
    """F.linear(F.layer_norm(x, (C,), gamma, beta, eps), weight, bias), plus `offset` in the columns
    from `offset_start` on; saves x, mean, rstd."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, weight, bias, offset, offset_start):
        with torch.autocast(device_type=x.device.type, enabled=False):
            normed, mean, rstd = torch.ops.aten.native_layer_norm(x, [x.shape[-1]], gamma, beta, eps)
        ctx.compute_dtype = dtype = _compute_dtype(x)
        ctx.save_for_backward(x, gamma, beta, mean, rstd, weight)
        ctx.has_bias = bias is not None
        out = F.linear(normed.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
        ctx.offset_shape = None if offset is None else offset.shape
        ctx.offset_start = offset_start
        if offset is not None:
            out[..., offset_start : offset_start + offset.shape[-1]] += offset
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, gamma, beta, mean, rstd, weight = ctx.saved_tensors
        dtype = ctx.compute_dtype
        grad = grad.to(dtype)
        grad_2d = grad.reshape(-1, grad.shape[-1])
        normed = (x - mean) * rstd  # rebuilt: (B, N, C)
        if gamma is not None:
            normed = torch.addcmul(beta, normed, gamma) if beta is not None else normed * gamma
        grad_weight = (grad_2d.t() @ normed.reshape(-1, normed.shape[-1]).to(dtype)).to(weight.dtype)
        del normed
        grad_bias = grad_2d.sum(dim=0).to(weight.dtype) if ctx.has_bias else None
        grad_normed = (grad @ weight.to(dtype)).to(x.dtype)
        mask = [ctx.needs_input_grad[0], gamma is not None and ctx.needs_input_grad[1], beta is not None]
        grad_x, grad_gamma, grad_beta = torch.ops.aten.native_layer_norm_backward(
            grad_normed, x, [x.shape[-1]], mean, rstd, gamma, beta, mask
        )
        grad_offset = None
        if ctx.offset_shape is not None and ctx.needs_input_grad[6]:
            start, width = ctx.offset_start, ctx.offset_shape[-1]
            grad_offset = grad[..., start : start + width].sum_to_size(ctx.offset_shape)
        grad_beta = grad_beta if ctx.needs_input_grad[2] else None
        return grad_x, grad_gamma, grad_beta, None, grad_weight, grad_bias, grad_offset, None


def layer_norm_linear(
    x: Tensor, norm: nn.LayerNorm, linear: nn.Linear, *, offset: Tensor | None = None, offset_start: int = 0
) -> Tensor:
    """linear(norm(x)) for x (..., C), storing x instead of norm(x); `offset` (broadcastable to
    (..., w)) is added to output columns offset_start .. offset_start + w."""
    return LayerNormLinear.apply(x, norm.weight, norm.bias, norm.eps, linear.weight, linear.bias, offset, offset_start)
