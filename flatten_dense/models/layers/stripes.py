"""CSWin's stripes: how one attention branch tiles an H x W map, at any map size.

A cross-shaped window is two branches on half the channels each: branch 0 attends within vertical
stripes (the map's full height, `width` columns), branch 1 within horizontal stripes (`width` rows,
the full width); a single branch attends over the whole map. When the stripe width does not
divide the map, the map is zero padded on the bottom/right to whole stripes, and `valid` says
which stripe tokens are real so attention can leave the padding out. A width beyond the map's
side shrinks to that side: one stripe, no padding (padding would be masked anyway, so this
computes the same for the real tokens, only cheaper).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .window_attention import pad_to_multiple, padded_size, window_partition, window_reverse

__all__ = ["StripeLayout"]


@dataclass(frozen=True)
class StripeLayout:
    """Stripes of `stripe` = (sh, sw) tokens over a real map of `grid` = (H, W) tokens."""

    grid: tuple[int, int]
    stripe: tuple[int, int]

    @classmethod
    def for_branch(cls, grid: tuple[int, int], branch: int | None, width: int | None) -> StripeLayout:
        """Branch 0: vertical stripes (H x width); 1: horizontal (width x W); None or width None: the map."""
        height, map_width = grid
        if branch is None or width is None:
            return cls(grid, grid)
        if branch == 0:
            return cls(grid, (height, min(width, map_width)))
        if branch == 1:
            return cls(grid, (min(width, height), map_width))
        raise ValueError(f"a cross-shaped window has branches 0 (vertical) and 1 (horizontal), got {branch}")

    @property
    def padded(self) -> tuple[int, int]:
        """The map's size rounded up to whole stripes."""
        return padded_size(self.grid[0], self.stripe[0]), padded_size(self.grid[1], self.stripe[1])

    @property
    def tokens(self) -> int:
        """Tokens per stripe, sh * sw."""
        return self.stripe[0] * self.stripe[1]

    def partition(self, x: Tensor) -> Tensor:
        """(B, H, W, C) -> (B * nS, sh * sw, C), stripes in row-major order, padding zeros."""
        return window_partition(pad_to_multiple(x, self.stripe), self.stripe)

    def reverse(self, stripes: Tensor) -> Tensor:
        """(B * nS, sh * sw, C) -> (B, H, W, C): the inverse of `partition`, padding dropped."""
        out = window_reverse(stripes, self.stripe, *self.padded)
        return out[:, : self.grid[0], : self.grid[1]]

    def valid(self, device: torch.device | None = None) -> Tensor | None:
        """(nS, sh * sw) bool, False on padding; None when the stripes tile the map exactly."""
        # Exporting, the sizes are symbolic: testing them would pin the graph to maps that do (or do
        # not) tile into whole stripes. An all-True mask computes the same.
        if not torch.compiler.is_compiling() and self.padded == self.grid:
            return None
        real = torch.zeros(1, *self.padded, 1, dtype=torch.bool, device=device)
        real[:, : self.grid[0], : self.grid[1]] = True
        return window_partition(real, self.stripe).squeeze(-1)
