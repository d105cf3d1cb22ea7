"""What every task's pictures share: a deterministic palette, uint8 conversion, a grid of pictures."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.utils import make_grid

__all__ = ["image_grid", "palette", "to_uint8"]


def palette(num_colors: int, *, seed: int = 3) -> list[tuple[int, int, int]]:
    """Distinct-looking deterministic colours."""
    generator = torch.Generator().manual_seed(seed)
    colors = torch.randint(40, 256, (num_colors, 3), generator=generator)
    return [tuple(int(c) for c in row) for row in colors]


def to_uint8(image: Tensor) -> Tensor:
    """float image in [0, 1] (3, H, W) -> uint8, for drawing."""
    return image.as_subclass(Tensor).detach().cpu().mul(255).round().clamp(0, 255).to(torch.uint8)


def image_grid(pictures: Sequence[Tensor], *, nrow: int = 3) -> Tensor:
    """uint8 pictures of any sizes (3, H_i, W_i) -> one uint8 grid, each padded white to the largest."""
    height = max(p.shape[1] for p in pictures)
    width = max(p.shape[2] for p in pictures)
    padded = [torch.nn.functional.pad(p, (0, width - p.shape[2], 0, height - p.shape[1]), value=255) for p in pictures]
    return make_grid(padded, nrow=nrow, padding=4, pad_value=255)
