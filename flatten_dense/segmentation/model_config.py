"""The `model` section of a segmentation config: checked against `build_segmentor`, then built."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flatten_dense.core.backbone_section import backbone_keys, backbone_problems, split_backbone_section
from flatten_dense.core.config import kwargs_problems
from flatten_dense.core.config_keys import parameter_names
from flatten_dense.segmentation.segmentor import EncoderDecoder, build_segmentor

__all__ = ["build_segmentor_from_section", "segmentor_model_keys", "segmentor_problems"]


def segmentor_problems(model: Mapping[str, Any]) -> list[str]:
    """Every problem of a plain `model` section: backbone, then the segmentor's own keys."""
    if "backbone" not in model:
        return ["'model.backbone' is missing"]
    own = {k: v for k, v in model.items() if k != "backbone"}
    return backbone_problems(model["backbone"]) + kwargs_problems(build_segmentor, own, where="model")


def build_segmentor_from_section(model: Mapping[str, Any]) -> EncoderDecoder:
    """An EncoderDecoder from a validated `model` section (`num_classes` filled in by the run)."""
    section = dict(model)
    name, backbone_kwargs = split_backbone_section(section.pop("backbone"))
    if isinstance(section.get("test_scale"), list):
        section["test_scale"] = tuple(section["test_scale"])
    return build_segmentor(backbone=name, backbone_kwargs=backbone_kwargs, **section)


def segmentor_model_keys() -> set[str]:
    """Every key of a segmentation `model` section (for the config reference)."""
    own = parameter_names(build_segmentor, skip=("backbone", "backbone_kwargs"))
    return {*own} | {f"backbone.{key}" for key in backbone_keys()}
