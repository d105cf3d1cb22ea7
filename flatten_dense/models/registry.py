"""The model zoo: a closed dict of named architectures, and the two public builders."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import load_pretrained
from .flatten_cswin import FlattenCSWin
from .flatten_pvt import FlattenPVT
from .flatten_swin import FlattenSwin
from .pyramid_model import PyramidModel

__all__ = ["MODEL_SPECS", "ModelSpec", "create_backbone", "create_classifier", "list_models", "model_spec"]

PVT_DIMS = {"embed_dims": (64, 128, 320, 512), "num_heads": (1, 2, 5, 8), "mlp_ratios": (8, 8, 4, 4)}  # v1, v2 b1-b4
SWIN_T_S = {"embed_dim": 96, "num_heads": (3, 6, 12, 24)}
SWIN_B = {"embed_dim": 128, "depths": (2, 2, 18, 2), "num_heads": (4, 8, 16, 32), "drop_path_rate": 0.5}
CSWIN_T_S = {"embed_dim": 64, "num_heads": (2, 4, 8, 16)}
CSWIN_B = {"embed_dim": 96, "depths": (3, 6, 29, 2), "num_heads": (4, 8, 16, 32)}
# Fine-tuned at 384: every stage's map is 384 / 224 times larger. Swin: linear window 96 (global at
# 384), softmax window 12. CSWin: softmax stripes 12; the released tables are those of 56- and
# 28-wide linear stripes on the 96 and 48 maps (two branches each), which run globally here.
AT_384 = {"pretrain_image_size": 384}


@dataclass(frozen=True)
class ModelSpec:
    family: type[PyramidModel]
    kwargs: dict[str, Any] = field(default_factory=dict)


def _pvt(version: int, depths: tuple[int, ...], drop_path_rate: float, **dims: Any) -> ModelSpec:
    return ModelSpec(FlattenPVT, {"version": version, "depths": depths, "drop_path_rate": drop_path_rate, **dims})


MODEL_SPECS: dict[str, ModelSpec] = {
    "flatten_swin_t": ModelSpec(FlattenSwin, {**SWIN_T_S, "depths": (2, 2, 6, 2), "drop_path_rate": 0.2}),
    "flatten_swin_s": ModelSpec(FlattenSwin, {**SWIN_T_S, "depths": (2, 2, 18, 2), "drop_path_rate": 0.3}),
    "flatten_swin_b": ModelSpec(FlattenSwin, SWIN_B),
    "flatten_swin_b_384": ModelSpec(
        FlattenSwin, {**SWIN_B, **AT_384, "pretrain_linear_window": 96, "softmax_window": 12}
    ),
    "flatten_pvt_t": _pvt(1, (2, 2, 2, 2), 0.1, **PVT_DIMS),
    "flatten_pvt_s": _pvt(1, (3, 4, 6, 3), 0.1, **PVT_DIMS),
    "flatten_pvt_m": _pvt(1, (3, 4, 18, 3), 0.1, **PVT_DIMS),
    "flatten_pvt_l": _pvt(1, (3, 8, 27, 3), 0.1, **PVT_DIMS),
    "flatten_pvt_v2_b0": _pvt(
        2, (2, 2, 2, 2), 0.1, embed_dims=(32, 64, 160, 256), num_heads=(1, 2, 5, 8), mlp_ratios=(8, 8, 4, 4)
    ),
    "flatten_pvt_v2_b1": _pvt(2, (2, 2, 2, 2), 0.1, **PVT_DIMS),
    "flatten_pvt_v2_b2": _pvt(2, (3, 4, 6, 3), 0.1, **PVT_DIMS),
    "flatten_pvt_v2_b3": _pvt(2, (3, 4, 18, 3), 0.2, **PVT_DIMS),
    "flatten_pvt_v2_b4": _pvt(2, (3, 8, 27, 3), 0.3, **PVT_DIMS),
    "flatten_pvt_v2_b5": _pvt(2, (3, 6, 40, 3), 0.3, **{**PVT_DIMS, "mlp_ratios": (4, 4, 4, 4)}),
    "flatten_cswin_t": ModelSpec(FlattenCSWin, {**CSWIN_T_S, "depths": (2, 4, 18, 1), "drop_path_rate": 0.2}),
    "flatten_cswin_s": ModelSpec(FlattenCSWin, {**CSWIN_T_S, "depths": (2, 4, 32, 2), "drop_path_rate": 0.4}),
    "flatten_cswin_b": ModelSpec(FlattenCSWin, {**CSWIN_B, "drop_path_rate": 0.5}),
    "flatten_cswin_b_384": ModelSpec(
        FlattenCSWin, {**CSWIN_B, **AT_384, "drop_path_rate": 0.7, "stripe_widths": (1, 2, 12, 12)}
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
    use_ema: bool = False,
    **kwargs: Any,
) -> PyramidModel:
    """A dense-prediction backbone: `model(images)` -> list of NCHW maps (strides 4, 8, 16, 32).

    `pretrained` is a released ImageNet checkpoint (or one of ours); its head and final norm are
    dropped. `use_ema` loads the file's EMA weights (`state_dict_ema`, which the CSWin files hold)
    instead of its `model`. `drop_path_rate=None` keeps the model's ImageNet value. Other keyword
    arguments go to the family (e.g. `linear_window`, `linear_stripes`, `attn_types`, `out_norm`).
    """
    model = _build(
        name,
        {
            "out_indices": tuple(out_indices),
            "frozen_stages": frozen_stages,
            "drop_path_rate": drop_path_rate,
            "with_cp": with_cp,
            **kwargs,
        },
    )
    if pretrained is not None:
        load_pretrained(model, pretrained, use_ema=use_ema)
    return model


def create_classifier(
    name: str,
    *,
    num_classes: int = 1000,
    pretrained: str | Path | None = None,
    use_ema: bool = False,
    **kwargs: Any,
) -> PyramidModel:
    """The ImageNet classifier exactly as released (same key names and logits).

    `use_ema` loads the file's EMA weights (`state_dict_ema`) instead of its `model`.
    """
    model = _build(name, {"num_classes": num_classes, "out_indices": None, **kwargs})
    if pretrained is not None:
        load_pretrained(model, pretrained, use_ema=use_ema)
    return model
