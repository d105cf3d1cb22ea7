"""Swin's windowed softmax attention with a relative position bias, and the window helpers.

Masks are built for any padded, shifted grid: a query never attends to a key from another
region of the cyclic shift, nor to a padding token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "WindowAttention",
    "pad_to_multiple",
    "padded_size",
    "relative_position_index",
    "shifted_window_mask",
    "window_partition",
    "window_reverse",
]

MASK_VALUE = -100.0  # as the released Swin models use


def padded_size(size: int, window: int) -> int:
    """`size` rounded up to whole windows, written as (number of windows) * window.

    With a symbolic size (torch.export with dynamic H, W) this is the one form every helper uses:
    the padded side is `7 * ((s + 6) // 7)`, from which `// 7` and `* 7` simplify at once. The
    other spellings (`s + (-s) % 7`, `-(-s // 7) * 7`) are equal but not provably so to sympy,
    and every view, reshape and mask broadcast over the windows then made it search for a proof
    (the Swin-T export ran for over 25 minutes in sympy's `simplify`).
    """
    return (size + window - 1) // window * window


def pad_to_multiple(x: Tensor, window: tuple[int, int]) -> Tensor:
    """(B, H, W, C) -> zero padded on the bottom/right to multiples of the window (h, w)."""
    height, width = x.shape[1], x.shape[2]
    pad_h = padded_size(height, window[0]) - height
    pad_w = padded_size(width, window[1]) - width
    if torch.compiler.is_compiling() or pad_h or pad_w:  # no branch on symbolic sizes (torch.export)
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    return x


def window_partition(x: Tensor, window: tuple[int, int]) -> Tensor:
    """(B, H, W, C) with H, W multiples of the window -> (B * nW, wh * ww, C)."""
    batch, height, width, channels = x.shape
    wh, ww = window
    rows, cols = height // wh, width // ww
    x = x.view(batch, rows, wh, cols, ww, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(batch * rows * cols, wh * ww, channels)


def window_reverse(windows: Tensor, window: tuple[int, int], height: int, width: int) -> Tensor:
    """(B * nW, wh * ww, C) -> (B, H, W, C); inverse of window_partition."""
    wh, ww = window
    channels = windows.shape[-1]
    x = windows.view(-1, height // wh, width // ww, wh, ww, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(x.shape[0], height, width, channels)


def relative_position_index(window: tuple[int, int]) -> Tensor:
    """(wh*ww, wh*ww) index into a (2wh-1)(2ww-1) bias table, as in Swin."""
    coords = torch.stack(torch.meshgrid(torch.arange(window[0]), torch.arange(window[1]), indexing="ij"))
    coords = coords.flatten(1)  # 2 N
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # N N 2
    relative[:, :, 0] += window[0] - 1
    relative[:, :, 1] += window[1] - 1
    relative[:, :, 0] *= 2 * window[1] - 1
    return relative.sum(-1)


def shifted_window_mask(
    padded: tuple[int, int], real: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> Tensor | None:
    """Additive mask (nW, N, N) for a padded grid rolled by -shift, or None if nothing needs masking.

    Tokens get a region id: the shift regions of Swin, and one extra id for padding. Keys with a
    different id from the query are masked; padding keys are always masked.
    """
    if torch.compiler.is_compiling():
        return _symbolic_shifted_window_mask(padded, real, window, shift)
    if shift == (0, 0) and padded == real:
        return None
    ids = torch.zeros(padded, dtype=torch.long)
    region = 0
    for rows in _shift_slices(padded[0], window[0], shift[0]):
        for cols in _shift_slices(padded[1], window[1], shift[1]):
            ids[rows, cols] = region
            region += 1
    # Shift regions are defined in the rolled frame (as Swin does); padding sits where the roll put it.
    padding = torch.zeros(padded, dtype=torch.bool)
    padding[real[0] :, :] = True
    padding[:, real[1] :] = True
    padding_id = region
    ids[torch.roll(padding, shifts=(-shift[0], -shift[1]), dims=(0, 1))] = padding_id
    windows = window_partition(ids[None, :, :, None], window).squeeze(-1)  # nW N
    mask = (windows[:, :, None] != windows[:, None, :]) | (windows[:, None, :] == padding_id)
    return mask.float() * MASK_VALUE


def _symbolic_shifted_window_mask(
    padded: tuple[int, int], real: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]
) -> Tensor:
    """`shifted_window_mask` from tensor comparisons only: the sizes may be symbolic (torch.export).

    The same masked pairs: per axis the shift region (0, 1, 2: the slices of `_shift_slices`) and,
    in the rolled frame, whether the token is padding. Always a mask (zeros where none is needed).
    """

    def axis(size, win: int, sh: int) -> tuple[Tensor, Tensor]:  # region ids, index before the roll
        index = torch.arange(size)
        region = (index >= size - win).long() + (index >= size - sh).long() if sh else torch.zeros_like(index)
        source = index + sh  # (index + sh) % size, without a remainder by a symbolic size (no ONNX op for it)
        return region, torch.where(source >= size, source - size, source)

    rows, row_source = axis(padded[0], window[0], shift[0])
    cols, col_source = axis(padded[1], window[1], shift[1])
    padding_id = 9  # the 3 x 3 shift regions are 0..8
    padding = (row_source >= real[0])[:, None] | (col_source >= real[1])[None, :]
    ids = torch.where(padding, padding_id, rows[:, None] * 3 + cols[None, :])
    windows = window_partition(ids[None, :, :, None], window).squeeze(-1)  # nW N
    mask = (windows[:, :, None] != windows[:, None, :]) | (windows[:, None, :] == padding_id)
    return mask.float() * MASK_VALUE


def _shift_slices(size: int, window: int, shift: int) -> list[slice]:
    if shift == 0:
        return [slice(0, None)]
    return [slice(0, size - window), slice(size - window, size - shift), slice(size - shift, None)]


class WindowAttention(nn.Module):
    """Multi-head softmax self-attention inside windows, with Swin's relative position bias."""

    def __init__(self, dim: int, num_heads: int, *, window: int, qkv_bias: bool = True, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.window = window
        self.head_scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        self.register_buffer("relative_position_index", relative_position_index((window, window)), persistent=False)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def position_bias(self, tokens: int) -> Tensor:
        """(h, N, N) relative position bias of a window of N tokens, from the learned table."""
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(tokens, tokens, -1).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """x: (B * nW, N, C) windows of window*window tokens; mask: (nW, N, N) additive or None."""
        batch_windows, tokens, channels = x.shape
        qkv = self.qkv(x).reshape(batch_windows, tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each Bw h N d
        bias = self.position_bias(tokens).unsqueeze(0)  # 1 h N N
        if mask is not None:
            num_windows = mask.shape[0]
            bias = (bias.unsqueeze(1) + mask.to(bias.dtype)[None, :, None]).reshape(-1, self.num_heads, tokens, tokens)
            bias = bias.repeat(batch_windows // num_windows, 1, 1, 1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), scale=self.head_scale)
        out = out.transpose(1, 2).reshape(batch_windows, tokens, channels)
        return self.proj_drop(self.proj(out))
