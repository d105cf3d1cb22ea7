"""FLatten-PVT (v1) and FLatten-PVTv2: pyramid vision transformers with focused linear attention.

v1: non-overlapping patch embeddings, a learned position embedding per stage (`pos_embed{i}`,
resized to the actual grid), plain MLPs. v2: overlapping patch embeddings, a depthwise conv in the
MLP and a LayerNorm closing each stage (`norm{i}`), which is also the backbone's output norm.
`position_encoding="sinusoidal"` replaces every learned table (v1's `pos_embed{i}` and the
attention's key tables) by fixed sine/cosine tables of the actual grid; "none" drops them all.
Every stage attends with focused linear attention over all its tokens ("L"); "S" selects PVT's
softmax spatial-reduction attention with `sr_ratios` instead (the softmax counterpart).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from .layers import (
    DepthwiseConvMlp,
    FocusedLinearAttention,
    Mlp,
    PatchEmbed,
    PositionTableResizer,
    SpatialReductionAttention,
    in_inference,
)
from .layers.fast_layers import FAST_LAYERS, FastFocusedLinearAttention, uses_fast_path
from .layers.position_encoding import position_encoding_kind, sinusoidal_position_table
from .pyramid_model import PyramidModel, PyramidOptions, check_attn_types, stage_drop_path_rates, tokens_as_map

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = ["FastPVTBlock", "FlattenPVT", "PVTBlock"]

NORM_EPS = 1e-6


class PVTBlock(nn.Module):
    """x + attn(norm1(x)); x + mlp(norm2(x)), on tokens (B, N, C) of a grid (H, W)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        attn_type: str,
        num_keys: int,
        sr_ratio: int,
        mlp_ratio: float,
        drop_path: float,
        conv_mlp: bool,
        focusing_factor: float,
        kernel_size: int,
        position_encoding: str = "learned",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=NORM_EPS)
        if attn_type == "L":
            self.attn = FocusedLinearAttention(
                dim,
                num_heads,
                num_keys=num_keys,
                fused_qkv=False,
                focusing_factor=focusing_factor,
                kernel_size=kernel_size,
                position_encoding=position_encoding,
            )
        else:
            self.attn = SpatialReductionAttention(dim, num_heads, sr_ratio=sr_ratio)
        self.drop_path = StochasticDepth(drop_path, "row")
        self.norm2 = nn.LayerNorm(dim, eps=NORM_EPS)
        hidden = int(dim * mlp_ratio)
        self.mlp = DepthwiseConvMlp(dim, hidden) if conv_mlp else Mlp(dim, hidden)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), grid))
        return x + self.drop_path(self.mlp(self.norm2(x), grid))


class FastPVTBlock(PVTBlock):
    """PVTBlock on the fast path (`layers/fast_layers.py`): in training each norm is fused into the
    linears after it; in inference the residual adds are fused into the output projections."""

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        if not uses_fast_path():
            return super().forward(x, grid)
        if in_inference(self):
            x = self.attn(self.norm1(x), grid, residual=x)
            return self.mlp.residual_inference(x, self.norm2, grid)
        if isinstance(self.attn, FastFocusedLinearAttention):
            attended = self.attn.normed_forward(x, self.norm1, grid)
        else:
            attended = self.attn(self.norm1(x), grid)
        x = x + self.drop_path(attended)
        return x + self.drop_path(self.mlp.normed_forward(x, self.norm2, grid))


FAST_LAYERS[PVTBlock] = FastPVTBlock


