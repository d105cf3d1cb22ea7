"""The depthwise conv that stores its strided input view, against plain autograd of F.conv2d."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from flatten_dense.models.layers.autograd import depthwise_conv, depthwise_conv_of_view
from flatten_dense.models.layers.autograd.depthwise_conv import depthwise_weight_grad


def _inputs(kernel: int | tuple[int, int] = 3):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 4, 5, 12, generator=generator, dtype=torch.float64, requires_grad=True)  # B H W 3C
    x = tokens[..., 8:].permute(0, 3, 1, 2)  # B C H W: the v slice of a qkv output, strided
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    weight = torch.randn(4, 1, kh, kw, generator=generator, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=generator, dtype=torch.float64, requires_grad=True)
    return tokens, x, weight, bias


# (kernel, padding): "same" convs as the attention's DWC uses (5 x 5: the weight gradient is a conv
# with the output gradient as kernel; 3 x 3: aten's), one that shrinks the map and a non-square one.
SHAPES = [(3, (1, 1)), (5, (2, 2)), (5, (1, 2)), ((5, 3), (2, 1))]


@pytest.mark.parametrize(("kernel", "padding"), [*SHAPES, ((3, 5), (1, 2)), (3, (0, 1))])
def test_weight_grad_as_a_conv_equals_aten(kernel, padding):
    _, x, weight, _ = _inputs(kernel)
    dense = x.detach().contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(F.conv2d(dense, weight.detach(), padding=padding, groups=4))
    ref = torch.ops.aten.convolution_backward(
        grad, dense, weight, None, [1, 1], list(padding), [1, 1], False, [0, 0], 4, [False, True, False]
    )[1]
    torch.testing.assert_close(depthwise_weight_grad(dense, grad, list(padding)), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("kernel", "uses_conv"), [(5, True), ((5, 3), False), (3, False)])
def test_conv_weight_gradient_only_for_kernels_of_25_taps(monkeypatch, kernel, uses_conv):
    calls = []

    def counted(*args):
        calls.append(args)
        return depthwise_weight_grad(*args)

    monkeypatch.setattr(depthwise_conv, "depthwise_weight_grad", counted)
    _, x, weight, bias = _inputs(kernel)
    depthwise_conv_of_view(x, weight, bias, (1, 1)).sum().backward()
    assert bool(calls) == uses_conv


@pytest.mark.parametrize(("kernel", "padding"), SHAPES)
def test_gradcheck(kernel, padding):
    _, x, weight, bias = _inputs(kernel)
    assert gradcheck(lambda x, w, b: depthwise_conv_of_view(x, w, b, padding), (x, weight, bias))


@pytest.mark.parametrize(("kernel", "padding"), SHAPES)
def test_gradients_equal_plain_autograd(kernel, padding):
    tokens, x, weight, bias = _inputs(kernel)
    out = depthwise_conv_of_view(x, weight, bias, padding)
    ref = F.conv2d(x, weight, bias, padding=padding, groups=4)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    inputs = (tokens, weight, bias)
    for a, b in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_equals_conv2d_and_stores_the_view_not_a_copy():
    tokens, x, weight, bias = _inputs()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = depthwise_conv_of_view(x, weight, bias, (1, 1))
    assert {t.untyped_storage().data_ptr() for t in saved if t.numel() > weight.numel()} == {
        tokens.untyped_storage().data_ptr()
    }
    ref = F.conv2d(x, weight, bias, padding=1, groups=4)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    inputs = (tokens, weight, bias)
    for a, b in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(ref, inputs, grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
