"""fc2(GELU(h)) storing h only, in token chunks: no hidden-width buffer is ever made whole.

Plain autograd keeps both h (for GELU's backward) and GELU(h) (for fc2's weight gradient); the
hidden width is 4-8 x C, so this saves the largest activation of every MLP for one extra GELU.
Forward and backward also run over chunks of tokens: GELU(h), its gradient and fc2's input
gradient exist one chunk at a time (a few MiB the allocator reuses), never as N x 4C tensors
(96 MiB each in Swin-T's first stage at 1024 x 1024) that the allocator maps fresh and the kernel
zeroes page by page, the cost that dominated the plain backward on CPU.
Plain equations, per chunk of rows (h_c, g_c):
    out_c = GELU(h_c) W^T + b;  dW = sum_c g_c^T GELU(h_c);  db = sum(g);  dh_c = GELU'(h_c) * (g_c W)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .layer_norm_linear import _compute_dtype

__all__ = ["CHUNK_ELEMENTS", "GeluLinear", "gelu_linear", "linear_into", "row_chunks"]

CHUNK_ELEMENTS = 1 << 20  # hidden elements per chunk (4 MiB in float32): fits the allocator's reuse


def row_chunks(rows: int, width: int) -> list[slice]:
    """Consecutive row ranges of about CHUNK_ELEMENTS values each, for rows `width` values wide."""
    step = max(1, CHUNK_ELEMENTS // width)
    return [slice(start, start + step) for start in range(0, rows, step)]


def linear_into(out: Tensor, x: Tensor, weight_t: Tensor, bias: Tensor | None) -> None:
    """out = x weight_t (+ bias), written into `out` (a row slice of a larger buffer)."""
    if bias is None:
        torch.mm(x, weight_t, out=out)
    else:
        torch.addmm(bias, x, weight_t, out=out)


class GeluLinear(torch.autograd.Function):
    """F.linear(F.gelu(h), weight, bias) (exact GELU); saves h and weight."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(hidden, weight)
        ctx.has_bias = bias is not None
        ctx.compute_dtype = dtype = _compute_dtype(hidden)
        width = hidden.shape[-1]
        rows = hidden.reshape(-1, width)
        weight_t = weight.to(dtype).t()
        bias = None if bias is None else bias.to(dtype)
        out = rows.new_empty(rows.shape[0], weight.shape[0], dtype=dtype)
        for part in row_chunks(rows.shape[0], width):
            linear_into(out[part], F.gelu(rows[part]).to(dtype), weight_t, bias)
        return out.view(*hidden.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        hidden, weight = ctx.saved_tensors
        dtype = ctx.compute_dtype
        width = hidden.shape[-1]
        rows = hidden.reshape(-1, width)
        grad_rows = grad.to(dtype).reshape(-1, grad.shape[-1])
        weight_c = weight.to(dtype)
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(rows) if need_hidden else None
        grad_weight = weight_c.new_zeros(weight.shape) if need_weight else None
        for part in row_chunks(rows.shape[0], width):
            chunk, grad_chunk = rows[part], grad_rows[part]
            if need_weight:
                # GELU(h_c), recomputed; addmm(out=) so that FLOP counters see it (they skip addmm_)
                torch.addmm(grad_weight, grad_chunk.t(), F.gelu(chunk).to(dtype), out=grad_weight)
            if need_hidden:
                grad_act = (grad_chunk @ weight_c).to(hidden.dtype)
                torch.ops.aten.gelu_backward.grad_input(grad_act, chunk, grad_input=grad_hidden[part])
        grad_bias = grad_rows.sum(dim=0).to(weight.dtype) if ctx.has_bias and ctx.needs_input_grad[2] else None
        if grad_hidden is not None:
            grad_hidden = grad_hidden.view(hidden.shape)
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, grad_bias


def gelu_linear(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear(F.gelu(hidden), weight, bias), storing `hidden` only."""
    return GeluLinear.apply(hidden, weight, bias)