class FlattenPVT(PyramidModel):
    """FLatten-PVT v1 (`version=1`) or v2. Classifier role when `out_indices` is None."""

    def __init__(
        self,
        *,
        version: int = 1,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        attn_types: str = "LLLL",
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        pretrain_image_size: int = 224,
        drop_path_rate: float = 0.1,
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
        position_encoding: Literal["learned", "sinusoidal", "none"] = "learned",
        **options: Unpack[PyramidOptions],
    ) -> None:
        super().__init__(**options)
        if version not in (1, 2):
            raise ValueError(f"PVT version must be 1 or 2, got {version}")
        check_attn_types(attn_types, depths)
        self.version = version
        self.position_encoding = position_encoding_kind(position_encoding)
        self.num_stages = len(depths)
        self.stage_channels = tuple(embed_dims)
        self._resize_position = PositionTableResizer()
        for i, rates in enumerate(stage_drop_path_rates(depths, drop_path_rate)):
            in_channels = 3 if i == 0 else embed_dims[i - 1]
            grid_side = pretrain_image_size // 4 // 2**i
            if version == 1:
                embed = PatchEmbed(in_channels, embed_dims[i], kernel=4 if i == 0 else 2, stride=4 if i == 0 else 2)
                if self.position_encoding == "learned":
                    pos_embed = nn.Parameter(torch.zeros(1, grid_side**2, embed_dims[i]))
                    nn.init.trunc_normal_(pos_embed, std=0.02)
                    setattr(self, f"pos_embed{i + 1}", pos_embed)
            else:
                kernel, stride = (7, 4) if i == 0 else (3, 2)
                embed = PatchEmbed(in_channels, embed_dims[i], kernel=kernel, stride=stride, padding=kernel // 2)
            setattr(self, f"patch_embed{i + 1}", embed)
            blocks = [
                PVTBlock(
                    embed_dims[i],
                    num_heads[i],
                    attn_type=attn_types[i],
                    num_keys=grid_side**2,
                    sr_ratio=sr_ratios[i],
                    mlp_ratio=mlp_ratios[i],
                    drop_path=rate,
                    conv_mlp=version == 2,
                    focusing_factor=focusing_factor,
                    kernel_size=kernel_size,
                    position_encoding=self.position_encoding,
                )
                for rate in rates
            ]
            setattr(self, f"block{i + 1}", nn.ModuleList(blocks))
            if version == 2:
                setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=NORM_EPS))
        if version == 1 and self.is_classifier:
            # Stored in the released v1 checkpoints but not applied by their classifier.
            self.norm = nn.LayerNorm(embed_dims[-1], eps=NORM_EPS)
        self.out_norm = self.out_norm and version == 1  # v2's stage norms already close every output
        self._finish_init(norm_eps=NORM_EPS)

    def _stage_maps(self, x: Tensor, last_stage: int) -> list[Tensor]:
        maps = []
        for i in range(last_stage + 1):
            tokens, grid = getattr(self, f"patch_embed{i + 1}")(x)  # B N C
            if self.version == 1 and self.position_encoding != "none":
                tokens = tokens + self._patch_position(i, grid, tokens)
            for block in getattr(self, f"block{i + 1}"):
                tokens = self.run_block(block, tokens, grid)
            if self.version == 2:
                tokens = getattr(self, f"norm{i + 1}")(tokens)
            x = tokens_as_map(tokens, grid)  # B C H W, channels-last view
            maps.append(x)
        return maps

    def _patch_position(self, index: int, grid: tuple[int, int], tokens: Tensor) -> Tensor:
        """v1's position embedding of stage `index` on `grid`: the learned table resized, or the sinusoid."""
        if self.position_encoding == "sinusoidal":
            return sinusoidal_position_table(grid, tokens.shape[-1], device=tokens.device, dtype=tokens.dtype)
        return self._resize_position(getattr(self, f"pos_embed{index + 1}"), grid)

    def _classifier_features(self, x: Tensor) -> Tensor:
        return self._stage_maps(x, self.num_stages - 1)[-1].flatten(2).mean(dim=-1)  # B C

    def _stem_modules(self) -> list[nn.Module | nn.Parameter]:
        stem: list[nn.Module | nn.Parameter] = [self.patch_embed1]
        if hasattr(self, "pos_embed1"):
            stem.append(self.pos_embed1)
        return stem

    def _stage_modules(self, index: int) -> list[nn.Module | nn.Parameter]:
        stage = index + 1
        modules: list[nn.Module | nn.Parameter] = [getattr(self, f"patch_embed{stage}"), getattr(self, f"block{stage}")]
        if hasattr(self, f"pos_embed{stage}"):
            modules.append(getattr(self, f"pos_embed{stage}"))
        if self.version == 2:
            modules.append(getattr(self, f"norm{stage}"))
        return modules
