"""Position-table resizing: the matrix form equals torch's bicubic interpolation, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from flatten_dense.models.layers.position_encoding import (
    PositionTableResizer,
    resize_position_table,
)

GRID_PAIRS = [((56, 56), (256, 256)), ((7, 7), (32, 32)), ((14, 14), (9, 5)), ((56, 56), (20, 33)), ((3, 3), (1, 1))]


def _torch_bicubic(table: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    grid = table.reshape(1, *src, -1).permute(0, 3, 1, 2)
    return F.interpolate(grid, size=dst, mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)


@pytest.mark.parametrize(("src", "dst"), GRID_PAIRS)
def test_resize_equals_torch_bicubic(src: tuple[int, int], dst: tuple[int, int]) -> None:
    torch.manual_seed(0)
    table = torch.randn(1, src[0] * src[1], 8, requires_grad=True)
    ours = resize_position_table(table, src, dst)
    reference = _torch_bicubic(table, src, dst)
    assert ours.shape == (1, dst[0] * dst[1], 8)
    torch.testing.assert_close(ours, reference, rtol=0, atol=2e-5)
    upstream = torch.randn_like(reference)
    (ours_grad,) = torch.autograd.grad(ours, table, upstream)
    (reference_grad,) = torch.autograd.grad(reference, table, upstream)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=0, atol=1e-4)


@pytest.mark.parametrize("update", ["in_place", "through_data"])
def test_resizer_cache_follows_the_table_values(update: str) -> None:
    resizer = PositionTableResizer()
    table = torch.nn.Parameter(torch.randn(1, 16, 4))
    with torch.no_grad():
        first = resizer(table, (8, 8))
        assert resizer(table, (8, 8)) is first  # cached in inference
        if update == "in_place":
            table.add_(1.0)  # an optimiser step or a loaded checkpoint
        else:
            table.data.add_(1.0)  # a write the version counter does not see
        updated = resizer(table, (8, 8))
    assert updated is not first
    torch.testing.assert_close(updated, resize_position_table(table.detach(), (4, 4), (8, 8)))
    trained = resizer(table, (8, 8))  # with autograd: recomputed so gradients reach the table
    assert trained.requires_grad


def test_resizer_recomputes_off_the_cpu_without_caching() -> None:
    """Off the CPU (here the meta device) the resize is recomputed: comparing a cached copy would sync."""
    resizer = PositionTableResizer()
    table = torch.nn.Parameter(torch.randn(1, 16, 4, device="meta"))
    with torch.no_grad():
        resized = resizer(table, (8, 8))
    assert resized.shape == (1, 64, 4) and resized.device.type == "meta"
    assert not resizer._cache


def test_weights_first_built_in_inference_mode_serve_autograd_later() -> None:
    table = torch.nn.Parameter(torch.randn(1, 9, 4))
    with torch.inference_mode():
        resize_position_table(table, (3, 3), (11, 13))  # sizes no other test uses: built here first
    resize_position_table(table, (3, 3), (11, 13)).sum().backward()
    assert table.grad is not None and torch.isfinite(table.grad).all()


def test_resizer_takes_a_stripe_table_of_any_shape() -> None:
    """CSWin's tables are learned on stripes (e.g. 96 x 56 for the 384 model): not square."""
    torch.manual_seed(0)
    table = torch.randn(1, 12 * 7, 4)
    with torch.no_grad():
        resized = PositionTableResizer()(table, (20, 9), (12, 7))
    torch.testing.assert_close(resized, _torch_bicubic(table, (12, 7), (20, 9)), rtol=0, atol=2e-5)


def test_resizer_keeps_only_a_few_grids() -> None:
    from flatten_dense.models.layers.position_encoding import MAX_CACHED_GRIDS

    resizer = PositionTableResizer()
    table = torch.randn(1, 49, 4)
    with torch.no_grad():
        for side in range(8, 8 + 3 * MAX_CACHED_GRIDS):
            resizer(table, (side, side))
    [(_, grids)] = resizer._cache.values()
    assert len(grids) == MAX_CACHED_GRIDS
