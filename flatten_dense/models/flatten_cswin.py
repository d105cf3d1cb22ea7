"""FLatten-CSWin: CSWin Transformer with focused linear attention in the early stages ("LLSS").

Each block attends in cross-shaped windows: the channels split in two halves, one attending
within vertical stripes and one within horizontal stripes, or one branch over the whole map.
The branch layout and the position tables are fixed at construction from the released models
(their training size and stripe widths); the stripes a block runs are chosen per input.

Any input size (the released models run only at their training size):
- Linear stages attend over the whole map by default (`linear_stripes=None`), at any size. The
  released linear stripes (56 and 28 at 224) cover the whole map at training size, and focused
  linear attention costs the same at any stripe size, so this keeps the released computation at
  224 and a global receptive field at detection sizes, as FLatten-Swin's global linear window
  does. Each branch's position table is resized (bicubic) to the map. A stripe width per stage
  (`linear_stripes=(w1, w2, None, None)`) runs two-branch linear stages in stripes instead.
- Softmax stages keep their stripe width (7; 12 for flatten_cswin_b_384) at any size: the map is
  zero padded on the bottom/right to whole stripes and the padding is masked out of the softmax;
  a map narrower than a stripe is one stripe. The last stage attends over its whole map.
- LePE and DWC see only real tokens: stripes are padded after the q/k/v projection, so the
  padding is zeros, as the convs' own padding is at the map's border; padded keys carry no weight.
- The stem pads the image on the bottom/right to a multiple of 4, so stage maps are
  ceil(H / 4), ceil(H / 8), ... as in the other families (the same as the released stem at 224).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from .layers import LinearStripeAttention, Mlp, SoftmaxStripeAttention, StripeLayout
from .pyramid_model import PyramidModel, PyramidOptions, check_attn_types, stage_drop_path_rates, tokens_as_map

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = ["CSWinBlock", "ConvStem", "FlattenCSWin", "MergeBlock"]


class _ToTokens(nn.Module):
    """(B, C, H, W) -> (B, H*W, C): the parameterless step of the released stem (its index 1)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)


