"""Swin's shifted windows of a token map as one row gather, and back as another.

Plain form (`SwinBlock._softmax`): pad the (B, H, W, C) map to whole windows, roll it by the shift,
partition it into windows; after attention, reverse the partition, roll back and crop. Every step
is a copy of the whole map, and each backward copies again: four passes over a 3C-wide qkv map
in, three over the C-wide output out. All of it only moves rows: window slot s of image b holds
token `slots[s]` of image b, or zeros for a padding slot. So the windows are one `index_select` of
rows, and the map back is another, with `tokens[t]`, the slot of token t. Each is the other's
backward (every token fills exactly one slot), so gradients are copies too.
Alternated microbenchmarks (AMD EPYC, 2 threads, medians; fresh outputs as in training), Swin-T's
shifted stage-3 block at 1024 x 1024 (64 x 64 tokens, 7 x 7 windows): windows of the 1152-wide qkv
29 -> 2.2 ms, the 384-wide output back 1.4 -> 0.3 ms; stage 4 (32 x 32, unshifted) 1.2 -> 1.0 and
0.23 -> 0.19 ms. Backward is the same pair of gathers the other way round.
The index tensors are built per call (a few thousand integers; no cache to grow) from sizes
alone, with no data-dependent shape (`nonzero`): fake tensors and FLOP counters run this path too.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..window_attention import pad_to_multiple, window_partition

__all__ = ["RowGather", "WindowRows", "from_windows", "to_windows", "window_rows"]


class WindowRows(NamedTuple):
    """Where the tokens of a grid sit in its padded, shifted windows (nW * wh * ww slots)."""

    slots: Tensor  # (nW * wh * ww,) the token in each slot, 0 for padding slots (zeroed after the gather)
    padding: Tensor  # (nW * wh * ww - H * W,) the padding slots
    tokens: Tensor  # (H * W,) the slot of each token


def window_rows(
    grid: tuple[int, int], window: tuple[int, int], shift: tuple[int, int], device: torch.device
) -> WindowRows:
    """The plain helpers (pad, roll by -shift, partition) run on the token indices, so the order is
    theirs by construction."""
    tokens = grid[0] * grid[1]
    ids = torch.arange(1, tokens + 1, device=device).view(1, grid[0], grid[1], 1)  # 0 marks padding
    padded = pad_to_multiple(ids, window)
    if any(shift):
        padded = torch.roll(padded, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    slots = window_partition(padded, window).reshape(-1)  # token + 1, 0 for padding
    order = torch.argsort(slots, stable=True)  # the padding slots first, then the slots of tokens 0, 1, ...
    pads = slots.numel() - tokens
    return WindowRows(slots=(slots - 1).clamp_(min=0), padding=order[:pads], tokens=order[pads:])


def _gather(x: Tensor, index: Tensor, zeroed: Tensor) -> Tensor:
    """x (B, M, C) -> (B, len(index), C): row index[i] of each image, then rows `zeroed` set to 0."""
    batch, rows, channels = x.shape
    flat = index + (torch.arange(batch, device=x.device) * rows).unsqueeze(1)  # B L
    out = x.reshape(batch * rows, channels).index_select(0, flat.reshape(-1)).view(batch, index.numel(), channels)
    if zeroed.numel():
        out.index_fill_(1, zeroed, 0.0)
    return out


class RowGather(torch.autograd.Function):
    """x (B, M, C) -> rows `index` of each image with rows `zeroed` zero; backward gathers the
    gradient with `inverse` and zeroes `inverse_zeroed`. For a permutation with padding:
    index[inverse[m]] == m for every row m of x, and the zeroed slots' gradient is dropped."""

    @staticmethod
    def forward(ctx, x: Tensor, index: Tensor, zeroed: Tensor, inverse: Tensor, inverse_zeroed: Tensor) -> Tensor:
        ctx.save_for_backward(inverse, inverse_zeroed)
        return _gather(x, index, zeroed)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        inverse, inverse_zeroed = ctx.saved_tensors
        return _gather(grad, inverse, inverse_zeroed), None, None, None, None


def to_windows(x: Tensor, rows: WindowRows) -> Tensor:
    """(B, H*W, C) -> (B, nW * wh * ww, C): the padded, shifted windows, padding slots zero."""
    return RowGather.apply(x, rows.slots, rows.padding, rows.tokens, rows.padding[:0])


def from_windows(windows: Tensor, rows: WindowRows) -> Tensor:
    """(B, nW * wh * ww, C) -> (B, H*W, C): the inverse of `to_windows`, padding slots dropped."""
    return RowGather.apply(windows, rows.tokens, rows.padding[:0], rows.slots, rows.padding)
