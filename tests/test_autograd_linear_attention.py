"""Linear-attention autograd functions against plain autograd of the equations (float64)."""

import pytest
import torch
from torch.autograd import gradcheck

from flatten_dense.models.layers.autograd import focused_linear_attention, linear_attention, mlp
from flatten_dense.models.layers.autograd.linear_attention import plain_focused_linear_attention
from flatten_dense.models.layers.focused_linear_attention import linear_attention_heads


def _rand(*shape, seed=0, positive=False):
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (t.abs() + 0.1 if positive else t).requires_grad_()


@pytest.mark.parametrize("per_batch_count", [False, True])
def test_linear_attention_gradcheck(per_batch_count):
    q, k = _rand(2, 2, 5, 3, seed=0, positive=True), _rand(2, 2, 5, 3, seed=1, positive=True)
    v = _rand(2, 2, 5, 3, seed=2)
    n = torch.tensor([5.0, 4.0], dtype=torch.float64).reshape(2, 1, 1, 1) if per_batch_count else 5
    assert gradcheck(lambda a, b, c: linear_attention(a, b, c, n), (q, k, v))
    torch.testing.assert_close(linear_attention(q, k, v, n), linear_attention_heads(q, k, v, n))


def _projections(seed=0, tokens=6, channels=6):
    """Packed raw projections q | k | v (2, tokens, 3 channels) and the kernel scale (1, 1, channels)."""
    qkv = _rand(2, tokens, 3 * channels, seed=seed)
    scale = (0.3 * _rand(1, 1, channels, seed=seed + 3)).detach().requires_grad_()
    return qkv, scale


def _dwc(channels, grid, kernel=3, seed=20):
    """(weight, bias, grid, padding) of a "same" depthwise conv over `channels`."""
    weight = _rand(channels, 1, kernel, kernel, seed=seed)
    bias = _rand(channels, seed=seed + 1)
    return weight, bias, grid, (kernel // 2, kernel // 2)


def _padding_mask(tokens, padded_from):
    keep = torch.ones(2, tokens, 1, dtype=torch.float64)
    keep[1, padded_from:] = 0
    return keep, keep.sum(dim=1).reshape(2, 1, 1, 1)


@pytest.mark.parametrize("heads", [1, 2])
def test_focused_linear_attention_gradcheck(heads):
    qkv, scale = _projections()
    assert gradcheck(lambda *t: focused_linear_attention(*t, heads, 3.0), (qkv, scale))


def test_focused_linear_attention_with_padding_gradcheck():
    qkv, scale = _projections(seed=4)
    keep, num_valid = _padding_mask(6, 4)
    assert gradcheck(lambda *t: focused_linear_attention(*t, 2, 3.0, keep, num_valid), (qkv, scale))


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("padded", [False, True])
def test_focused_linear_attention_with_dwc_gradcheck(kernel, padded):
    """The DWC of v inside the function: gradients of qkv, the scale and the conv's weight and bias.
    (5 x 5 takes the conv-as-weight-gradient path of depthwise_conv.py.)"""
    qkv, scale = _projections(seed=6, tokens=6)
    weight, bias, grid, padding = _dwc(6, (2, 3), kernel)
    keep, num_valid = _padding_mask(6, 4) if padded else (None, None)

    def attend(qkv, scale, weight, bias):
        return focused_linear_attention(qkv, scale, 2, 3.0, keep, num_valid, dwc=(weight, bias, grid, padding))

    assert gradcheck(attend, (qkv, scale, weight, bias))


def test_focused_linear_attention_in_token_chunks_gradcheck(monkeypatch):
    monkeypatch.setattr(mlp, "CHUNK_ELEMENTS", 4 * 6)  # 6 tokens of 6 channels: chunks of 4 and 2
    qkv, scale = _projections(seed=5)
    keep = torch.ones(2, 6, 1, dtype=torch.float64)
    keep[0, 3:] = 0  # padding across the chunk border
    num_valid = keep.sum(dim=1).reshape(2, 1, 1, 1)
    weight, bias, grid, padding = _dwc(6, (3, 2))

    def attend(qkv, scale, weight, bias):
        return focused_linear_attention(qkv, scale, 2, 3.0, keep, num_valid, dwc=(weight, bias, grid, padding))

    assert gradcheck(attend, (qkv, scale, weight, bias))


@pytest.mark.parametrize("with_dwc", [False, True], ids=["attention", "attention_dwc"])
@pytest.mark.parametrize("chunk_tokens", [None, 1, 4])
@pytest.mark.parametrize("padded", [False, True])
def test_focused_linear_attention_equals_plain_autograd(monkeypatch, padded, chunk_tokens, with_dwc):
    """In one token chunk and in several (4 + 4 + 1: a ragged last one; 1 token each)."""
    if chunk_tokens is not None:
        monkeypatch.setattr(mlp, "CHUNK_ELEMENTS", chunk_tokens * 8)
    qkv, scale = _projections(seed=8, tokens=9, channels=8)
    keep, num_valid = _padding_mask(9, 7) if padded else (None, None)
    dwc = _dwc(8, (3, 3), kernel=5) if with_dwc else None
    grad = torch.randn(2, 9, 8, dtype=torch.float64)
    inputs = (qkv, scale) if dwc is None else (qkv, scale, dwc[0], dwc[1])
    out = focused_linear_attention(qkv, scale, 2, 3.0, keep, num_valid, dwc=dwc)
    ref = plain_focused_linear_attention(qkv, scale, 2, 3.0, keep, num_valid, dwc=dwc)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(out, inputs, grad)
    expected = torch.autograd.grad(ref, inputs, grad)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_stores_the_projections_and_small_pieces_only():
    """With the DWC too: qkv is the one large tensor kept (the conv's input is rebuilt from it)."""
    qkv, scale = _projections(seed=12, tokens=64, channels=8)
    dwc = _dwc(8, (8, 8))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        focused_linear_attention(qkv, scale, 2, 3.0, dwc=dwc)
    big = [t for t in saved if t.numel() >= qkv.numel() // 3]
    assert len(big) == 1 and big[0] is qkv  # kv, the key mean and the (B, h, N, 1) normaliser are small
    assert sum(t.numel() for t in saved) < 1.2 * qkv.numel()
