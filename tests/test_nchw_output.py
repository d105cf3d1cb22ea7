"""Channels-last stage maps emitted as contiguous NCHW: the blocked CPU path equals norm + copy."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flatten_dense.models.layers.nchw_output import to_nchw


def _channels_last_map(batch: int, channels: int, height: int, width: int) -> torch.Tensor:
    tokens = torch.randn(batch, height * width, channels)  # how the stages hold a map
    return tokens.view(batch, height, width, channels).permute(0, 3, 1, 2)


@pytest.mark.parametrize("with_norm", [True, False])
@pytest.mark.parametrize(("batch", "channels", "height", "width"), [(2, 64, 67, 71), (1, 320, 9, 5), (1, 3, 1, 1)])
def test_blocked_output_equals_norm_then_copy(
    with_norm: bool, batch: int, channels: int, height: int, width: int
) -> None:
    torch.manual_seed(0)
    feature = _channels_last_map(batch, channels, height, width)
    norm = nn.LayerNorm(channels) if with_norm else None
    if norm is not None:
        nn.init.normal_(norm.weight)
        nn.init.normal_(norm.bias)
    expected = feature if norm is None else norm(feature.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = to_nchw(feature, norm)
    assert out.is_contiguous() and out.shape == feature.shape
    torch.testing.assert_close(out, expected.detach(), rtol=0, atol=0)


def test_autograd_and_nchw_inputs_take_the_plain_path() -> None:
    norm = nn.LayerNorm(8)
    feature = _channels_last_map(1, 8, 5, 6).requires_grad_()
    out = to_nchw(feature, norm)
    out.sum().backward()
    assert out.is_contiguous() and feature.grad is not None
    nchw = torch.randn(1, 8, 5, 6)  # already contiguous NCHW: no token view to block over
    with torch.no_grad():
        torch.testing.assert_close(to_nchw(nchw, norm), norm(nchw.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
