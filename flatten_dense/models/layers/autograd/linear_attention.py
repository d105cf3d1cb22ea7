"""Linear-attention products and normaliser with a hand-written backward, and the full focused form.

Plain equations (per head, kernelised q, k of shape (N, d), v (N, d), n real keys):
    kv = k^T v / n            (d x d)       m = sum(k) / n      (1 x d)
    z  = 1 / (q m^T + eps)    (N x 1)       out = (q kv) * z
Backward, for the output gradient g (N x d), with G = g kv^T:
    g.(q kv) = sum(G * q)  ->  ds = -sum(G * q) * z^2        (the normaliser's input gradient)
    dq = z G + ds m;   dkv = q^T (g z);   dm = ds^T q;   dk = (v dkv^T + dm) / n;   dv = k dkv / n
so only q, k, v, kv, m and z (N x 1) are stored: never q kv, its product with z, or their copies.

`focused_linear_attention` also applies the focused kernel to the raw projections and adds
FLatten's depthwise conv of v: it stores the projections and rebuilds phi(q), phi(k) and the
conv's input in backward (see focused_kernel.py and depthwise_conv.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..focusing import focused_kernel
from .depthwise_conv import depthwise_conv_backward, map_tokens, token_maps
from .focused_kernel import focused_kernel_vjp, focused_kernel_without_grad
from .mlp import row_chunks

__all__ = [
    "FocusedLinearAttentionFunction",
    "LinearAttention",
    "focused_linear_attention",
    "linear_attention",
    "plain_focused_linear_attention",
]

NORMALISER_EPS = 1e-6


def _forward(q: Tensor, k: Tensor, v: Tensor, num_valid: Tensor | float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, k, v (B, h, N, d) -> out (B, h, N, d), kv (B, h, d, d), m (B, h, 1, d), z (B, h, N, 1)."""
    kv = (k.transpose(-2, -1) @ v).div_(num_valid)
    k_mean = k.sum(dim=2, keepdim=True).div_(num_valid)
    z = (q @ k_mean.transpose(-2, -1)).add_(NORMALISER_EPS).reciprocal_()
    return (q @ kv).mul_(z), kv, k_mean, z


