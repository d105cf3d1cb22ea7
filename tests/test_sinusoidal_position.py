"""position_encoding="sinusoidal": a fixed 2-D sine/cosine table, exact at any grid, never resized."""

from __future__ import annotations

import math

import pytest
import torch

import flatten_dense.models.layers.position_encoding as position_encoding
from flatten_dense.models import create_backbone
from flatten_dense.models.layers import FocusedLinearAttention
from flatten_dense.models.layers.position_encoding import sinusoidal_position_table

GRIDS = [(7, 7), (14, 20), (56, 33)]


def _formula(i: int, channel: int, dim: int) -> float:
    """PE(i, 2j) = sin(i / 10000^(2j/d)), PE(i, 2j+1) = cos(i / 10000^(2j/d)), written out."""
    j = channel // 2
    angle = i / 10000 ** (2 * j / dim)
    return math.sin(angle) if channel % 2 == 0 else math.cos(angle)


@pytest.mark.parametrize("grid", GRIDS)
def test_table_is_the_formula_at_every_grid(grid: tuple[int, int]) -> None:
    channels = 24
    half = channels // 2
    table = sinusoidal_position_table(grid, channels, dtype=torch.float64)
    assert table.shape == (1, grid[0] * grid[1], channels)
    expected = torch.tensor(
        [
            [_formula(r, c, half) for c in range(half)] + [_formula(col, c, half) for c in range(half)]
            for r in range(grid[0])
            for col in range(grid[1])
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(table[0], expected, rtol=0, atol=1e-12)


def test_a_larger_grid_holds_the_smaller_one_unchanged() -> None:
    """Each token's code depends on its own row and column: nothing is interpolated between sizes."""
    big = sinusoidal_position_table((56, 33), 32).reshape(56, 33, 32)
    for grid in GRIDS[:2]:
        small = sinusoidal_position_table(grid, 32).reshape(*grid, 32)
        assert torch.equal(big[: grid[0], : grid[1]], small)


def test_odd_channel_counts_give_the_row_the_extra_channel() -> None:
    table = sinusoidal_position_table((3, 4), 7, dtype=torch.float64).reshape(3, 4, 7)
    assert torch.equal(table[:, 0, :4], table[:, 3, :4])  # rows: channels 0-3, same along a row
    assert torch.equal(table[0, :, 4:], table[2, :, 4:])  # columns: channels 4-6, same down a column


def _no_resize(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a sinusoidal table must never be resized")

    monkeypatch.setattr(position_encoding, "resize_position_table", refuse)
    monkeypatch.setattr(position_encoding.PositionTableResizer, "__call__", refuse)


@pytest.mark.parametrize("grid", GRIDS)
def test_layer_adds_the_table_without_parameters_or_resizing(grid, monkeypatch) -> None:
    _no_resize(monkeypatch)
    torch.manual_seed(0)
    layer = FocusedLinearAttention(32, 2, num_keys=49, fused_qkv=True, position_encoding="sinusoidal")
    assert layer.positional_encoding is None and "positional_encoding" not in dict(layer.named_parameters())
    torch.testing.assert_close(layer.key_position(grid), sinusoidal_position_table(grid, 32))
    x = torch.randn(2, grid[0] * grid[1], 32)
    out = layer(x, grid)
    assert out.shape == x.shape and torch.isfinite(out).all()
    monkeypatch.undo()  # the learned layer below does resize its table
    learned = FocusedLinearAttention(32, 2, num_keys=49, fused_qkv=True)
    learned.load_state_dict(layer.state_dict(), strict=False)
    assert not torch.allclose(learned(x, grid), out)  # the table does change the keys


def test_position_encoding_values_are_checked() -> None:
    with pytest.raises(ValueError, match="position_encoding"):
        FocusedLinearAttention(32, 2, num_keys=49, fused_qkv=True, position_encoding="rope")
    without = FocusedLinearAttention(32, 2, num_keys=49, fused_qkv=True, position_encoding=False)
    assert without.position_encoding == "none" and without.key_position((7, 7)) is None


FAMILIES = ["flatten_swin_t", "flatten_pvt_t", "flatten_pvt_v2_b0", "flatten_cswin_t"]


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_runs_sinusoidal_at_detection_like_sizes_without_tables(name, monkeypatch) -> None:
    from flatten_dense.models import list_models

    if name not in list_models():
        pytest.skip(f"{name} is not registered")
    torch.manual_seed(0)
    model = create_backbone(name, position_encoding="sinusoidal", depths=(1, 1, 1, 1)).eval()  # one block a stage
    tables = [n for n, _ in model.named_parameters() if "positional_encoding" in n or "pos_embed" in n]
    assert tables == []
    _no_resize(monkeypatch)
    with torch.no_grad():
        for height, width in ((96, 160), (128, 96)):
            maps = model(torch.rand(1, 3, height, width))
            assert [tuple(m.shape[-2:]) for m in maps] == [(height // s, width // s) for s in (4, 8, 16, 32)]
