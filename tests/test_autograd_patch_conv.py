"""The non-overlapping patch conv with a GEMM weight gradient, against plain autograd of F.conv2d."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from flatten_dense.models.layers.autograd import patch_conv
from flatten_dense.models.layers.autograd.patch_conv import patch_rows


def _inputs(kernel: int, *, channels_last: bool, bias: bool):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 2 * kernel, 3 * kernel, generator=generator, dtype=torch.float64)  # B Cin H W, not square
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(5, 3, kernel, kernel, generator=generator, dtype=torch.float64)
    b = torch.randn(5, generator=generator, dtype=torch.float64) if bias else None
    return [t.requires_grad_() if t is not None else None for t in (x, weight, b)]


CASES = [(2, True, True), (4, False, True), (2, False, False)]  # kernel, channels-last input, bias


@pytest.mark.parametrize(("kernel", "channels_last", "bias"), CASES)
def test_gradcheck(kernel, channels_last, bias):
    x, weight, b = _inputs(kernel, channels_last=channels_last, bias=bias)
    assert gradcheck(lambda x, w: patch_conv(x, w, b), (x, weight))
    if b is not None:
        assert gradcheck(lambda b: patch_conv(x, weight, b), (b,))


@pytest.mark.parametrize(("kernel", "channels_last", "bias"), CASES)
def test_equals_plain_conv_and_its_gradients(kernel, channels_last, bias):
    x, weight, b = _inputs(kernel, channels_last=channels_last, bias=bias)
    out = patch_conv(x, weight, b)
    ref = F.conv2d(x, weight, b, stride=kernel)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    inputs = [t for t in (x, weight, b) if t is not None]
    for a, r in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_patch_rows_are_the_conv_as_a_linear_map():
    x, weight, b = _inputs(2, channels_last=False, bias=True)
    rows = patch_rows(x.detach(), (2, 2))  # B*Ho*Wo, kh*kw*Cin
    linear = rows @ weight.detach().permute(0, 2, 3, 1).reshape(5, -1).t() + b.detach()
    ref = F.conv2d(x.detach(), weight.detach(), b.detach(), stride=2).permute(0, 2, 3, 1).reshape(-1, 5)
    torch.testing.assert_close(linear, ref, rtol=1e-12, atol=1e-12)


def test_input_without_grad_gets_none():
    x, weight, b = _inputs(2, channels_last=True, bias=True)
    out = patch_conv(x.detach(), weight, b)
    (grad_weight,) = torch.autograd.grad(out.sum(), (weight,))
    (ref,) = torch.autograd.grad(F.conv2d(x.detach(), weight, b, stride=2).sum(), (weight,))
    torch.testing.assert_close(grad_weight, ref)
