"""Behaviour shared by both FLatten families: classifier vs backbone role, freezing, checkpointing.

A family subclass builds its layers, then calls `_init_role`. It implements `_stage_maps` (NCHW-shaped
outputs of stages 0..last, before output norms; channels-last views of the stage tokens, so no
copy is made until an output is emitted as a contiguous NCHW map), `_classifier_tokens` and the module lists for
freezing. In the classifier role the model's key names equal the released checkpoints'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .feature_info import FeatureInfo
from .layers.nchw_output import to_nchw

__all__ = ["STAGE_REDUCTIONS", "PyramidModel", "init_transformer_weights"]

STAGE_REDUCTIONS = (4, 8, 16, 32)


class PyramidModel(nn.Module):
    """Base of FlattenSwin and FlattenPVT. `forward` gives logits (classifier) or NCHW maps (backbone)."""

    stage_channels: tuple[int, ...]
    grad_checkpointing: bool = False

    def _init_role(
        self,
        *,
        num_classes: int,
        out_indices: Sequence[int] | None,
        frozen_stages: int,
        with_cp: bool,
        out_norm: bool,
        num_features: int,
        norm_eps: float,
    ) -> None:
        """Classifier (out_indices None): a `head` (the family adds its final norm, if it has one).

        Backbone: per-output norms `out_norms` (Identity when `out_norm` is False).
        """
        self.grad_checkpointing = with_cp
        self.is_classifier = out_indices is None
        if self.is_classifier:
            self.num_classes = num_classes
            self.head = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()
            self.head.apply(init_transformer_weights)
            out_indices = (len(self.stage_channels) - 1,)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(not 0 <= i < len(self.stage_channels) for i in out_indices):
            raise ValueError(
                f"out_indices {out_indices} must be a non-empty subset of 0..{len(self.stage_channels) - 1}"
            )
        self.out_indices = out_indices
        self.feature_info = FeatureInfo(tuple(self.stage_channels), STAGE_REDUCTIONS, out_indices)
        if not self.is_classifier:
            self.out_norms = nn.ModuleDict(
                {
                    str(i): nn.LayerNorm(self.stage_channels[i], eps=norm_eps) if out_norm else nn.Identity()
                    for i in out_indices
                }
            )
        self.frozen_stages = frozen_stages
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


def init_transformer_weights(module: nn.Module) -> None:
    """Truncated-normal linear weights, zero biases, unit LayerNorms (as the released models train)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
