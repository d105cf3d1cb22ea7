"""FLatten-Swin: Swin Transformer with focused linear attention in the early stages.

Stages marked "L" use focused linear attention; by default over one global window at any input
size (at 224 x 224 the released 56 x 56 window is global, and linear attention costs the same at
any window size, so the global window keeps the released behaviour and the global receptive field).
A finite `linear_window` partitions the map into padded windows; padding tokens are masked out of
the attention. Linear stages never shift (the released models do not either: a shift mask cannot
be expressed as one k^T v product per window). Stages marked "S" are Swin's 7 x 7 shifted windowed
softmax attention with relative position bias and correct masks for shifts and padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

from .layers import (
    FocusedLinearAttention,
    Mlp,
    PatchEmbed,
    WindowAttention,
    in_inference,
    pad_to_multiple,
    padded_size,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from .layers.autograd import from_windows, layer_norm_linear, to_windows, window_rows
from .layers.fast_layers import FAST_LAYERS, FastWindowAttention, uses_fast_path
from .pyramid_model import PyramidModel, PyramidOptions, check_attn_types, stage_drop_path_rates, tokens_as_map

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = ["FastSwinBlock", "FlattenSwin", "PatchMerging", "SwinBlock"]


def softmax_shift(grid: tuple[int, int], window: int, shifted: bool) -> tuple[int, int]:
    """Cyclic shift of a softmax block: half a window along sides longer than the window, else 0."""
    return (
        window // 2 if shifted and grid[0] > window else 0,
        window // 2 if shifted and grid[1] > window else 0,
    )


class SwinBlock(nn.Module):
    """norm -> (linear | shifted-window softmax) attention -> residual -> norm -> MLP -> residual."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        attn_type: str,
        num_keys: int,
        linear_window: int | None,
        softmax_window: int,
        shift: bool,
        mlp_ratio: float,
        drop_path: float,
        focusing_factor: float,
        kernel_size: int,
        position_encoding: str = "learned",
    ) -> None:
        super().__init__()
        self.attn_type = attn_type
        self.linear_window = linear_window
        self.softmax_window = softmax_window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        if attn_type == "L":
            self.attn = FocusedLinearAttention(
                dim,
                num_heads,
                num_keys=num_keys,
                fused_qkv=True,
                focusing_factor=focusing_factor,
                kernel_size=kernel_size,
                position_encoding=position_encoding,
            )
        else:
            self.attn = WindowAttention(dim, num_heads, window=softmax_window)
        self.drop_path = StochasticDepth(drop_path, "row")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, grid: tuple[int, int], mask: Tensor | None = None) -> Tensor:  # (B, H*W, C) -> same
        """`mask`: the stage's softmax mask for this block's shift at this grid (`SwinStage.softmax_masks`)."""
        x = x + self.drop_path(self.attend(self.norm1(x), grid, mask))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def attend(self, x: Tensor, grid: tuple[int, int], mask: Tensor | None) -> Tensor:  # (B, H*W, C) -> same
        """The block's attention (linear or windowed softmax) of normalised tokens x."""
        batch, tokens, channels = x.shape
        x = x.view(batch, grid[0], grid[1], channels)
        x = self._linear(x) if self.attn_type == "L" else self._softmax(x, mask)
        return x.reshape(batch, tokens, channels)

    def global_linear(self, grid: tuple[int, int]) -> bool:
        """Linear attention over the whole grid (one window), not over windows of it."""
        return self.linear_window is None or (self.linear_window >= grid[0] and self.linear_window >= grid[1])

    def _linear(self, x: Tensor) -> Tensor:  # (B, H, W, C) -> same
        batch, height, width, channels = x.shape
        if self.global_linear((height, width)):
            return self.attn(x.reshape(batch, height * width, channels), (height, width)).view_as(x)
        window = (min(self.linear_window, height), min(self.linear_window, width))
        padded = pad_to_multiple(x, window)
        windows = window_partition(padded, window)  # B*nW, wh*ww, C
        valid = None
        if padded.shape[1:3] != x.shape[1:3]:
            real = torch.zeros(1, padded.shape[1], padded.shape[2], 1, dtype=torch.bool, device=x.device)
            real[:, :height, :width] = True
            valid = window_partition(real, window).squeeze(-1).repeat(batch, 1)  # B*nW, wh*ww
        out = window_reverse(self.attn(windows, window, valid), window, padded.shape[1], padded.shape[2])
        return out[:, :height, :width]

    def _softmax(
        self, x: Tensor, mask: Tensor | None, attention: Callable[[Tensor, Tensor | None], Tensor] | None = None
    ) -> Tensor:  # (B, H, W, C) -> same
        """Shifted windows of x through `attention` (windows, mask) -> windows (default: self.attn)."""
        attention = self.attn if attention is None else attention
        _, height, width, _ = x.shape
        window = (self.softmax_window, self.softmax_window)
        shift = softmax_shift((height, width), self.softmax_window, self.shift)
        padded = pad_to_multiple(x, window)
        padded_size = (padded.shape[1], padded.shape[2])
        if any(shift):
            padded = torch.roll(padded, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        out = window_reverse(attention(window_partition(padded, window), mask), window, *padded_size)
        if any(shift):
            out = torch.roll(out, shifts=shift, dims=(1, 2))
        return out[:, :height, :width]


class FastSwinBlock(SwinBlock):
    """SwinBlock on the fast path (`layers/fast_layers.py`): in training each norm is fused into the
    linears after it (norm1 where the attention takes the whole grid); in inference the residual
    adds are fused too."""

    def forward(self, x: Tensor, grid: tuple[int, int], mask: Tensor | None = None) -> Tensor:
        if not uses_fast_path():
            return super().forward(x, grid, mask)
        if in_inference(self):
            x = self.attend(self.norm1(x), grid, mask).add_(x)  # a fresh buffer: the residual goes into it
            return self.mlp.residual_inference(x, self.norm2)
        if self.attn_type == "L" and self.global_linear(grid):  # tokens go straight in: norm1 fused too
            attended = self.attn.normed_forward(x, self.norm1, grid)
        elif self._fuses_norm_into_windows(x):
            if self.attn.recompute:  # stores x only
                attended = checkpoint(self._normed_softmax, x, grid, mask, use_reentrant=False)
            else:
                attended = self._normed_softmax(x, grid, mask)
        else:
            attended = self.attend(self.norm1(x), grid, mask)
        x = x + self.drop_path(attended)
        return x + self.drop_path(self.mlp.normed_forward(x, self.norm2))

    def _fuses_norm_into_windows(self, x: Tensor) -> bool:
        attn = self.attn
        return isinstance(attn, FastWindowAttention) and type(self.norm1) is nn.LayerNorm and attn.stores_less(x)

    def _normed_softmax(self, x: Tensor, grid: tuple[int, int], mask: Tensor | None) -> Tensor:
        """Windowed softmax attention of norm1(x) with norm1 fused into qkv: x (B, N, C) -> same.

        Per-token maps commute with the shift and the window partition, so qkv is projected before
        them and the output projection runs after them, on the unpadded tokens; padding tokens
        become zero q, k, v rather than the projection of zero tokens, which only padding queries
        (cropped) and masked keys (weight e^-100) ever see. Pad, roll and partition are one row
        gather and their inverse another (`autograd/window_rows.py`).
        """
        batch, tokens, _ = x.shape
        window = (self.softmax_window, self.softmax_window)
        rows = window_rows(grid, window, softmax_shift(grid, self.softmax_window, self.shift), x.device)
        qkv = layer_norm_linear(x, self.norm1, self.attn.qkv)  # B N 3C
        windows = to_windows(qkv, rows).view(-1, window[0] * window[1], qkv.shape[-1])  # B*nW wh*ww 3C
        attended = self.attn.attend_windows(windows, mask).reshape(batch, rows.slots.numel(), -1)  # B nW*wh*ww C
        return self.attn.project(from_windows(attended, rows))  # B N C: projected unpadded


FAST_LAYERS[SwinBlock] = FastSwinBlock


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm(4C) -> Linear(4C, 2C); odd sides are zero padded."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        batch, _, channels = x.shape
        x = pad_to_multiple(x.view(batch, grid[0], grid[1], channels), (2, 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        new_grid = (x.shape[1], x.shape[2])
        return self.reduction(self.norm(x.reshape(batch, -1, 4 * channels))), new_grid


class SwinStage(nn.Module):
    """Blocks of one resolution, then the patch merging that feeds the next stage (released layout)."""

    def __init__(self, blocks: list[SwinBlock], downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def softmax_masks(self, grid: tuple[int, int], device: torch.device) -> dict[bool, Tensor | None]:
        """{shifted: mask} for this stage's softmax blocks at `grid`, built once per call and shared.

        The mask depends only on the grid and the block's shift, so all blocks of a stage use the
        same two; building them per call keeps nothing per input size alive (no cache to grow, and
        nothing for torch.compile to guard on).
        """
        first = self.blocks[0]
        if first.attn_type != "S":
            return {}
        size = first.softmax_window
        padded = (padded_size(grid[0], size), padded_size(grid[1], size))  # as pad_to_multiple pads
        masks = {}
        for shifted in {block.shift for block in self.blocks}:
            mask = shifted_window_mask(padded, grid, (size, size), softmax_shift(grid, size, shifted))
            masks[shifted] = None if mask is None else mask.to(device)
        return masks


class FlattenSwin(PyramidModel):
    """FLatten-Swin. Classifier role when `out_indices` is None, else a backbone of NCHW maps.

    `pretrain_image_size` and `pretrain_linear_window` fix the position tables' grids (the released
    files'); `linear_window` (None: global) and `softmax_window` are the windows the stages run.
    `position_encoding` ("learned", "sinusoidal", "none") is the linear stages' key position table
    (the softmax stages keep Swin's relative position bias).
    """

    def __init__(
        self,
        *,
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        attn_types: str = "LLSS",
        linear_window: int | None = None,
        pretrain_linear_window: int = 56,
        softmax_window: int = 7,
        pretrain_image_size: int = 224,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.2,
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
        position_encoding: Literal["learned", "sinusoidal", "none"] = "learned",
        **options: Unpack[PyramidOptions],
    ) -> None:
        super().__init__(**options)
        check_attn_types(attn_types, depths)
        self.stage_channels = tuple(embed_dim * 2**i for i in range(len(depths)))
        self.patch_embed = PatchEmbed(3, embed_dim, kernel=4, stride=4)
        stages = []
        for i, rates in enumerate(stage_drop_path_rates(depths, drop_path_rate)):
            dim = self.stage_channels[i]
            pretrain_grid = pretrain_image_size // 4 // 2**i
            num_keys = min(pretrain_grid, pretrain_linear_window) ** 2
            blocks = [
                SwinBlock(
                    dim,
                    num_heads[i],
                    attn_type=attn_types[i],
                    num_keys=num_keys,
                    linear_window=linear_window,
                    softmax_window=softmax_window,
                    shift=j % 2 == 1,
                    mlp_ratio=mlp_ratio,
                    drop_path=rate,
                    focusing_factor=focusing_factor,
                    kernel_size=kernel_size,
                    position_encoding=position_encoding,
                )
                for j, rate in enumerate(rates)
            ]
            downsample = PatchMerging(dim) if i < len(depths) - 1 else None
            stages.append(SwinStage(blocks, downsample))
        self.layers = nn.ModuleList(stages)
        if self.is_classifier:
            self.norm = nn.LayerNorm(self.stage_channels[-1])
        self._finish_init(norm_eps=1e-5)

    def _stage_maps(self, x: Tensor, last_stage: int) -> list[Tensor]:
        tokens, grid = self.patch_embed(x)  # B N C
        maps = []
        for i, stage in enumerate(self.layers[: last_stage + 1]):
            masks = stage.softmax_masks(grid, tokens.device)
            for block in stage.blocks:
                tokens = self.run_block(block, tokens, grid, masks.get(block.shift))
            maps.append(tokens_as_map(tokens, grid))  # B C H W, channels-last view
            if stage.downsample is not None and i < last_stage:
                tokens, grid = stage.downsample(tokens, grid)
        return maps

    def _classifier_features(self, x: Tensor) -> Tensor:
        last = self._stage_maps(x, len(self.layers) - 1)[-1]  # B C H W
        return self.norm(last.flatten(2).transpose(1, 2)).mean(dim=1)

    def _stem_modules(self) -> list[nn.Module]:
        return [self.patch_embed]

    def _stage_modules(self, index: int) -> list[nn.Module]:
        modules: list[nn.Module] = [self.layers[index]]
        return modules
