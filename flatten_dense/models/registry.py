"""The model zoo: a closed dict of named architectures, and the two public builders."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import load_pretrained
from .flatten_pvt import FlattenPVT
from .flatten_swin import FlattenSwin
from .pyramid_model import PyramidModel

__all__ = ["MODEL_SPECS", "ModelSpec", "create_backbone", "create_classifier", "list_models", "model_spec"]

PVT_DIMS = dict(embed_dims=(64, 128, 320, 512), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4))  # v1 and v2 b1-b4


@dataclass(frozen=True)
class ModelSpec:
    family: type[PyramidModel]
    kwargs: dict[str, Any] = field(default_factory=dict)


MODEL_SPECS: dict[str, ModelSpec] = {
    "flatten_swin_t": ModelSpec(
        FlattenSwin, dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2)
    ),
    "flatten_swin_s": ModelSpec(
        FlattenSwin, dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3)
    ),
    "flatten_swin_b": ModelSpec(
        FlattenSwin, dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5)
    ),
    "flatten_pvt_t": ModelSpec(FlattenPVT, dict(version=1, depths=(2, 2, 2, 2), drop_path_rate=0.1, **PVT_DIMS)),
    "flatten_pvt_s": ModelSpec(FlattenPVT, dict(version=1, depths=(3, 4, 6, 3), drop_path_rate=0.1, **PVT_DIMS)),
    "flatten_pvt_m": ModelSpec(FlattenPVT, dict(version=1, depths=(3, 4, 18, 3), drop_path_rate=0.1, **PVT_DIMS)),
    "flatten_pvt_l": ModelSpec(FlattenPVT, dict(version=1, depths=(3, 8, 27, 3), drop_path_rate=0.1, **PVT_DIMS)),
    "flatten_pvt_v2_b0": ModelSpec(
        FlattenPVT,
        dict(
            version=2,
            embed_dims=(32, 64, 160, 256),
            num_heads=(1, 2, 5, 8),
            mlp_ratios=(8, 8, 4, 4),
            depths=(2, 2, 2, 2),
            drop_path_rate=0.1,
        ),
    ),
    "flatten_pvt_v2_b1": ModelSpec(FlattenPVT, dict(version=2, depths=(2, 2, 2, 2), drop_path_rate=0.1, **PVT_DIMS)),
    "flatten_pvt_v2_b2": ModelSpec(FlattenPVT, dict(version=2, depths=(3, 4, 6, 3), drop_path_rate=0.1, **PVT_DIMS)),
    "flatten_pvt_v2_b3": ModelSpec(FlattenPVT, dict(version=2, depths=(3, 4, 18, 3), drop_path_rate=0.2, **PVT_DIMS)),
    "flatten_pvt_v2_b4": ModelSpec(FlattenPVT, dict(version=2, depths=(3, 8, 27, 3), drop_path_rate=0.3, **PVT_DIMS)),
    "flatten_pvt_v2_b5": ModelSpec(
        FlattenPVT,
        dict(
            version=2,
            embed_dims=(64, 128, 320, 512),
            num_heads=(1, 2, 5, 8),
            mlp_ratios=(4, 4, 4, 4),
            depths=(3, 6, 40, 3),
            drop_path_rate=0.3,
        ),
    ),
}


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob pattern, sorted."""
    return sorted(name for name in MODEL_SPECS if fnmatch.fnmatch(name, pattern))


def model_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def _build(name: str, overrides: dict[str, Any]) -> PyramidModel:
    spec = model_spec(name)
    kwargs = {**spec.kwargs, **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return spec.family(**kwargs)
    except TypeError as error:
        raise TypeError(f"{name}: {error}") from None


def create_backbone(
    name: str,
    *,
    pretrained: str | Path | None = None,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    frozen_stages: int = -1,
    drop_path_rate: float | None = None,
    with_cp: bool = False,
    **kwargs: Any,
) -> PyramidModel:
    """A dense-prediction backbone: `model(images)` -> list of NCHW maps (strides 4, 8, 16, 32).

    `pretrained` is a released ImageNet checkpoint (or one of ours); its head and final norm are
    dropped. `drop_path_rate=None` keeps the model's ImageNet value. Other keyword arguments go to
    the family (e.g. `linear_window`, `attn_types`, `out_norm`).
    """
    model = _build(
        name,
        dict(
            out_indices=tuple(out_indices),
            frozen_stages=frozen_stages,
            drop_path_rate=drop_path_rate,
            with_cp=with_cp,
            **kwargs,
        ),
    )
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model


def create_classifier(
    name: str, *, num_classes: int = 1000, pretrained: str | Path | None = None, **kwargs: Any
) -> PyramidModel:
    """The ImageNet classifier exactly as released (same key names and logits)."""
    model = _build(name, dict(num_classes=num_classes, out_indices=None, **kwargs))
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model