def _backward(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, kv: Tensor, k_mean: Tensor, z: Tensor, num_valid: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of sum(grad * out), from the stored pieces (see the module docstring)."""
    g_kv = grad @ kv.transpose(-2, -1)  # B h N d
    d_s = (g_kv * q).sum(dim=-1, keepdim=True).mul_(z).mul_(z).neg_()  # B h N 1
    grad_q = torch.addcmul(g_kv.mul_(z), d_s, k_mean)  # z G + ds m
    d_kv = q.transpose(-2, -1) @ (grad * z)  # B h d d
    d_mean = d_s.transpose(-2, -1) @ q  # B h 1 d
    grad_k = (v @ d_kv.transpose(-2, -1)).add_(d_mean).div_(num_valid)
    grad_v = (k @ d_kv).div_(num_valid)
    return grad_q, grad_k, grad_v


class LinearAttention(torch.autograd.Function):
    """(q kv) * z of kernelised q, k (B, h, N, d); `num_valid` an int/float or a (B, 1, 1, 1) tensor."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, num_valid: Tensor | float) -> Tensor:
        out, kv, k_mean, z = _forward(q, k, v, num_valid)
        ctx.save_for_backward(q, k, v, kv, k_mean, z, num_valid if isinstance(num_valid, Tensor) else None)
        ctx.num_valid = num_valid if not isinstance(num_valid, Tensor) else None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q, k, v, kv, k_mean, z, num_tensor = ctx.saved_tensors
        num_valid = num_tensor if num_tensor is not None else ctx.num_valid
        return (*_backward(grad, q, k, v, kv, k_mean, z, num_valid), None)


def linear_attention(q: Tensor, k: Tensor, v: Tensor, num_valid: Tensor | float) -> Tensor:
    """`focused_linear_attention.linear_attention_heads` with the backward above."""
    return LinearAttention.apply(q, k, v, float(num_valid) if isinstance(num_valid, int) else num_valid)


def _heads(x: Tensor, heads: int) -> Tensor:
    batch, tokens, channels = x.shape
    return x.view(batch, tokens, heads, channels // heads).transpose(1, 2)  # B h N d (a view)


def _kernels(
    q: Tensor | None,
    k: Tensor,
    v: Tensor,
    scale: Tensor,
    focusing_factor: float,
    keep: Tensor | None,
    kernel: Callable[[Tensor, Tensor, float], Tensor] = focused_kernel_without_grad,
) -> tuple[Tensor | None, Tensor, Tensor]:
    """phi(q) (None for q None), phi(k) and v, with padded keys/values (keep == 0) zeroed. All (B, N, C).

    The default kernel (for inside a Function, where autograd is off) builds each in one fresh
    buffer; the plain reference passes `focused_kernel`."""
    q_phi = None if q is None else kernel(q, scale, focusing_factor)
    k_phi = kernel(k, scale, focusing_factor)
    if keep is not None:
        k_phi, v = k_phi * keep, v * keep
    return q_phi, k_phi, v


def _tokens(x: Tensor) -> Tensor:
    """(B, h, T, d) per-head rows -> (B, T, C), heads side by side."""
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


def _split(qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(B, N, 3C) -> q, k, v (B, N, C): views."""
    q, k, v = qkv.unflatten(-1, (3, qkv.shape[-1] // 3)).unbind(-2)
    return q, k, v


def _value_maps(v: Tensor, keep: Tensor | None, grid: tuple[int, int]) -> Tensor:
    """The DWC input v * keep (B, N, C) as dense channels-last maps (B, C, H, W)."""
    return token_maps(v if keep is None else v * keep, grid)


class FocusedLinearAttentionFunction(torch.autograd.Function):
    """phi(q) (phi(k)^T v / n) / (phi(q) . mean phi(k) + eps) [+ DWC(v)] from the packed raw
    projections qkv (B, N, 3C), q | k | v side by side as the projection GEMM writes them.

    Saves qkv, kv, m and z; phi(q), phi(k) and the DWC input are rebuilt in backward, and the
    kernel chain's gradient is written out (`focused_kernel_vjp`) instead of taped again. Both
    directions walk the tokens in chunks (the products are sums over tokens, the rest is row-wise):
    every kernel, product and gradient temporary is one small chunk the allocator reuses. Forward
    adds the attention into the DWC's output buffer; backward writes the q, k and v gradients into
    one (B, N, 3C) buffer, the DWC's input gradient added into v's part. Plain autograd of the same
    (q, k, v views of the GEMM output and a separate conv) stacks three N x C gradients into a
    fresh 3 N C buffer and adds the two gradients of v: on a 2-core VM 5-9% of a 1024 x 1024
    training step, most of it first touches of fresh pages.
    """

    @staticmethod
    def forward(ctx, qkv, scale, dwc_weight, dwc_bias, heads, focusing_factor, keep, num_valid, grid, padding):
        q, k, v = _split(qkv)
        batch, tokens, channels = q.shape
        head_dim = channels // heads
        chunks = row_chunks(tokens, channels)
        kv = q.new_zeros(batch, heads, head_dim, head_dim)
        k_sum = q.new_zeros(batch, heads, 1, head_dim)
        for part in chunks:  # pass 1: kv = sum phi(k)^T v, m = sum phi(k)
            keep_c = None if keep is None else keep[:, part]
            _, k_phi, v_c = _kernels(None, k[:, part], v[:, part], scale, focusing_factor, keep_c)
            k_heads = _heads(k_phi, heads)
            kv.add_(k_heads.transpose(-2, -1) @ _heads(v_c, heads))
            k_sum.add_(k_heads.sum(dim=2, keepdim=True))
        kv.div_(num_valid)
        k_mean = k_sum.div_(num_valid)
        if dwc_weight is None:
            out = q.new_empty(batch, tokens, channels)
        else:  # the DWC's output (B, N, C) is the buffer the attention is added into
            conv = F.conv2d(_value_maps(v, keep, grid), dwc_weight, dwc_bias, padding=padding, groups=channels)
            out = map_tokens(conv)
        z = q.new_empty(batch, heads, tokens, 1)
        for part in chunks:  # pass 2: out (+)= (phi(q) kv) z, z = 1 / (phi(q) . m + eps)
            q_heads = _heads(focused_kernel_without_grad(q[:, part], scale, focusing_factor), heads)
            z_c = (q_heads @ k_mean.transpose(-2, -1)).add_(NORMALISER_EPS).reciprocal_()
            z[:, :, part] = z_c
            attended = _tokens((q_heads @ kv).mul_(z_c))
            if dwc_weight is None:
                out[:, part] = attended
            else:
                out[:, part] += attended
        num_tensor = num_valid if isinstance(num_valid, Tensor) else None
        ctx.save_for_backward(qkv, scale, dwc_weight, keep, kv, k_mean, z, num_tensor)
        ctx.num_valid = None if num_tensor is not None else num_valid
        ctx.heads, ctx.focusing_factor, ctx.grid, ctx.padding = heads, focusing_factor, grid, padding
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        """The module docstring's equations, per chunk: the q side first (it gives d kv and d m,
        sums over all tokens), then the k, v side; then the DWC's gradients."""
        qkv, scale, dwc_weight, keep, kv, k_mean, z, num_tensor = ctx.saved_tensors
        num_valid = num_tensor if num_tensor is not None else ctx.num_valid
        heads, focusing_factor = ctx.heads, ctx.focusing_factor
        q, k, v = _split(qkv)
        batch, tokens, channels = q.shape
        head_dim = channels // heads
        chunks = row_chunks(tokens, channels)
        grad = grad.contiguous()
        grad_qkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
        grad_q, grad_k, grad_v = _split(grad_qkv)
        grad_scale = torch.zeros_like(scale)
        d_kv = q.new_zeros(batch, heads, head_dim, head_dim)
        d_mean = q.new_zeros(batch, heads, 1, head_dim)
        for part in chunks:
            q_c = q[:, part]
            q_heads = _heads(focused_kernel_without_grad(q_c, scale, focusing_factor), heads)
            g = _heads(grad[:, part], heads)
            z_c = z[:, :, part]
            g_kv = g @ kv.transpose(-2, -1)  # G = g kv^T: B h T d
            d_s = (g_kv * q_heads).sum(dim=-1, keepdim=True).mul_(z_c).mul_(z_c).neg_()  # B h T 1
            grad_q_phi = torch.addcmul(g_kv.mul_(z_c), d_s, k_mean)  # z G + ds m
            d_kv.add_(q_heads.transpose(-2, -1) @ (g * z_c))
            d_mean.add_(d_s.transpose(-2, -1) @ q_heads)
            grad_q[:, part], grad_scale_c = focused_kernel_vjp(q_c, scale, focusing_factor, _tokens(grad_q_phi))
            grad_scale += grad_scale_c
        for part in chunks:
            keep_c = None if keep is None else keep[:, part]
            k_c = k[:, part]
            _, k_phi, v_c = _kernels(None, k_c, v[:, part], scale, focusing_factor, keep_c)
            grad_k_phi = _tokens((_heads(v_c, heads) @ d_kv.transpose(-2, -1)).add_(d_mean).div_(num_valid))
            grad_v_c = _tokens((_heads(k_phi, heads) @ d_kv).div_(num_valid))
            if keep_c is not None:  # phi(k) * keep and v * keep
                grad_k_phi, grad_v_c = grad_k_phi * keep_c, grad_v_c * keep_c
            grad_k[:, part], grad_scale_c = focused_kernel_vjp(k_c, scale, focusing_factor, grad_k_phi)
            grad_v[:, part] = grad_v_c
            grad_scale += grad_scale_c
        grad_weight = grad_bias = None
        if dwc_weight is not None:
            grad_maps = grad.view(batch, *ctx.grid, channels).permute(0, 3, 1, 2)  # channels-last, no copy
            needs = (True, ctx.needs_input_grad[2], ctx.needs_input_grad[3])  # False for a None bias
            grad_x, grad_weight, grad_bias = depthwise_conv_backward(
                grad_maps, _value_maps(v, keep, ctx.grid), dwc_weight, ctx.padding, needs
            )
            grad_v_local = map_tokens(grad_x)
            grad_v += grad_v_local if keep is None else grad_v_local * keep
        return grad_qkv, grad_scale, grad_weight, grad_bias, None, None, None, None, None, None


def focused_linear_attention(
    qkv: Tensor,
    scale: Tensor,
    heads: int,
    focusing_factor: float,
    keep: Tensor | None = None,
    num_valid: Tensor | float | None = None,
    *,
    dwc: tuple[Tensor, Tensor | None, tuple[int, int], tuple[int, int]] | None = None,
) -> Tensor:
    """Focused linear attention of the raw projections qkv (B, N, 3C) -> (B, N, C), plus the DWC of v.

    `keep` (B, N, 1): 1 for real tokens, 0 for padding (their keys and values are dropped, and the
    DWC sees zeros there); `num_valid`: the number of real keys (default N). `dwc`: (weight
    (C, 1, kh, kw), bias (C,) or None, grid (H, W) with H W = N, padding) of the depthwise conv of
    v added to the output, or None. The plain form is `plain_focused_linear_attention`.
    """
    if num_valid is None:
        num_valid = float(qkv.shape[1])
    elif isinstance(num_valid, int):
        num_valid = float(num_valid)
    weight = bias = grid = padding = None
    if dwc is not None:
        weight, bias, grid, padding = dwc[0], dwc[1], tuple(dwc[2]), tuple(dwc[3])
    return FocusedLinearAttentionFunction.apply(
        qkv, scale, weight, bias, heads, focusing_factor, keep, num_valid, grid, padding
    )


def plain_focused_linear_attention(
    qkv, scale, heads: int, focusing_factor: float, keep=None, num_valid=None, *, dwc=None
):
    """The same with plain autograd (the reference the tests compare against)."""
    from ..focused_linear_attention import linear_attention_heads

    q, k, v = qkv.chunk(3, dim=-1)
    num_valid = float(q.shape[1]) if num_valid is None else num_valid
    q_phi, k_phi, v_kept = _kernels(q, k, v, scale, focusing_factor, keep, focused_kernel)
    out = linear_attention_heads(_heads(q_phi, heads), _heads(k_phi, heads), _heads(v_kept, heads), num_valid)
    out = out.transpose(1, 2).reshape(q.shape)
    if dwc is None:
        return out
    weight, bias, grid, padding = dwc
    local = F.conv2d(token_maps(v_kept, grid), weight, bias, padding=padding, groups=v.shape[-1])
    return out + map_tokens(local)
