"""The fused CPU inference linear equals F.linear and the ops it fuses, and is taken only where it should be."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatten_dense.models.layers.fused_linear import (
    fused_linear,
    project_output,
    split_linear,
    uses_onednn,
)

needs_onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@pytest.fixture
def layer() -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(64, 96)


@needs_onednn
def test_onednn_path_only_for_cpu_float32_inference() -> None:
    x = torch.randn(2, 64)
    with torch.no_grad():
        assert uses_onednn(x)
        assert not uses_onednn(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not uses_onednn(x)
    assert not uses_onednn(x)  # autograd on


@pytest.mark.parametrize("grad", [False, True])
def test_fused_linear_equals_linear_gelu_and_residual(layer: nn.Linear, grad: bool) -> None:
    x = torch.randn(3, 5000, 64)[:, ::2]  # strided input
    residual = torch.randn(3, 2500, 96)
    plain = F.linear(x, layer.weight, layer.bias)
    with torch.set_grad_enabled(grad):
        assert torch.allclose(fused_linear(x, layer.weight, layer.bias), plain, atol=1e-5)
        assert torch.allclose(fused_linear(x, layer.weight, layer.bias, gelu=True), F.gelu(plain), atol=1e-5)
        assert torch.allclose(fused_linear(x, layer.weight, layer.bias, residual=residual), plain + residual, atol=1e-5)
        assert torch.allclose(fused_linear(x, layer.weight, None), F.linear(x, layer.weight), atol=1e-5)
    with pytest.raises(ValueError, match="either GELU or a residual"):
        fused_linear(x, layer.weight, layer.bias, gelu=True, residual=residual)


def test_project_output_adds_the_residual_after_dropout(layer: nn.Linear) -> None:
    proj = nn.Linear(96, 96)
    x, residual = torch.randn(2, 7, 96), torch.randn(2, 7, 96)
    drop = nn.Dropout(0.5).eval()
    with torch.no_grad():
        assert torch.allclose(project_output(proj, drop, x, residual), proj(x) + residual, atol=1e-5)
    drop.train()
    torch.manual_seed(3)
    got = project_output(proj, drop, x, residual)
    torch.manual_seed(3)
    assert torch.allclose(got, drop(proj(x)) + residual)


@pytest.mark.parametrize("grad", [False, True])
def test_split_linear_pieces(layer: nn.Linear, grad: bool) -> None:
    other = nn.Linear(64, 32, bias=False)
    x = torch.randn(2, 10, 64)
    with torch.set_grad_enabled(grad):
        pieces = split_linear(x, [layer, other], 32)
        separate_gemms = uses_onednn(x)
    expected = list(layer(x).split(32, dim=-1)) + [other(x)]
    assert len(pieces) == 4
    for got, want in zip(pieces, expected):
        assert torch.allclose(got, want, atol=1e-5)
    assert separate_gemms == (not grad and torch.backends.mkldnn.is_available())
    if separate_gemms:
        assert all(piece.is_contiguous() for piece in pieces)


@pytest.mark.parametrize("grad", [False, True])
def test_split_linear_adds_each_piece_its_residual(layer: nn.Linear, grad: bool) -> None:
    x = torch.randn(1, 10, 64)
    offset = torch.randn(1, 10, 32)
    with torch.set_grad_enabled(grad):
        pieces = split_linear(x, [layer], 32, residuals=[None, offset, None])
    expected = list(layer(x).split(32, dim=-1))
    expected[1] = expected[1] + offset
    for got, want in zip(pieces, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError):
        split_linear(x, [layer], 32, residuals=[None, offset])  # one residual per piece
