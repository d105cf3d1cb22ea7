"""fc2(GELU(h)) with GELU recomputed, against plain autograd (float64, and bf16 autocast)."""

import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from flatten_dense.models.layers.autograd import gelu_linear


def _inputs(dtype=torch.float64):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 8, generator=generator, dtype=dtype, requires_grad=True)
    weight = torch.randn(4, 8, generator=generator, dtype=dtype, requires_grad=True)
    bias = torch.randn(4, generator=generator, dtype=dtype, requires_grad=True)
    return hidden, weight, bias


def test_gradcheck():
    assert gradcheck(gelu_linear, _inputs())


def test_equals_plain_autograd_and_stores_hidden_only():
    inputs = _inputs()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = gelu_linear(*inputs)
    assert sum(t.numel() for t in saved) == inputs[0].numel() + inputs[1].numel()
    ref = F.linear(F.gelu(inputs[0]), inputs[1], inputs[2])
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_autocast_bf16_matches_plain():
    inputs = [t.detach().float().requires_grad_() for t in _inputs()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = gelu_linear(*inputs)
        ref = F.linear(F.gelu(inputs[0]), inputs[1], inputs[2])
    assert out.dtype == ref.dtype == torch.bfloat16
    grad = torch.ones_like(out)
    got = torch.autograd.grad(out, inputs, grad)
    expected = torch.autograd.grad(ref, inputs, grad)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)


def test_token_chunks_give_the_same_result(monkeypatch):
    """Rows split over several chunks (and a ragged last one) compute what one chunk does."""
    from flatten_dense.models.layers.autograd import mlp

    inputs = _inputs()
    grad = torch.randn(2, 5, 4, dtype=torch.float64)
    whole = gelu_linear(*inputs)
    whole_grads = torch.autograd.grad(whole, inputs, grad)
    monkeypatch.setattr(mlp, "CHUNK_ELEMENTS", 3 * 8)  # 3 rows of 8 per chunk: 10 rows -> 3, 3, 3, 1
    assert [(p.start, p.stop) for p in mlp.row_chunks(10, 8)] == [(0, 3), (3, 6), (6, 9), (9, 12)]
    chunked = gelu_linear(*inputs)
    torch.testing.assert_close(chunked, whole, rtol=1e-14, atol=1e-14)
    for a, b in zip(torch.autograd.grad(chunked, inputs, grad), whole_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
