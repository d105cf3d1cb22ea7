"""Swin's windowed softmax attention storing q, k, v, not the attention matrix.

Plain autograd (SDPA's math path, which a position bias that needs a gradient forces on CPU) keeps
a scaled copy of q, a transposed copy of k, a copy of v and the softmax P: the (B*nW, h, N, N)
matrix is as large as q, k and v together for a 7 x 7 window. Here the one (B*nW, N, 3C) qkv
buffer is stored as it is; backward rebuilds P with one matmul and a softmax (flash attention's
recomputation, done per window, where it is small).
Plain equations, per window and head (q, k, v: N x d; bias: N x N; mask: N x N or 0):
    S = scale q k^T + bias + mask;  P = softmax(S);  O = P v
    dv = P^T dO;  dP = dO v^T;  dS = P * (dP - rowsum(P * dP));  dq = scale dS k;  dk = scale dS^T q
    dbias = dS summed over the windows of every image
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["WindowSoftmaxAttention", "window_softmax_attention"]


def _scores(q: Tensor, k: Tensor, scale: float, bias: Tensor, mask: Tensor | None) -> Tensor:
    """S = scale q k^T + bias + mask: (B*nW, h, N, N), built in one fresh buffer."""
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)
    windows, heads, tokens, _ = scores.shape
    per_image = scores.view(-1, 1 if mask is None else mask.shape[0], heads, tokens, tokens)
    per_image.add_(bias)  # bias: h N N
    if mask is not None:
        per_image.add_(mask.unsqueeze(1))  # mask: nW N N -> nW 1 N N
    return scores


def _heads(qkv: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B*nW, N, 3C) -> q, k, v (B*nW, h, N, d), views of the one buffer."""
    windows, tokens, channels3 = qkv.shape
    return qkv.view(windows, tokens, 3, heads, channels3 // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)


class WindowSoftmaxAttention(torch.autograd.Function):
    """softmax(scale q k^T + bias + mask) v for windows of tokens; saves qkv, bias and mask."""

    @staticmethod
    def forward(ctx, qkv: Tensor, bias: Tensor, mask: Tensor | None, heads: int, scale: float) -> Tensor:
        q, k, v = _heads(qkv, heads)
        out = torch.matmul(torch.softmax(_scores(q, k, scale, bias, mask), dim=-1), v)  # B*nW h N d
        ctx.save_for_backward(qkv, bias, mask)
        ctx.heads, ctx.scale = heads, scale
        windows, tokens, channels3 = qkv.shape
        return out.transpose(1, 2).reshape(windows, tokens, channels3 // 3)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        qkv, bias, mask = ctx.saved_tensors
        heads, scale = ctx.heads, ctx.scale
        q, k, v = (t.contiguous() for t in _heads(qkv, heads))  # each used twice: one copy, not two
        windows, tokens, channels = grad.shape
        grad_out = grad.view(windows, tokens, heads, channels // heads).transpose(1, 2).contiguous()  # B*nW h N d
        probabilities = torch.softmax(_scores(q, k, scale, bias, mask), dim=-1)  # P, rebuilt
        grad_qkv = grad.new_empty(windows, tokens, 3, heads, channels // heads)
        grad_q, grad_k, grad_v = grad_qkv.permute(2, 0, 3, 1, 4).unbind(0)  # views: B*nW h N d
        grad_v.copy_(torch.matmul(probabilities.transpose(-2, -1), grad_out))
        grad_p = torch.matmul(grad_out, v.transpose(-2, -1))
        grad_scores = torch.ops.aten._softmax_backward_data(grad_p, probabilities, -1, probabilities.dtype)  # dS
        del probabilities, grad_p
        grad_bias = None
        if ctx.needs_input_grad[1]:
            per_image = grad_scores.view(-1, 1 if mask is None else mask.shape[0], heads, tokens, tokens)
            grad_bias = per_image.sum(dim=(0, 1))
        grad_q.copy_(torch.matmul(grad_scores, k)).mul_(scale)
        grad_k.copy_(torch.matmul(grad_scores.transpose(-2, -1), q)).mul_(scale)
        return grad_qkv.view(windows, tokens, 3 * channels), grad_bias, None, None, None


def window_softmax_attention(qkv: Tensor, bias: Tensor, mask: Tensor | None, *, heads: int, scale: float) -> Tensor:
    """Attention of windows: qkv (B*nW, N, 3C), bias (h, N, N), mask (nW, N, N) additive or None
    -> (B*nW, N, C), heads side by side (what the output projection takes)."""
    return WindowSoftmaxAttention.apply(qkv, bias, mask, heads, scale)
