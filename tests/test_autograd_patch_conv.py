"""The non-overlapping patch conv with a GEMM weight gradient, against plain autograd of F.conv2d."""

import pytest
import torch
import torch.nn.functional as F
from autograd_graph import graph_node_names
from torch.autograd import gradcheck

from flatten_dense.models.layers.autograd import patch_conv
from flatten_dense.models.layers.autograd.patch_conv import patch_rows
from flatten_dense.models.layers.fast_layers import FastPatchEmbed, set_fast_layers
from flatten_dense.models.layers.patch_embed import PatchEmbed


def _inputs(kernel: int | tuple[int, int], *, channels_last: bool, bias: bool):
    generator = torch.Generator().manual_seed(0)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = torch.randn(2, 3, 2 * kh, 3 * kw, generator=generator, dtype=torch.float64)  # B Cin H W, not square
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(5, 3, kh, kw, generator=generator, dtype=torch.float64)
    b = torch.randn(5, generator=generator, dtype=torch.float64) if bias else None
    return [t.requires_grad_() if t is not None else None for t in (x, weight, b)]


CASES = [(2, True, True), (4, False, True), (2, False, False), ((2, 4), True, True)]  # kernel, channels-last, bias


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
    ref = F.conv2d(x, weight, b, stride=weight.shape[-2:])
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


def test_weight_gradient_of_an_input_without_grad():  # the stem: the image needs no gradient
    x, weight, b = _inputs(2, channels_last=True, bias=True)
    out = patch_conv(x.detach(), weight, b)
    (grad_weight,) = torch.autograd.grad(out.sum(), (weight,))
    (ref,) = torch.autograd.grad(F.conv2d(x.detach(), weight, b, stride=2).sum(), (weight,))
    torch.testing.assert_close(grad_weight, ref)


@pytest.mark.parametrize("channels_last", [True, False])
def test_fast_patch_embed_equals_its_parent_with_padding(channels_last):
    """A map that is no multiple of the stride (30 x 45, stride 4: padded) and, as in later stages,
    a channels-last view of tokens: outputs and every gradient equal PatchEmbed's."""
    torch.manual_seed(0)
    plain = PatchEmbed(3, 8, kernel=4, stride=4).double()
    fast = set_fast_layers(PatchEmbed(3, 8, kernel=4, stride=4).double(), True)
    fast.load_state_dict(plain.state_dict())
    assert type(fast) is FastPatchEmbed
    tokens = torch.randn(2, 30 * 45, 3, dtype=torch.float64, requires_grad=True)
    x = tokens.view(2, 30, 45, 3).permute(0, 3, 1, 2)  # B C H W, channels-last strides
    if not channels_last:
        x = x.contiguous()
    (out, grid), (ref, ref_grid) = fast(x), plain(x)
    assert grid == ref_grid == (8, 12)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    params = [tokens, *plain.parameters()]
    fast_grads = torch.autograd.grad(out, [tokens, *fast.parameters()], grad)
    for a, r in zip(fast_grads, torch.autograd.grad(ref, params, grad), strict=True):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_patch_conv_runs_for_non_overlapping_embeddings_only():
    x = torch.randn(1, 3, 32, 32, requires_grad=True)
    non_overlapping = set_fast_layers(PatchEmbed(3, 8, kernel=4, stride=4), True)
    assert "PatchConvBackward" in graph_node_names(non_overlapping(x)[0])
    overlapping = set_fast_layers(PatchEmbed(3, 8, kernel=7, stride=4, padding=3), True)
    assert type(overlapping) is FastPatchEmbed and not overlapping.pad_to_stride
    nodes = graph_node_names(overlapping(x)[0])
    assert "PatchConvBackward" not in nodes and "ConvolutionBackward0" in nodes
