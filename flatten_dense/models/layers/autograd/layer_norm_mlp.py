"""fc2(GELU(fc1(LayerNorm(x)))) storing x and h = fc1(LayerNorm(x)) only, run over token chunks.

A transformer block's MLP, the widest part of it (hidden width 4-8 x C). Plain autograd keeps x,
LayerNorm(x), h and GELU(h), and its backward builds the hidden-width gradients GELU'(h) * (g W2)
as whole N x 4C tensors: at 1024 x 1024 each is 96 MiB in Swin-T's first stage, which glibc maps
fresh for every call and the kernel zeroes page by page (on the 2-core test VM that page work
took up to 2 s of system time in a 5 s PVT-T step). Here forward and backward walk the rows in chunks of
`mlp.CHUNK_ELEMENTS` hidden values: the normalised tokens, GELU(h) and every hidden-width gradient
live one small chunk at a time, which the allocator reuses; h is the one hidden-width tensor.
Plain equations, per chunk of rows (x_c, g_c):
    y_c = LN(x_c);  h_c = y_c W1^T + b1;  out_c = GELU(h_c) W2^T + b2
    dW2 += g_c^T GELU(h_c);  dh_c = GELU'(h_c) * (g_c W2);  dW1 += dh_c^T y_c;  db1 += sum(dh_c)
    (dx_c, dgamma, dbeta) += LN's backward of dh_c W1;  db2 = sum(g)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .layer_norm_linear import _compute_dtype, rebuilt_norm
from .mlp import linear_into, row_chunks

__all__ = ["LayerNormMlp", "layer_norm_mlp"]


class LayerNormMlp(torch.autograd.Function):
    """fc2(GELU(fc1(LayerNorm(x)))) for x (..., C); saves x, per-token mean and rstd, h, weights."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps, fc1_weight, fc1_bias, fc2_weight, fc2_bias):
        dtype = ctx.compute_dtype = _compute_dtype(x)
        channels, width = x.shape[-1], fc1_weight.shape[0]
        rows = x.reshape(-1, channels)
        hidden = rows.new_empty(rows.shape[0], width, dtype=dtype)
        out = rows.new_empty(rows.shape[0], fc2_weight.shape[0], dtype=dtype)
        mean, rstd = rows.new_empty(rows.shape[0], 1), rows.new_empty(rows.shape[0], 1)
        w1_t, w2_t = fc1_weight.to(dtype).t(), fc2_weight.to(dtype).t()
        b1 = None if fc1_bias is None else fc1_bias.to(dtype)
        b2 = None if fc2_bias is None else fc2_bias.to(dtype)
        for rows_c in row_chunks(rows.shape[0], width):
            with torch.autocast(device_type=x.device.type, enabled=False):
                normed, mean[rows_c], rstd[rows_c] = torch.ops.aten.native_layer_norm(
                    rows[rows_c], [channels], gamma, beta, eps
                )
            linear_into(hidden[rows_c], normed.to(dtype), w1_t, b1)
            linear_into(out[rows_c], F.gelu(hidden[rows_c]), w2_t, b2)
        ctx.save_for_backward(x, gamma, beta, mean, rstd, hidden, fc1_weight, fc2_weight)
        ctx.has_bias = (fc1_bias is not None, fc2_bias is not None)
        return out.view(*x.shape[:-1], fc2_weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, gamma, beta, mean, rstd, hidden, fc1_weight, fc2_weight = ctx.saved_tensors
        dtype = ctx.compute_dtype
        channels, width = x.shape[-1], hidden.shape[-1]
        rows = x.reshape(-1, channels)
        grad_rows = grad.to(dtype).reshape(-1, grad.shape[-1])
        w1, w2 = fc1_weight.to(dtype), fc2_weight.to(dtype)
        grad_x = torch.empty_like(rows)
        grad_w1, grad_w2 = torch.zeros_like(w1), torch.zeros_like(w2)
        grad_b1 = w1.new_zeros(width)
        grad_gamma = None if gamma is None else torch.zeros_like(gamma)
        grad_beta = None if beta is None else torch.zeros_like(beta)
        mask = [True, gamma is not None, beta is not None]
        for rows_c in row_chunks(rows.shape[0], width):
            h, g = hidden[rows_c], grad_rows[rows_c]
            # addmm(out=), not addmm_: torch's FLOP counter does not see addmm_. GELU(h_c) is recomputed.
            torch.addmm(grad_w2, g.t(), F.gelu(h), out=grad_w2)
            grad_h = g @ w2
            torch.ops.aten.gelu_backward.grad_input(grad_h, h, grad_input=grad_h)  # in place: GELU'(h) * (g W2)
            x_c, mean_c, rstd_c = rows[rows_c], mean[rows_c], rstd[rows_c]
            torch.addmm(grad_w1, grad_h.t(), rebuilt_norm(x_c, mean_c, rstd_c, gamma, beta).to(dtype), out=grad_w1)
            grad_b1 += grad_h.sum(dim=0)
            grad_normed = (grad_h @ w1).to(x.dtype)
            grad_x_c, grad_gamma_c, grad_beta_c = torch.ops.aten.native_layer_norm_backward(
                grad_normed, x_c, [channels], mean_c, rstd_c, gamma, beta, mask
            )
            grad_x[rows_c] = grad_x_c
            if grad_gamma is not None:
                grad_gamma += grad_gamma_c
            if grad_beta is not None:
                grad_beta += grad_beta_c
        has_b1, has_b2 = ctx.has_bias
        need = ctx.needs_input_grad
        return (
            grad_x.view(x.shape),
            _cast(grad_gamma, need[1]),
            _cast(grad_beta, need[2]),
            None,
            _cast(grad_w1, need[4], fc1_weight.dtype),
            _cast(grad_b1, has_b1 and need[5], fc1_weight.dtype),
            _cast(grad_w2, need[6], fc2_weight.dtype),
            _cast(grad_rows.sum(dim=0), has_b2 and need[7], fc2_weight.dtype),
        )


def _cast(grad: Tensor | None, needed: bool, dtype: torch.dtype | None = None) -> Tensor | None:
    if grad is None or not needed:
        return None
    return grad if dtype is None else grad.to(dtype)


def layer_norm_mlp(x: Tensor, norm: nn.LayerNorm, fc1: nn.Linear, fc2: nn.Linear) -> Tensor:
    """fc2(GELU(fc1(norm(x)))) for x (..., C), storing x and fc1's output only."""
    return LayerNormMlp.apply(x, norm.weight, norm.bias, norm.eps, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
