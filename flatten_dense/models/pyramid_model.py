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
from .layers.fast_layers import set_fast_layers, set_recompute_attention
from .layers.nchw_output import to_nchw

__all__ = [
    "STAGE_REDUCTIONS",
    "PyramidModel",
    "PyramidOptions",
    "check_attn_types",
    "init_transformer_weights",
    "stage_drop_path_rates",
    "take_indices",
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
    fast_layers: bool
    recompute_attention: bool


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
        fast_layers: bool = True,
        recompute_attention: bool = False,
    ) -> None:
        """Classifier when `out_indices` is None (`num_classes` logits), else a backbone returning the
        maps of those stages, each through its own LayerNorm unless `out_norm` is False. Stem and the
        first `frozen_stages` stages are frozen and kept in eval mode; `with_cp` checkpoints every
        block's activations in training. `fast_layers` (the default) runs the layers of
        `layers/fast_layers.py` (same maths: custom autograd functions that store less in training,
        fused CPU kernels in inference); `set_fast_layers(False)` goes back to the plain forms.
        `recompute_attention` (fast layers only) stores just each attention's input in training and
        recomputes its projections in backward (`set_recompute_attention`)."""
        super().__init__()
        self.is_classifier = out_indices is None
        self.num_classes = num_classes
        self._requested_out_indices = None if out_indices is None else tuple(int(i) for i in out_indices)
        self.frozen_stages = frozen_stages
        self.grad_checkpointing = with_cp
        self.out_norm = out_norm
        self.fast_layers = fast_layers
        self.recompute_attention = recompute_attention

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
        self.set_fast_layers(self.fast_layers)
        self.set_recompute_attention(self.recompute_attention)

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

    def set_fast_layers(self, enable: bool = True) -> None:
        """The one switch between the fast layers (training and inference) and the plain forms."""
        set_fast_layers(self, enable)
        self.fast_layers = enable

    def set_recompute_attention(self, enable: bool = True) -> None:
        """Selective activation checkpointing of the focused linear attentions (fast layers only)."""
        set_recompute_attention(self, enable)
        self.recompute_attention = enable

    def _apply_out_norm(self, index: int, feature: Tensor) -> Tensor:
        """(B, C, H, W) map, usually channels-last in memory -> its output norm, contiguous NCHW."""
        norm = self.out_norms[str(index)]
        return to_nchw(feature, None if isinstance(norm, nn.Identity) else norm, fast=self.fast_layers)

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Classifier: (B, 3, H, W) -> (B, num_classes). Backbone: list of (B, C_i, H/s_i, W/s_i)."""
        if self.is_classifier:
            return self.head(self._classifier_features(x))
        maps = self._stage_maps(x, max(self.out_indices))
        return [self._apply_out_norm(i, maps[i]) for i in self.out_indices]

    def forward_intermediates(
        self,
        x: Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = True,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[Tensor] | tuple[Tensor, list[Tensor]]:
        """timm-style: maps of the requested stages, plus (unless `intermediates_only`) the last map.

        `indices`: stage indices (negative from the end), an int n for the last n stages, or None for
        `out_indices`. `norm` applies the per-output norms where the stage has one (backbone role).
        `stop_early` (and `intermediates_only`) run no stage past the last requested one; the "last
        map" is then that stage's. `output_fmt` is "NCHW" (default) or "NHWC".
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take = self.out_indices if indices is None else take_indices(len(self.stage_channels), indices)
        last_stage = max(take) if stop_early or intermediates_only else self.num_stages_kept() - 1
        maps = self._stage_maps(x, last_stage)
        intermediates = []
        for i in take:
            feature = maps[i]
            if norm and not self.is_classifier and str(i) in self.out_norms:
                feature = self._apply_out_norm(i, feature)
            intermediates.append(
                feature.permute(0, 2, 3, 1).contiguous() if output_fmt == "NHWC" else feature.contiguous()
            )
        if intermediates_only:
            return intermediates
        return maps[-1].contiguous(), intermediates

    # ----- timm's classifier interface -----
    @property
    def num_features(self) -> int:
        """Channels of the pooled features the head sees."""
        return self.stage_channels[-1]

    def num_stages_kept(self) -> int:
        """Stages that still run (`prune_intermediate_layers` drops the later ones)."""
        return getattr(self, "_kept_stages", len(self.stage_channels))

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C) pooled (and, where the released model does, normed) features: the head's input."""
        return self._classifier_features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """The classifier head on `forward_features`' output (`pre_logits`: the features themselves)."""
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new (truncated-normal) head of `num_classes` outputs; 0 gives pooled features. Classifier role."""
        if not self.is_classifier:
            raise RuntimeError("reset_classifier: this model is a backbone (out_indices given), it has no head")
        if global_pool not in (None, "avg"):
            raise ValueError(f"global_pool {global_pool!r}: these models pool by averaging only ('avg')")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(init_transformer_weights)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """timm-style: drop the stages after the last of `indices` (and the head / final norm).

        Returns the absolute stage indices. The dropped stages' modules become `nn.Identity` (their
        parameters leave the model, so DDP sees none unused).
        """
        take = take_indices(len(self.stage_channels), indices)
        last = max(take)
        for index in range(last + 1, len(self.stage_channels)):
            for item in self._stage_modules(index):
                self._drop_item(item)
        self._after_prune(last)
        self._kept_stages = last + 1
        if self.is_classifier:
            if prune_head:
                self.reset_classifier(0)
            if prune_norm and hasattr(self, "norm"):
                self.norm = nn.Identity()
        return take

    def _after_prune(self, last_stage: int) -> None:
        """A family hook: drop what stage `last_stage` holds for the stages after it."""
        layers = getattr(self, "layers", None)  # Swin: a stage's patch merging feeds the next one
        if isinstance(layers, nn.ModuleList) and hasattr(layers[last_stage], "downsample"):
            layers[last_stage].downsample = None

    def _drop_item(self, item: nn.Module | nn.Parameter) -> None:
        for module in self.modules():
            for name, child in list(module.named_children()):
                if child is item:
                    setattr(module, name, nn.Identity())
            for name, param in list(module.named_parameters(recurse=False)):
                if param is item:
                    module.register_parameter(name, None)

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


def take_indices(num_stages: int, indices: int | Sequence[int]) -> list[int]:
    """timm's index convention: an int n is the last n stages; negative indices count from the end."""
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"last-n indices {indices} out of range 1..{num_stages}")
        return list(range(num_stages - indices, num_stages))
    take = [i + num_stages if i < 0 else i for i in indices]
    if not take or any(not 0 <= i < num_stages for i in take):
        raise ValueError(f"indices {tuple(indices)} must be a non-empty subset of 0..{num_stages - 1} (or negative)")
    return take


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
