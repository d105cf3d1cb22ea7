"""fc2(GELU(fc1(LayerNorm(x)))) in token chunks, against plain autograd (float64, and bf16 autocast)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

from flatten_dense.models.layers.autograd import layer_norm_mlp, mlp
from flatten_dense.models.layers.autograd.layer_norm_mlp import LayerNormMlp


def _layers(dtype=torch.float64, bias=True):
    torch.manual_seed(0)
    norm, fc1, fc2 = nn.LayerNorm(6).to(dtype), nn.Linear(6, 12, bias=bias).to(dtype), nn.Linear(12, 5).to(dtype)
    with torch.no_grad():  # not the identity initialisation: gamma and beta take part
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 7, 6, dtype=dtype, requires_grad=True)
    return x, norm, fc1, fc2


def _plain(x, norm, fc1, fc2):
    return fc2(F.gelu(fc1(norm(x))))


def _params(x, norm, fc1, fc2):
    return [x, norm.weight, norm.bias, *fc1.parameters(), *fc2.parameters()]


def test_gradcheck(monkeypatch):
    monkeypatch.setattr(mlp, "CHUNK_ELEMENTS", 4 * 12)  # 4 rows per chunk: 14 rows -> 4, 4, 4, 2
    x, norm, fc1, fc2 = _layers()
    inputs = (x, norm.weight, norm.bias, norm.eps, fc1.weight, fc1.bias, fc2.weight, fc2.bias)
    assert gradcheck(LayerNormMlp.apply, inputs)


@pytest.mark.parametrize("chunk_rows", [1, 3, 14, 100])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_plain_autograd_and_stores_x_and_h_only(monkeypatch, chunk_rows, bias):
    monkeypatch.setattr(mlp, "CHUNK_ELEMENTS", chunk_rows * 12)
    x, norm, fc1, fc2 = _layers(bias=bias)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer_norm_mlp(x, norm, fc1, fc2)
    big = sorted(t.numel() for t in saved if t.numel() >= x.numel())
    assert big == [x.numel(), 14 * 12]  # x (2 x 7 x 6) and h (14 rows x 12): nothing else N-sized
    ref = _plain(x, norm, fc1, fc2)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    params = _params(x, norm, fc1, fc2)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_autocast_bf16_matches_plain():
    x, norm, fc1, fc2 = _layers(torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer_norm_mlp(x, norm, fc1, fc2)
        ref = _plain(x, norm, fc1, fc2)
    assert out.dtype == ref.dtype == torch.bfloat16
    params = _params(x, norm, fc1, fc2)
    grad = torch.ones_like(out)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad), strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-2)
