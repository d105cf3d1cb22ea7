"""linear(LayerNorm(x)) with the normalised tokens rebuilt in backward, against plain autograd."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

from flatten_dense.models.layers.autograd import layer_norm_linear
from flatten_dense.models.layers.autograd.layer_norm_linear import LayerNormLinear


def _layers(dtype=torch.float64):
    torch.manual_seed(0)
    norm, linear = nn.LayerNorm(6).to(dtype), nn.Linear(6, 9).to(dtype)
    with torch.no_grad():  # not the identity initialisation: gamma and beta take part
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 5, 6, dtype=dtype, requires_grad=True)
    offset = torch.randn(1, 5, 3, dtype=dtype, requires_grad=True)
    return x, norm, linear, offset


def _plain(x, norm, linear, offset=None, start=0):
    out = linear(norm(x))
    if offset is None:
        return out
    pad = (start, out.shape[-1] - start - offset.shape[-1])
    return out + F.pad(offset, pad)


def test_gradcheck_with_an_offset():
    x, norm, linear, offset = _layers()
    inputs = (x, norm.weight, norm.bias, norm.eps, offset, 3, linear.weight, linear.bias)
    assert gradcheck(LayerNormLinear.apply, inputs)


@pytest.mark.parametrize("start", [None, 0, 3, 6])
def test_equals_plain_autograd_and_stores_x_not_its_norm(start):
    x, norm, linear, offset = _layers()
    offset = None if start is None else offset
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer_norm_linear(x, norm, linear, offset=offset, offset_start=start or 0)
    stored = {t.untyped_storage().data_ptr() for t in saved if t.numel() >= x.numel()}
    assert stored == {x.untyped_storage().data_ptr()}  # no N x C tensor besides x itself
    ref = _plain(x, norm, linear, offset, start or 0)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    params = [x, norm.weight, norm.bias, linear.weight, linear.bias] + ([] if offset is None else [offset])
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_autocast_bf16_matches_plain():
    x, norm, linear, _ = (t.float() if isinstance(t, torch.Tensor) else t.float() for t in _layers())
    x = x.detach().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer_norm_linear(x, norm, linear)
        ref = linear(norm(x))
    assert out.dtype == ref.dtype == torch.bfloat16
    params = [x, norm.weight, linear.weight]
    got = torch.autograd.grad(out.float().sum(), params)
    expected = torch.autograd.grad(ref.float().sum(), params)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=3e-2, atol=3e-2)


def test_two_linears_run_as_one_and_store_their_own_weights():
    """PVT's q and kv: one GEMM over the stacked weights, each layer's own gradients, no stacked copy stored."""
    x, norm, q, offset = _layers()
    kv = nn.Linear(6, 12).to(torch.float64)
    inputs = (x, norm.weight, norm.bias, norm.eps, offset, 9, q.weight, q.bias, kv.weight, kv.bias)
    assert gradcheck(LayerNormLinear.apply, inputs)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer_norm_linear(x, norm, q, kv, offset=offset, offset_start=9)
    weights = {t.data_ptr() for t in saved if t.dim() == 2 and t.shape[-1] == 6}
    assert weights == {q.weight.data_ptr(), kv.weight.data_ptr()}
    ref = torch.cat([q(norm(x)), kv(norm(x))], dim=-1) + F.pad(offset, (9, 9))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    params = [x, norm.weight, norm.bias, q.weight, q.bias, kv.weight, kv.bias, offset]
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_mixed_biases_are_refused():
    x, norm, linear, _ = _layers()
    with pytest.raises(ValueError, match="bias"):
        layer_norm_linear(x, norm, linear, nn.Linear(6, 3, bias=False).to(torch.float64))
