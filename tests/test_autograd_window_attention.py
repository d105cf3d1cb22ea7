"""Windowed softmax attention storing q, k, v and the log-sum-exp, against plain autograd (float64)."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

import flatten_dense as fd
from flatten_dense.models.layers.autograd import window_softmax_attention
from flatten_dense.models.layers.autograd.window_attention import WindowSoftmaxAttention
from flatten_dense.models.layers.fast_layers import FastWindowAttention
from flatten_dense.models.layers.window_attention import MASK_VALUE

HEADS, TOKENS, HEAD_DIM, WINDOWS, IMAGES = 2, 9, 4, 3, 2  # 3 x 3 windows, 3 per image, 2 images


def _inputs(with_mask: bool):
    torch.manual_seed(0)
    qkv = torch.randn(IMAGES * WINDOWS, TOKENS, 3 * HEADS * HEAD_DIM, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(HEADS, TOKENS, TOKENS, dtype=torch.float64, requires_grad=True)
    mask = None
    if with_mask:  # some pairs masked as a shift or padding does it; every query keeps itself
        mask = (torch.rand(WINDOWS, TOKENS, TOKENS) < 0.3).double() * MASK_VALUE
        mask.diagonal(dim1=-2, dim2=-1).zero_()
    return qkv, bias, mask


def _plain(qkv, bias, mask, scale):
    """SDPA with the bias (and mask) as attn_mask, heads side by side: what WindowAttention computes."""
    q, k, v = qkv.view(IMAGES * WINDOWS, TOKENS, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4).unbind(0)
    full = bias.unsqueeze(0).expand(IMAGES * WINDOWS, -1, -1, -1)
    if mask is not None:
        full = full + mask.repeat(IMAGES, 1, 1).unsqueeze(1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=full, scale=scale)
    return out.transpose(1, 2).reshape(IMAGES * WINDOWS, TOKENS, HEADS * HEAD_DIM)


@pytest.mark.parametrize("with_mask", [False, True])
def test_gradcheck(with_mask):
    qkv, bias, mask = _inputs(with_mask)
    assert gradcheck(lambda a, b: WindowSoftmaxAttention.apply(a, b, mask, HEADS, 0.5), (qkv, bias))


@pytest.mark.parametrize("with_mask", [False, True])
def test_equals_plain_autograd_and_stores_no_attention_matrix(with_mask):
    qkv, bias, mask = _inputs(with_mask)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = window_softmax_attention(qkv, bias, mask, heads=HEADS, scale=0.5)
    matrix = IMAGES * WINDOWS * HEADS * TOKENS * TOKENS
    assert all(t.numel() < matrix for t in saved if t.untyped_storage().data_ptr() != qkv.untyped_storage().data_ptr())
    ref = _plain(qkv, bias, mask, 0.5)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    for a, b in zip(
        torch.autograd.grad(out, (qkv, bias), grad), torch.autograd.grad(ref, (qkv, bias), grad), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_swin_softmax_blocks_take_the_path_only_where_it_applies():
    """CPU training: the fast softmax windows run; eval, no-grad, autocast and the plain layers don't."""
    model = fd.create_backbone("flatten_swin_t", embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
    calls = []
    attentions = [m for m in model.modules() if isinstance(m, FastWindowAttention)]
    assert len(attentions) == 3  # the softmax stages' blocks
    for attention in attentions:
        attention.register_forward_hook(lambda *_: calls.append("module"))  # the unfused path calls the module
    images = torch.randn(1, 3, 64, 96)
    model.train()
    model(images)
    assert calls == []  # norm1 fused: attend_projected, never the module call
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(images)
        assert not attentions[0].stores_less(images)
    assert len(calls) == 3
    with torch.no_grad():
        assert not attentions[0].stores_less(images)
