"""Behaviour shared by the FLatten families: classifier vs backbone role, freezing, checkpointing.

A family's constructor takes its architecture arguments plus the role options of `PyramidOptions`,
which it hands to `PyramidModel.__init__`; it builds its layers (the final `norm` only when
`self.is_classifier`), then calls `_finish_init`. It implements `_stage_maps` (NCHW-shaped outputs of
stages 0..last, before output norms; channels-last views of the stage tokens, so no copy is made
until an output is emitted as a contiguous NCHW map), `_classifier_features` and the module lists
for freezing. In the classifier role the model's key names equal the released checkpoints'.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .feature_info import FeatureInfo
from .layers.nchw_output import to_nchw

__all__ = [
    "STAGE_REDUCTIONS",
    "PyramidModel",
    "PyramidOptions",
    "check_attn_types",
    "init_transformer_weights",
    "stage_drop_path_rates",
    "tokens_as_map",
]

STAGE_REDUCTIONS = (4, 8, 16, 32)


class PyramidOptions(TypedDict, total=False):
    """The role options every family takes besides its architecture (see `PyramidModel.__init__`)."""

    num_classes: int
    out_indices: Sequence[int] | None
    frozen_stages: int
    with_cp: bool
    out_norm: bool


class PyramidModel(nn.Module):
    """Base of the families. `forward` gives logits (classifier) or NCHW maps (backbone)."""

    stage_channels: tuple[int, ...]
    grad_checkpointing: bool = False

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        out_indices: Sequence[int] | None = None,
        frozen_stages: int = -1,
        with_cp: bool = False,
        out_norm: bool = True,
    ) -> None:
        """Classifier when `out_indices` is None (`num_classes` logits), else a backbone returning the
        maps of those stages, each through its own LayerNorm unless `out_norm` is False. Stem and the
        first `frozen_stages` stages are frozen and kept in eval mode; `with_cp` checkpoints every
        block's activations in training."""
        super().__init__()
        self.is_classifier = out_indices is None
        self.num_classes = num_classes
        self._requested_out_indices = None if out_indices is None else tuple(int(i) for i in out_indices)
        self.frozen_stages = frozen_stages
        self.grad_checkpointing = with_cp
        self.out_norm = out_norm

    def _finish_init(self, *, norm_eps: float) -> None:
        """After the family built its layers: weights initialised, then the head or the output norms,
        `feature_info` and the frozen stages."""
        self.apply(init_transformer_weights)
        last = len(self.stage_channels) - 1
        if self.is_classifier:
            self.head = nn.Linear(self.stage_channels[-1], self.num_classes) if self.num_classes > 0 else nn.Identity()
            self.head.apply(init_transformer_weights)
        out_indices = (last,) if self.is_classifier else self._requested_out_indices
        if not out_indices or any(not 0 <= i <= last for i in out_indices):
            raise ValueError(f"out_indices {out_indices} must be a non-empty subset of 0..{last}")
        self.out_indices = out_indices
        self.feature_info = FeatureInfo(tuple(self.stage_channels), STAGE_REDUCTIONS, out_indices)
        if not self.is_classifier:
            self.out_norms = nn.ModuleDict(
                {
                    str(i): nn.LayerNorm(self.stage_channels[i], eps=norm_eps) if self.out_norm else nn.Identity()
                    for i in out_indices
                }
            )
        self._freeze_stages()

    # ----- what a family provides -----
    def _stage_maps(self, x: Tensor, last_stage: int) -> list[Tensor]:
        raise NotImplementedError

    def _stem_modules(self) -> list[nn.Module | nn.Parameter]:
        raise NotImplementedError

    def _stage_modules(self, index: int) -> list[nn.Module | nn.Parameter]:
        raise NotImplementedError

    def _classifier_features(self, x: Tensor) -> Tensor:
        """(B, C) pooled features for the head."""
        raise NotImplementedError

    # ----- shared behaviour -----
    def run_block(self, block: nn.Module, *args):
        """Run a block, with activation checkpointing when enabled and training."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _apply_out_norm(self, index: int, feature: Tensor) -> Tensor:
        """(B, C, H, W) map, usually channels-last in memory -> its output norm, contiguous NCHW."""
        norm = self.out_norms[str(index)]
        return to_nchw(feature, None if isinstance(norm, nn.Identity) else norm)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Classifier: (B, 3, H, W) -> (B, num_classes). Backbone: list of (B, C_i, H/s_i, W/s_i)."""
        if self.is_classifier:
            return self.head(self._classifier_features(x))
        maps = self._stage_maps(x, max(self.out_indices))
        return [self._apply_out_norm(i, maps[i]) for i in self.out_indices]

    def forward_intermediates(
        self,
        x: Tensor,
        *,
        indices: Sequence[int] | None = None,
        norm: bool = True,
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm-style: NCHW maps of the requested stages (default: out_indices), plus the last map.

        `norm` applies the per-output norms where the stage has one (backbone role).
        """
        indices = tuple(self.out_indices if indices is None else indices)
        maps = self._stage_maps(x, len(self.stage_channels) - 1 if not intermediates_only else max(indices))
        intermediates = []
        for i in indices:
            feature = maps[i]
            if norm and not self.is_classifier and str(i) in self.out_norms:
                feature = self._apply_out_norm(i, feature)
            intermediates.append(feature.contiguous())
        if intermediates_only:
            return intermediates
        return maps[-1].contiguous(), intermediates

    def no_weight_decay(self) -> set[str]:
        """Parameter names that should not be decayed: position tables, scales, norms."""
        tables = {"positional_encoding", "scale", "relative_position_bias_table"}
        names = {
            name
            for name, _ in self.named_parameters()
            if name.rsplit(".", 1)[-1] in tables or name.rsplit(".", 1)[-1].startswith("pos_embed")
        }
        for module_name, module in self.named_modules():
            if isinstance(module, nn.LayerNorm):
                names |= {f"{module_name}.{leaf}" for leaf, _ in module.named_parameters()}
        return names

    def _frozen_modules(self) -> list[nn.Module | nn.Parameter]:
        if self.frozen_stages < 0:
            return []
        modules = list(self._stem_modules())
        for index in range(min(self.frozen_stages, len(self.stage_channels))):
            modules += self._stage_modules(index)
            if not self.is_classifier and str(index) in self.out_norms:
                modules.append(self.out_norms[str(index)])
        return modules

    def _freeze_stages(self) -> None:
        for item in self._frozen_modules():
            params = [item] if isinstance(item, nn.Parameter) else item.parameters()
            for param in params:
                param.requires_grad = False
            if isinstance(item, nn.Module):
                item.eval()

    def train(self, mode: bool = True) -> PyramidModel:
        """Keep frozen stages in eval mode (dropout/drop path off), as mmdet's backbones do."""
        super().train(mode)
        for item in self._frozen_modules():
            if isinstance(item, nn.Module):
                item.eval()
        return self


def check_attn_types(attn_types: str, depths: Sequence[int]) -> None:
    """One attention letter per stage: "L" focused linear, "S" the family's softmax attention."""
    if len(attn_types) != len(depths) or set(attn_types) - {"L", "S"}:
        raise ValueError(
            f"attn_types {attn_types!r} needs one letter per stage ({len(depths)}): "
            "'L' (focused linear) or 'S' (softmax)"
        )


def stage_drop_path_rates(depths: Sequence[int], drop_path_rate: float) -> list[list[float]]:
    """Per stage, the drop-path rate of each block: rising linearly from 0 over all blocks."""
    rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
    return [rates[sum(depths[:i]) : sum(depths[: i + 1])] for i in range(len(depths))]


def tokens_as_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, H*W, C) tokens -> (B, C, H, W) map: a channels-last view, no copy."""
    batch, _, channels = tokens.shape
    return tokens.view(batch, grid[0], grid[1], channels).permute(0, 3, 1, 2)


def init_transformer_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights, zero biases, unit LayerNorms (as the released models train)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
