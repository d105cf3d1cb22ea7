"""Swin's shifted windows of a token map as one row gather, and back as another.

Plain form (`SwinBlock._softmax`): pad the (B, H, W, C) map to whole windows, roll it by the shift,
partition it into windows; after attention, reverse the partition, roll back and crop. Every step
is a copy of the whole map, and each backward copies again: four passes over a 3C-wide qkv map
in, three over the C-wide output out. All of it only moves rows: window slot s of image b holds
token `slots[s]` of image b, or zeros where `slots[s] < 0` (padding). So the windows are one
`index_select` of rows, and the map back is another, with `tokens[t]`, the slot of token t.
Each is the other's backward (every token fills exactly one slot), so gradients are copies too.
Alternated microbenchmarks (AMD EPYC, 2 threads, medians; fresh outputs as in training), Swin-T's
shifted stage-3 block at 1024 x 1024 (64 x 64 tokens, 7 x 7 windows): windows of the 1152-wide qkv
29 -> 2.2 ms, the 384-wide output back 1.4 -> 0.3 ms; stage 4 (32 x 32, unshifted) 1.2 -> 1.0 and
0.23 -> 0.19 ms. Backward is the same pair of gathers the other way round.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..window_attention import pad_to_multiple, window_partition

__all__ = ["RowGather", "gather_rows", "window_slots"]


@lru_cache(maxsize=64)
def window_slots(grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """(slots, tokens) for a grid in windows after padding and a roll by -shift, as the plain form.

    slots (nW * wh * ww,): the token (row-major index into the grid) in each window slot, -1 for
    padding; tokens (H * W,): the slot of each token. Built by running the plain helpers on the
    token indices, so the order is theirs by construction.
    """
    ids = torch.arange(1, grid[0] * grid[1] + 1).view(1, grid[0], grid[1], 1)  # 0 is padding
    padded = pad_to_multiple(ids, window)
    if any(shift):
        padded = torch.roll(padded, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    slots = window_partition(padded, window).reshape(-1) - 1
    tokens = torch.empty(grid[0] * grid[1], dtype=torch.long)
    filled = (slots >= 0).nonzero().squeeze(1)
    tokens[slots[filled]] = filled
    return slots, tokens


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """x (B, M, C) -> (B, len(index), C): row index[i] of each image, zeros where index[i] < 0."""
    batch, rows, channels = x.shape
    padding = (index < 0).nonzero().squeeze(1)
    flat = index.clamp(min=0) + (torch.arange(batch, device=x.device) * rows).unsqueeze(1)  # B L
    out = x.reshape(batch * rows, channels).index_select(0, flat.reshape(-1)).view(batch, index.numel(), channels)
    if padding.numel():
        out.index_fill_(1, padding, 0.0)
    return out


class RowGather(torch.autograd.Function):
    """x (B, M, C) -> rows `index` of each image; backward gathers the gradient with `inverse`.

    For a permutation with padding: index[inverse[m]] == m for every row m of x, and slots with
    index < 0 hold zeros (their gradient is dropped)."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return _gather(x, index)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        return _gather(grad, inverse), None, None


def gather_rows(x: Tensor, index: Tensor, inverse: Tensor) -> Tensor:
    """Rows `index` of each image of x (B, M, C), zeros where index < 0; `inverse` maps back."""
    return RowGather.apply(x, index.to(x.device), inverse.to(x.device))
