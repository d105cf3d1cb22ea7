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

__all__ = ["LayerNormLinear", "layer_norm_linear", "rebuilt_norm"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The linear's dtype under autocast (bf16/fp16) or the input's: backward's GEMMs run in it too."""
    device = x.device.type
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    return torch.get_autocast_dtype(device) if autocast else x.dtype


def rebuilt_norm(x: Tensor, mean: Tensor, rstd: Tensor, gamma: Tensor | None, beta: Tensor | None) -> Tensor:
    """LayerNorm(x) from the per-token mean and rstd its forward returned, in one new buffer."""
    normed = (x - mean).mul_(rstd)
    if gamma is not None:
        normed.mul_(gamma)
    return normed.add_(beta) if beta is not None else normed


class LayerNormLinear(torch.autograd.Function):
    """F.linear(F.layer_norm(x, (C,), gamma, beta, eps), W, b), plus `offset` in the columns from
    `offset_start` on, where W and b stack the weights and biases of `linears` = (w0, b0, w1, b1, ...)
    along the output features (biases all None or none None); saves x, mean, rstd and the weights
    themselves (the stacked copy is rebuilt in backward, a few C x C values)."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, offset, offset_start, *linears):
        weights, biases = linears[0::2], linears[1::2]
        with torch.autocast(device_type=x.device.type, enabled=False):
            normed, mean, rstd = torch.ops.aten.native_layer_norm(x, [x.shape[-1]], gamma, beta, eps)
        ctx.compute_dtype = dtype = _compute_dtype(x)
        ctx.save_for_backward(x, gamma, beta, mean, rstd, *weights)
        ctx.has_bias = biases[0] is not None
        bias = _stacked(biases, dtype) if ctx.has_bias else None
        out = F.linear(normed.to(dtype), _stacked(weights, dtype), bias)
        ctx.offset_shape = None if offset is None else offset.shape
        ctx.offset_start = offset_start
        if offset is not None:
            out[..., offset_start : offset_start + offset.shape[-1]] += offset
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, gamma, beta, mean, rstd, *weights = ctx.saved_tensors
        dtype = ctx.compute_dtype
        grad = grad.to(dtype)
        grad_2d = grad.reshape(-1, grad.shape[-1])
        normed = rebuilt_norm(x, mean, rstd, gamma, beta)  # (B, N, C), one fresh buffer
        grad_weight = grad_2d.t() @ normed.reshape(-1, normed.shape[-1]).to(dtype)  # stacked: (sum out, C)
        del normed
        grad_bias = grad_2d.sum(dim=0) if ctx.has_bias else None
        grad_normed = (grad @ _stacked(weights, dtype)).to(x.dtype)
        mask = [ctx.needs_input_grad[0], gamma is not None and ctx.needs_input_grad[1], beta is not None]
        grad_x, grad_gamma, grad_beta = torch.ops.aten.native_layer_norm_backward(
            grad_normed, x, [x.shape[-1]], mean, rstd, gamma, beta, mask
        )
        grad_offset = None
        if ctx.offset_shape is not None and ctx.needs_input_grad[4]:
            start, width = ctx.offset_start, ctx.offset_shape[-1]
            grad_offset = grad[..., start : start + width].sum_to_size(ctx.offset_shape)
        grad_beta = grad_beta if ctx.needs_input_grad[2] else None
        sizes = [w.shape[0] for w in weights]
        grad_biases = [None] * len(weights) if grad_bias is None else grad_bias.split(sizes)
        grad_linears = []
        for w, grad_w, grad_b in zip(weights, grad_weight.split(sizes), grad_biases, strict=True):
            grad_linears += [grad_w.to(w.dtype), None if grad_b is None else grad_b.to(w.dtype)]
        return grad_x, grad_gamma, grad_beta, None, grad_offset, None, *grad_linears


def _stacked(tensors: tuple[Tensor, ...] | list[Tensor], dtype: torch.dtype) -> Tensor:
    """Weights (or biases) of several linears along the output features; one linear's, uncopied."""
    return tensors[0].to(dtype) if len(tensors) == 1 else torch.cat([t.to(dtype) for t in tensors])


def layer_norm_linear(
    x: Tensor,
    norm: nn.LayerNorm,
    *linears: nn.Linear,
    offset: Tensor | None = None,
    offset_start: int = 0,
) -> Tensor:
    """torch.cat([linear(norm(x)) for linear in linears], -1) for x (..., C), storing x instead of
    norm(x); `offset` (broadcastable to (..., w)) is added to output columns offset_start .. + w.

    Several linears of one normalised input run as one GEMM, and the LayerNorm runs once in each
    direction (PVT's q and kv)."""
    biases = [linear.bias for linear in linears]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        raise ValueError("layer_norm_linear: either every linear has a bias or none has")
    params = [p for linear in linears for p in (linear.weight, linear.bias)]
    return LayerNormLinear.apply(x, norm.weight, norm.bias, norm.eps, offset, offset_start, *params)
