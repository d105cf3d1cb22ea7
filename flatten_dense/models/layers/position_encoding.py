"""Resizing of learned position tables stored for one token grid to another grid.

The released models store position encodings for the 224 x 224 token grid; dense prediction
runs on other grids. Tables are resized with bicubic interpolation; in inference (no autograd)
the result is cached per grid, keyed on the parameter's version so an update invalidates it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["resize_position_table", "square_grid", "PositionTableResizer"]


def square_grid(num_tokens: int) -> tuple[int, int]:
    """The (h, w) grid of a square table of `num_tokens` entries."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"position table of {num_tokens} tokens is not a square grid")
    return side, side


def resize_position_table(table: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]) -> Tensor:
    """(1, h*w, C) table on `src_grid` -> (1, H*W, C) on `dst_grid` (bicubic, no corner alignment)."""
    if tuple(src_grid) == tuple(dst_grid):
        return table
    _, _, channels = table.shape
    grid = table.reshape(1, src_grid[0], src_grid[1], channels).permute(0, 3, 1, 2)  # 1 C h w
    grid = F.interpolate(grid.float(), size=tuple(dst_grid), mode="bicubic", align_corners=False)
    return grid.to(table.dtype).flatten(2).transpose(1, 2)  # 1 HW C


class PositionTableResizer:
    """Resizes one module's learned table to requested grids, caching results in inference.

    A plain object (not a module) so the table stays a direct parameter of its owner and keeps
    the released checkpoints' key names. During training the resize is recomputed every call
    so gradients reach the table.
    """

    def __init__(self) -> None:
        # (table identity, device, dtype) -> (table version, {grid: resized table})
        self._cache: dict[tuple, tuple[int, dict[tuple[int, int], Tensor]]] = {}

    def __call__(self, table: Tensor, dst_grid: tuple[int, int]) -> Tensor:  # -> (1, H*W, C)
        src_grid = square_grid(table.shape[1])
        dst_grid = (int(dst_grid[0]), int(dst_grid[1]))
        if src_grid == dst_grid:
            return table
        if (torch.is_grad_enabled() and table.requires_grad) or torch.compiler.is_compiling():
            # Under torch.compile the resize is part of the graph (a Python cache would break it).
            return resize_position_table(table, src_grid, dst_grid)
        # One resizer may serve several tables (PVT's per-stage pos_embed): cache per table, and
        # drop a table's entries when its version changes (an optimiser step or a loaded checkpoint).
        key = (table.data_ptr(), table.device, table.dtype)
        version, grids = self._cache.get(key, (-1, {}))
        if version != table._version:
            grids = {}
            self._cache[key] = (table._version, grids)
        cached = grids.get(dst_grid)
        if cached is None:
            cached = resize_position_table(table.detach(), src_grid, dst_grid)
            grids[dst_grid] = cached
        return cached
