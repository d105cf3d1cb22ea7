"""The depthwise conv's backward (used inside the attention function) against aten's and plain autograd."""

import pytest
import torch
import torch.nn.functional as F

from flatten_dense.models.layers.autograd import depthwise_conv
from flatten_dense.models.layers.autograd.depthwise_conv import depthwise_conv_backward, depthwise_weight_grad


def _inputs(kernel: int | tuple[int, int] = 3):
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 4, 5, 12, generator=generator, dtype=torch.float64)  # B H W 3C
    dense = tokens[..., 8:].permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)  # v maps
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    weight = torch.randn(4, 1, kh, kw, generator=generator, dtype=torch.float64)
    bias = torch.randn(4, generator=generator, dtype=torch.float64)
    return dense, weight, bias


# (kernel, padding): "same" convs as the attention's DWC uses (5 x 5: the weight gradient is a conv
# with the output gradient as kernel; 3 x 3: aten's), one that shrinks the map and a non-square one.
SHAPES = [(3, (1, 1)), (5, (2, 2)), (5, (1, 2)), ((5, 3), (2, 1))]


@pytest.mark.parametrize(("kernel", "padding"), [*SHAPES, ((3, 5), (1, 2)), (3, (0, 1))])
def test_weight_grad_as_a_conv_equals_aten(kernel, padding):
    dense, weight, _ = _inputs(kernel)
    grad = torch.randn_like(F.conv2d(dense, weight, padding=padding, groups=4))
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
    dense, weight, _ = _inputs(kernel)
    grad = torch.randn_like(F.conv2d(dense, weight, padding=(1, 1), groups=4))
    depthwise_conv_backward(grad, dense, weight, (1, 1), (True, True, True))
    assert bool(calls) == uses_conv


@pytest.mark.parametrize(("kernel", "padding"), SHAPES)
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, True)])
def test_gradients_equal_plain_autograd(kernel, padding, needs):
    dense, weight, bias = (t.requires_grad_() for t in _inputs(kernel))
    out = F.conv2d(dense, weight, bias, padding=padding, groups=4)
    grad = torch.randn_like(out)
    expected = torch.autograd.grad(out, (dense, weight, bias), grad)
    got = depthwise_conv_backward(grad, dense.detach(), weight.detach(), padding, needs)
    for need, a, b in zip(needs, got, expected, strict=True):
        if need:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        else:
            assert a is None