class ConvStem(nn.Sequential):
    """`stage1_conv_embed`: conv 7 x 7 stride 4 padding 2, tokens, LayerNorm (keys 0.* and 2.*)."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__(nn.Conv2d(in_channels, dim, 7, 4, 2), _ToTokens(), nn.LayerNorm(dim))

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:  # (B, 3, H, W) -> (B, N, C), grid
        x = F.pad(x, (0, (-x.shape[-1]) % 4, 0, (-x.shape[-2]) % 4))  # ceil(H / 4) x ceil(W / 4) tokens
        x = self[0](x.contiguous(memory_format=torch.channels_last))
        return self[2](self[1](x)), (x.shape[-2], x.shape[-1])


class MergeBlock(nn.Module):
    """`mergeK` between stages: conv 3 x 3 stride 2 padding 1 (C -> C'), then LayerNorm."""

    def __init__(self, dim: int, dim_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, 2, 1)
        self.norm = nn.LayerNorm(dim_out)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:  # (B, N, C)
        x = self.conv(tokens_as_map(x, grid).contiguous(memory_format=torch.channels_last))  # B C' H/2 W/2
        return self.norm(x.flatten(2).transpose(1, 2)), (x.shape[-2], x.shape[-1])


class CSWinBlock(nn.Module):
    """x + proj(cross-shaped attention(qkv(norm1(x)))); x + mlp(norm2(x)). Tokens (B, N, C).

    `branches` 2: channel halves attend in vertical (attns.0) and horizontal (attns.1) stripes of
    `stripe_width`; 1: one branch over the whole map. `stripe_width` None: every branch over the
    whole map. `table_grids`: per branch, the stripe grid of its position table (linear only).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        attn_type: str,
        branches: int,
        stripe_width: int | None,
        table_grids: Sequence[tuple[int, int]],
        mlp_ratio: float,
        drop_path: float,
        focusing_factor: float,
        kernel_size: int,
        position_encoding: str = "learned",
    ) -> None:
        super().__init__()
        self.branches = branches
        self.stripe_width = stripe_width
        branch_dim, branch_heads = dim // branches, num_heads // branches
        self.qkv = nn.Linear(dim, dim * 3)
        self.norm1 = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        if attn_type == "L":
            attns = [
                LinearStripeAttention(
                    branch_dim,
                    branch_heads,
                    table_grid=table_grids[i],
                    focusing_factor=focusing_factor,
                    kernel_size=kernel_size,
                    position_encoding=position_encoding,
                )
                for i in range(branches)
            ]
        else:
            attns = [SoftmaxStripeAttention(branch_dim, branch_heads) for _ in range(branches)]
        self.attns = nn.ModuleList(attns)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = nn.LayerNorm(dim)
        self.drop_path = StochasticDepth(drop_path, "row")

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        batch, tokens, channels = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(batch, grid[0], grid[1], 3, channels).unbind(3)  # each B H W C
        width = channels // self.branches
        attended = []
        for i, attn in enumerate(self.attns):
            part = slice(i * width, (i + 1) * width)
            layout = StripeLayout.for_branch(grid, i if self.branches == 2 else None, self.stripe_width)
            attended.append(attn(q[..., part], k[..., part], v[..., part], layout))
        attended = torch.cat(attended, dim=-1).reshape(batch, tokens, channels)
        x = x + self.drop_path(self.proj(attended))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class FlattenCSWin(PyramidModel):
    """FLatten-CSWin. Classifier role when `out_indices` is None, else a backbone of NCHW maps.

    Built as released: `pretrain_image_size`, the released linear stripe widths
    (`pretrain_linear_stripes`, CSWIN_LA_SPLIT_SIZE) and the softmax widths (`stripe_widths`, CSWin's
    split_size) fix each stage's branches (one where the stripe covers the training-size map, and in
    the last stage) and position tables. At run time linear stages attend over the whole map unless
    `linear_stripes` gives widths; softmax stages run `stripe_widths`. `position_encoding`
    ("learned", "sinusoidal", "none") is the linear branches' key position table (LePE stays).
    """

    def __init__(
        self,
        *,
        embed_dim: int = 64,
        depths: Sequence[int] = (2, 4, 18, 1),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        attn_types: str = "LLSS",
        stripe_widths: Sequence[int] = (1, 2, 7, 7),
        pretrain_linear_stripes: Sequence[int] = (56, 28, 14, 7),
        linear_stripes: Sequence[int | None] | None = None,
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
        num_stages = len(depths)
        self.stage_channels = tuple(embed_dim * 2**i for i in range(num_stages))
        self.stage1_conv_embed = ConvStem(3, embed_dim)
        for i, rates in enumerate(stage_drop_path_rates(depths, drop_path_rate)):
            dim = self.stage_channels[i]
            linear = attn_types[i] == "L"
            side = pretrain_image_size // 4 // 2**i  # the stage's map side at training size
            width = pretrain_linear_stripes[i] if linear else stripe_widths[i]
            branches = 1 if i == num_stages - 1 or width == side else 2
            table_grids = [(side, side)] if branches == 1 else [(side, width), (width, side)]
            run_width = self._run_width(i, linear, branches, stripe_widths[i], linear_stripes)
            blocks = [
                CSWinBlock(
                    dim,
                    num_heads[i],
                    attn_type=attn_types[i],
                    branches=branches,
                    stripe_width=run_width,
                    table_grids=table_grids,
                    mlp_ratio=mlp_ratio,
                    drop_path=rate,
                    focusing_factor=focusing_factor,
                    kernel_size=kernel_size,
                    position_encoding=position_encoding,
                )
                for rate in rates
            ]
            if i > 0:
                setattr(self, f"merge{i}", MergeBlock(self.stage_channels[i - 1], dim))
            setattr(self, f"stage{i + 1}", nn.ModuleList(blocks))
        if self.is_classifier:
            self.norm = nn.LayerNorm(self.stage_channels[-1])
        self._finish_init(norm_eps=1e-5)

    @staticmethod
    def _run_width(
        stage: int, linear: bool, branches: int, stripe_width: int, linear_stripes: Sequence[int | None] | None
    ) -> int | None:
        """The stripe width a stage runs at any input size; None: each branch over the whole map."""
        if branches == 1:
            if linear and linear_stripes is not None and linear_stripes[stage] is not None:
                raise ValueError(
                    f"linear_stripes: stage {stage + 1} has one branch over the whole map (its released layout); "
                    "stripes need a two-branch stage"
                )
            return None
        if linear:
            return None if linear_stripes is None else linear_stripes[stage]
        return stripe_width

    def _stage_maps(self, x: Tensor, last_stage: int) -> list[Tensor]:
        tokens, grid = self.stage1_conv_embed(x)  # B N C
        maps = []
        for i in range(last_stage + 1):
            if i > 0:
                tokens, grid = getattr(self, f"merge{i}")(tokens, grid)
            for block in getattr(self, f"stage{i + 1}"):
                tokens = self.run_block(block, tokens, grid)
            maps.append(tokens_as_map(tokens, grid))  # B C H W, channels-last view
        return maps

    def _classifier_features(self, x: Tensor) -> Tensor:
        last = self._stage_maps(x, len(self.stage_channels) - 1)[-1]  # B C H W
        return self.norm(last.flatten(2).transpose(1, 2)).mean(dim=1)

    def _stem_modules(self) -> list[nn.Module | nn.Parameter]:
        return [self.stage1_conv_embed]

    def _stage_modules(self, index: int) -> list[nn.Module | nn.Parameter]:
        """Stage `index` with the merge block that feeds it (merge{index} makes stage{index + 1}'s map)."""
        modules: list[nn.Module | nn.Parameter] = [getattr(self, f"stage{index + 1}")]
        if index > 0:
            modules.append(getattr(self, f"merge{index}"))
        return modules
