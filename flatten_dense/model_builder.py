"""Build the network a config describes: a detector or a segmentor over a named FLatten backbone.

Config shape (`model` section):
    detection:    {detector: mask_rcnn, num_classes: 80, backbone: {name: flatten_pvt_t, pretrained: ..., ...}, ...}
    segmentation: {decode_head: upernet, num_classes: 150, backbone: {name: ..., ...}, aux_head: true, ...}
Every key is checked against the builder it reaches, so a typo is one clear line, not a traceback.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig
from torch import nn

from .config import ConfigError, check_kwargs, to_container
from .models import create_backbone
from .models.registry import model_spec

__all__ = ["TASKS", "build_model", "build_task_model", "split_backbone_section"]

TASKS = ("detection", "segmentation")


def split_backbone_section(backbone: Any, *, where: str) -> tuple[str, dict[str, Any]]:
    """`model.backbone` mapping -> (registered name, keyword arguments for create_backbone), checked."""
    if not isinstance(backbone, Mapping) or "name" not in backbone:
        raise ConfigError(f"'{where}' must be a mapping with a 'name' (one of the registered backbones)")
    kwargs = dict(backbone)
    name = kwargs.pop("name")
    try:
        family = model_spec(name).family
    except ValueError as error:
        raise ConfigError(f"'{where}.name': {error}") from None
    builder_keys = set(inspect.signature(create_backbone).parameters) - {"name", "kwargs"}
    check_kwargs(create_backbone, {k: v for k, v in kwargs.items() if k in builder_keys}, where=where)
    check_kwargs(family, {k: v for k, v in kwargs.items() if k not in builder_keys}, where=where)
    return name, kwargs


def _check_known(keys: set[str], allowed: set[str], *, where: str, what: str) -> None:
    for key in sorted(keys - allowed):
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"unknown key '{where}.{key}' for {what}{hint}")


def build_task_model(task: str, model: Mapping[str, Any]) -> nn.Module:
    """A detector (task "detection") or segmentor ("segmentation") from a plain `model` section."""
    section = dict(model)
    if "backbone" not in section:
        raise ConfigError("'model.backbone' is missing")
    name, backbone_kwargs = split_backbone_section(section.pop("backbone"), where="model.backbone")
    if task == "detection":
        from .detection import build_detector, detector_options, list_detectors

        detector = section.pop("detector", None)
        if detector not in list_detectors():
            raise ConfigError(f"'model.detector' must be one of {', '.join(list_detectors())}, got {detector!r}")
        own = {k: v for k, v in section.items() if k in inspect.signature(build_detector).parameters}
        check_kwargs(build_detector, own, where="model")
        builder_keys = set(inspect.signature(build_detector).parameters) - {"name", "backbone", "detector_kwargs"}
        _check_known(set(section) - set(own), detector_options(detector) | builder_keys, where="model", what=detector)
        pretrained = backbone_kwargs.pop("pretrained", None)
        return build_detector(detector, backbone=name, pretrained_backbone=pretrained, backbone_kwargs=backbone_kwargs, **section)
    if task == "segmentation":
        from .segmentation import build_segmentor

        check_kwargs(build_segmentor, section, where="model")
        return build_segmentor(backbone=name, backbone_kwargs=backbone_kwargs, **section)
    raise ConfigError(f"'task' must be one of {', '.join(TASKS)}, got {task!r}")


def build_model(cfg: DictConfig | Mapping[str, Any]) -> nn.Module:
    """The network of a loaded config (its `task` and `model` sections)."""
    task = cfg.get("task")
    if task not in TASKS:
        raise ConfigError(f"'task' must be one of {', '.join(TASKS)}, got {task!r}")
    return build_task_model(task, to_container(cfg.get("model")))
