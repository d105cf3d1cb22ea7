"""Resizing of learned position tables stored for one token grid to another grid.

The released models store position encodings for the 224 x 224 token grid; dense prediction
runs on other grids. Tables are resized with bicubic interpolation; in CPU inference (no autograd)
the result is cached for the last few grids and dropped as soon as the table's values change.

The resize is written as two small matrix products, `rows @ table @ cols.T`, with the weights
`F.interpolate(mode="bicubic", align_corners=False)` uses: the same numbers (to float rounding),
but its backward is two GEMMs instead of a scatter. On CPU, forward + backward is 3.5-6x cheaper
than `F.interpolate`'s (56x56x64 -> 128x128: 4.3 vs 15.5 ms); under torch.compile, whose scatter-add
lowering of that backward took half of a PVT-T training step, it is what makes compiling pay.

`sinusoidal_position_table` is the resolution-free alternative (`position_encoding="sinusoidal"`
in every family): a fixed 2-D sine/cosine code built for whatever grid a layer sees, with no
parameters and nothing to resize. Prefer it when training from scratch at detection or
segmentation sizes: a learned table is tied to one grid and is interpolated to a new one at
almost every image, so its entries never mean the same position twice. Keep "learned" (the
default) to load the released ImageNet checkpoints, whose tables were learned; a file with
learned tables does not load into a sinusoidal model (its table keys are unexpected).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict

import torch
from torch import Tensor

__all__ = [
    "POSITION_ENCODINGS",
    "PositionTableResizer",
    "bicubic_weights",
    "position_encoding_kind",
    "resize_position_table",
    "sinusoidal_position_table",
    "square_grid",
]

MAX_CACHED_GRIDS = 4  # resized copies kept per table (inference): a few recent image sizes
MAX_CACHED_TABLES = 8  # tables per resizer (PVT's stages share one; a moved table is a new one)
_CUBIC_A = -0.75  # the cubic convolution coefficient torch (and OpenCV) use
SINUSOID_BASE = 10000.0
# what a model's position tables are: learned and resized (the released models), fixed sine/cosine
# tables built for each grid, or none at all (ablations: only the convolutions see positions)
POSITION_ENCODINGS = ("learned", "sinusoidal", "none")


def position_encoding_kind(value: bool | str) -> str:
    """One of POSITION_ENCODINGS; True / False are accepted for "learned" / "none"."""
    kind = {True: "learned", False: "none"}.get(value, value) if isinstance(value, bool) else value
    if kind not in POSITION_ENCODINGS:
        raise ValueError(f"position_encoding must be one of {', '.join(POSITION_ENCODINGS)}, got {value!r}")
    return kind


def sinusoidal_position_table(
    grid: tuple[int, int], channels: int, *, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """(1, H*W, C) fixed 2-D sine/cosine table: the first C/2 channels encode the row, the rest the column.

    Per axis, with d channels (C/2) and position i (the row or column index):
    PE(i, 2j) = sin(i / 10000^(2j/d)), PE(i, 2j+1) = cos(i / 10000^(2j/d)). Built for the grid it is
    asked for (no resize): a token's code depends on its own row and column only, so the table of a
    larger grid holds the smaller one as its top-left corner. No parameters.
    """
    height, width = int(grid[0]), int(grid[1])
    row_channels = channels - channels // 2  # an odd C gives the row one channel more

    def axis_table(length: int, dim: int) -> Tensor:  # (length, dim)
        position = torch.arange(length, dtype=torch.float64)[:, None]
        pair = torch.arange(dim, dtype=torch.float64) // 2  # j of channels 2j and 2j + 1
        angle = position / SINUSOID_BASE ** (2 * pair / max(dim, 1))
        return torch.where(torch.arange(dim) % 2 == 0, angle.sin(), angle.cos())

    # per-axis tables in float64 on the CPU (small), the full table built in `dtype` on `device`
    rows = axis_table(height, row_channels).to(device=device, dtype=dtype)
    cols = axis_table(width, channels // 2).to(device=device, dtype=dtype)
    table = torch.cat(
        [rows[:, None, :].expand(height, width, row_channels), cols[None, :, :].expand(height, width, channels // 2)],
        dim=-1,
    )
    return table.reshape(1, height * width, channels)


def square_grid(num_tokens: int) -> tuple[int, int]:
    """The (h, w) grid of a square table of `num_tokens` entries."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"position table of {num_tokens} tokens is not a square grid")
    return side, side


