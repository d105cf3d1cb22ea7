"""The stage output's LayerNorm + NCHW transpose in token blocks (training), against plain autograd."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.autograd import gradcheck

from flatten_dense.models.layers.autograd import layer_norm_nchw
from flatten_dense.models.layers.autograd.layer_norm_nchw import LayerNormToNchw, layer_norm_to_nchw
from flatten_dense.models.layers.nchw_output import to_nchw


def _norm(channels: int, dtype: torch.dtype = torch.float64) -> nn.LayerNorm:
    norm = nn.LayerNorm(channels).to(dtype)
    with torch.no_grad():  # not the identity initialisation: gamma and beta take part
        norm.weight.normal_()
        norm.bias.normal_()
    return norm


def _plain(tokens: torch.Tensor, norm: nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    batch, _, channels = tokens.shape
    return norm(tokens).view(batch, *grid, channels).permute(0, 3, 1, 2).contiguous()


@pytest.fixture
def block_calls(monkeypatch) -> list[int]:
    """One entry per call of the blocked autograd function."""
    calls: list[int] = []
    real = LayerNormToNchw.apply
    monkeypatch.setattr(LayerNormToNchw, "apply", lambda *args: calls.append(1) or real(*args))
    return calls


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(layer_norm_nchw, "BLOCK_ELEMENTS", 40)  # several blocks, the last one short


def test_gradcheck(small_blocks):
    torch.manual_seed(0)
    norm = _norm(6)
    tokens = torch.randn(2, 15, 6, dtype=torch.float64, requires_grad=True)
    assert gradcheck(LayerNormToNchw.apply, (tokens, norm.weight, norm.bias, norm.eps))


@pytest.mark.parametrize(("channels", "grid"), [(6, (3, 5)), (64, (7, 9)), (3, (1, 1))])
def test_equals_plain_autograd_and_stores_no_normed_map(small_blocks, channels, grid):
    torch.manual_seed(0)
    norm = _norm(channels)
    tokens = torch.randn(2, grid[0] * grid[1], channels, dtype=torch.float64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = layer_norm_to_nchw(tokens, norm, grid)
    big = {t.untyped_storage().data_ptr() for t in saved if t.numel() >= tokens.numel()}
    assert big == {tokens.untyped_storage().data_ptr()}  # only the tokens themselves, not norm(tokens)
    ref = _plain(tokens, norm, grid)
    assert out.is_contiguous() and out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    params = [tokens, norm.weight, norm.bias]
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_expanded_gradient_of_a_mean_loss(small_blocks):
    """`out.mean().backward()` hands backward a stride-0 gradient: the blocks read it as any other."""
    torch.manual_seed(0)
    norm = _norm(8)
    tokens = torch.randn(2, 12, 8, dtype=torch.float64, requires_grad=True)
    got = torch.autograd.grad(layer_norm_to_nchw(tokens, norm, (3, 4)).mean(), tokens)[0]
    expected = torch.autograd.grad(_plain(tokens, norm, (3, 4)).mean(), tokens)[0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fast", [True, False])
def test_to_nchw_in_training_takes_the_blocks_only_on_the_fast_path(block_calls, fast):
    norm = _norm(5, torch.float32)
    tokens = torch.randn(1, 12, 5, requires_grad=True)
    feature = tokens.view(1, 3, 4, 5).permute(0, 3, 1, 2)  # channels-last, as the stages hold it
    out = to_nchw(feature, norm, fast=fast)
    out.square().sum().backward()
    assert len(block_calls) == int(fast)
    ref_tokens = tokens.detach().clone().requires_grad_()
    _plain(ref_tokens, norm, (3, 4)).square().sum().backward()
    torch.testing.assert_close(out, _plain(tokens.detach(), norm, (3, 4)))
    torch.testing.assert_close(tokens.grad, ref_tokens.grad)


@pytest.mark.parametrize(("affine", "frozen"), [(True, "norm"), (True, "tokens"), (False, "norm")])
def test_without_affine_or_with_a_frozen_part(small_blocks, affine, frozen):
    torch.manual_seed(0)
    norm = nn.LayerNorm(6, elementwise_affine=affine, bias=affine).to(torch.float64)
    tokens = torch.randn(2, 15, 6, dtype=torch.float64, requires_grad=frozen != "tokens")
    norm.requires_grad_(frozen != "norm")
    params = [p for p in (tokens, *norm.parameters()) if p.requires_grad]
    out = layer_norm_to_nchw(tokens, norm, (3, 5))
    ref = _plain(tokens, norm, (3, 5))
    grad = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["no_grad", "autocast", "nchw_input", "float32_norm_on_bf16"])
def test_to_nchw_keeps_the_plain_path_where_the_blocks_do_not_apply(block_calls, case):
    norm = _norm(5, torch.float32)
    tokens = torch.randn(1, 12, 5, requires_grad=True)
    feature = tokens.view(1, 3, 4, 5).permute(0, 3, 1, 2)
    if case == "nchw_input":
        feature = feature.contiguous()
    if case == "float32_norm_on_bf16":
        feature = feature.bfloat16()
    with torch.no_grad() if case == "no_grad" else torch.autocast("cpu", enabled=case == "autocast"):
        out = to_nchw(feature, norm, fast=True)
    assert block_calls == []
    expected = norm(feature.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, expected, atol=1e-2 if case != "no_grad" else 1e-6, rtol=1e-2)
    if out.requires_grad:
        out.float().sum().backward()  # the plain path's backward (bf16 map, float32 norm) runs
