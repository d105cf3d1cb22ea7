"""The `model` section of a detection config: checked against the builder and the detector, then built.

Shape: {detector: mask_rcnn, num_classes: 80, backbone: {name: flatten_pvt_t, pretrained: ..., ...},
fpn_channels: 256, test_min_size: 800, <options of the torchvision detector>, ...}.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from flatten_dense.core.backbone_section import backbone_keys, backbone_problems, split_backbone_section
from flatten_dense.core.config import kwargs_problems
from flatten_dense.core.suggest import suggest
from flatten_dense.detection.builders import build_detector, detector_has_masks, detector_options, list_detectors

__all__ = ["build_detector_from_section", "data_from_detector", "detector_model_keys", "detector_problems"]

# build_detector's own keys a config may set (the rest are set from the other keys)
BUILDER_KEYS = set(inspect.signature(build_detector).parameters) - {
    "name",
    "backbone",
    "pretrained_backbone",
    "backbone_kwargs",
    "detector_kwargs",
}


def detector_problems(model: Mapping[str, Any]) -> list[str]:
    """Every problem of a plain `model` section: detector name, backbone, builder and detector keys."""
    detector = model.get("detector")
    if detector not in list_detectors():
        return [f"'model.detector' must be one of {', '.join(list_detectors())}, got {detector!r}"]
    if "backbone" not in model:
        return ["'model.backbone' is missing"]
    problems = backbone_problems(model["backbone"])
    own = {k: v for k, v in model.items() if k in BUILDER_KEYS}
    problems += kwargs_problems(build_detector, own, where="model")
    allowed = detector_options(detector) | BUILDER_KEYS | {"detector", "backbone"}
    for key in sorted(set(model) - allowed):
        problems.append(f"unknown key 'model.{key}' for {detector}{suggest(key, sorted(allowed))}")
    return problems


def build_detector_from_section(model: Mapping[str, Any]) -> nn.Module:
    """A torchvision detector from a validated `model` section (`num_classes` filled in by the run)."""
    section = dict(model)
    detector = section.pop("detector")
    name, backbone_kwargs = split_backbone_section(section.pop("backbone"))
    pretrained = backbone_kwargs.pop("pretrained", None)
    return build_detector(
        detector, backbone=name, pretrained_backbone=pretrained, backbone_kwargs=backbone_kwargs, **section
    )


def data_from_detector(model: Mapping[str, Any]) -> dict[str, Any]:
    """Data keys the detector decides: masks are loaded exactly when the detector trains on them."""
    return {"with_masks": detector_has_masks(str(model.get("detector")))}


def detector_model_keys() -> set[str]:
    """Every key of a detection `model` section, over all detectors (for the config reference)."""
    options = set().union(*(detector_options(name) for name in list_detectors()))
    return {"detector", *BUILDER_KEYS, *options} | {f"backbone.{key}" for key in backbone_keys()}