def bicubic_weights(src: int, dst: int, *, device: torch.device | None = None) -> Tensor:
    """(dst, src) float32 matrix resampling one axis as `F.interpolate(mode="bicubic", align_corners=False)`.

    Output i samples source coordinate (i + 0.5) * src / dst - 0.5 with four cubic-convolution taps
    at floor - 1 .. floor + 2; taps beyond the border are clamped onto the edge sample (so their
    weights add up there). Built on the CPU (in float64, which not every device has), then moved.
    """
    coord = (torch.arange(dst, dtype=torch.float32) + 0.5) * (src / dst) - 0.5  # float32 as torch
    floor = coord.floor()
    t = (coord - floor).double()  # (dst,) in [0, 1)
    a = _CUBIC_A
    distance = torch.stack([t + 1, t, 1 - t, 2 - t], dim=1)  # dst 4: distance of each tap
    near = ((a + 2) * distance - (a + 3)) * distance * distance + 1  # |d| <= 1
    far = ((a * distance - 5 * a) * distance + 8 * a) * distance - 4 * a  # 1 < |d| < 2
    taps = torch.cat([far[:, :1], near[:, 1:3], far[:, 3:]], dim=1)  # dst 4
    index = (floor.long()[:, None] + torch.arange(-1, 3)).clamp(0, src - 1)  # dst 4
    weights = torch.zeros(dst, src, dtype=torch.float64).scatter_add_(1, index, taps)
    return weights.to(device=device, dtype=torch.float32)


@functools.lru_cache(maxsize=64)
def _cached_bicubic_weights(src: int, dst: int, *, device: torch.device | None = None) -> Tensor:
    with torch.inference_mode(False):  # a normal tensor, usable by autograd later even if first built in inference
        return bicubic_weights(src, dst, device=device)


def resize_position_table(
    table: Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int], *, always: bool = False
) -> Tensor:
    """(1, h*w, C) table on `src_grid` -> (1, H*W, C) on `dst_grid` (bicubic, no corner alignment).

    `always` resizes even onto the same grid (identity weights): no test of possibly symbolic sizes.
    """
    if not always and tuple(src_grid) == tuple(dst_grid):
        return table
    (h, w), (out_h, out_w) = src_grid, dst_grid
    # Eager calls reuse the matrices (a fresh copy to a GPU would wait for it); a compiled graph
    # builds them itself (dynamo traces through, not into, a Python cache).
    weights = bicubic_weights if torch.compiler.is_compiling() else _cached_bicubic_weights
    rows = weights(h, out_h, device=table.device)  # H h
    cols = weights(w, out_w, device=table.device)  # W w
    grid = table.float().reshape(h, w, -1)  # h w C
    grid = torch.einsum("Hh,hwc->Hwc", rows, grid)  # H w C
    grid = torch.einsum("Ww,Hwc->HWc", cols, grid)  # H W C
    return grid.to(table.dtype).reshape(1, out_h * out_w, -1)  # 1 HW C


class PositionTableResizer:
    """Resizes one module's learned table to requested grids, caching results in inference.

    A plain object (not a module) so the table stays a direct parameter of its owner and keeps
    the released checkpoints' key names. During training the resize is recomputed every call
    so gradients reach the table.
    """

    def __init__(self) -> None:
        # (table storage, device, dtype) -> (copy of the table when cached, {grid: resized table}),
        # both least recently used first and bounded: detection sees a new grid at almost every image.
        self._cache: OrderedDict[tuple, tuple[Tensor, OrderedDict[tuple[int, int], Tensor]]] = OrderedDict()

    def __call__(
        self, table: Tensor, dst_grid: tuple[int, int], src_grid: tuple[int, int] | None = None
    ) -> Tensor:  # -> (1, H*W, C)
        """`table` (1, h*w, C) laid out on `src_grid` (default: the square grid) -> on `dst_grid`."""
        src_grid = square_grid(table.shape[1]) if src_grid is None else (int(src_grid[0]), int(src_grid[1]))
        if torch.compiler.is_compiling():
            # Part of the graph; `dst_grid` may be symbolic (torch.export with dynamic H, W): no int()
            # or equality test of it (either would pin the graph to one size). At the table's own grid
            # the bicubic weights are the identity, so the result is the same.
            return resize_position_table(table, src_grid, dst_grid, always=True)
        dst_grid = (int(dst_grid[0]), int(dst_grid[1]))
        if src_grid == dst_grid:
            return table
        if (torch.is_grad_enabled() and table.requires_grad) or table.device.type != "cpu":
            # Under torch.compile the resize is part of the graph (a Python cache would break it). On
            # a GPU it is two tiny matmuls, while checking a cached copy would wait for the GPU.
            return resize_position_table(table, src_grid, dst_grid)
        # One resizer may serve several tables (PVT's per-stage pos_embed): cache per table. The
        # entries hold only while the table still equals the copy taken when they were made: a
        # comparison of a few hundred KiB catches every update (an optimiser step, a loaded
        # checkpoint, even a write through `.data`, which a version counter would miss).
        key = (table.data_ptr(), table.device, table.dtype)
        snapshot, grids = self._cache.get(key, (None, OrderedDict()))
        if snapshot is None or snapshot.shape != table.shape or not torch.equal(snapshot, table):
            grids = OrderedDict()
            self._cache[key] = (table.detach().clone(), grids)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED_TABLES:
            self._cache.popitem(last=False)
        cached = grids.get(dst_grid)
        if cached is None:
            cached = resize_position_table(table.detach(), src_grid, dst_grid)
            grids[dst_grid] = cached
            while len(grids) > MAX_CACHED_GRIDS:
                grids.popitem(last=False)
        grids.move_to_end(dst_grid)
        return cached
