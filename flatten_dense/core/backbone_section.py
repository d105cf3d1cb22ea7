"""The `model.backbone` section every task shares: a registered name plus its builder's options."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from flatten_dense.core.config import ConfigError, kwargs_problems
from flatten_dense.models import create_backbone
from flatten_dense.models.pyramid_model import PyramidOptions
from flatten_dense.models.registry import MODEL_SPECS, model_spec

__all__ = ["backbone_keys", "backbone_problems", "split_backbone_section"]

BUILDER_KEYS = frozenset(inspect.signature(create_backbone).parameters) - {"name", "kwargs"}


def backbone_problems(backbone: Any, *, where: str = "model.backbone") -> list[str]:
    """Every problem of a backbone section: a missing or unknown name, unknown or mistyped options."""
    if not isinstance(backbone, Mapping) or "name" not in backbone:
        return [f"'{where}' must be a mapping with a 'name' (one of the registered backbones)"]
    options = {k: v for k, v in backbone.items() if k != "name"}
    try:
        family = model_spec(backbone["name"]).family
    except ValueError as error:
        return [f"'{where}.name': {error}"]
    own = {k: v for k, v in options.items() if k in BUILDER_KEYS}
    rest = {k: v for k, v in options.items() if k not in BUILDER_KEYS}
    return kwargs_problems(create_backbone, own, where=where) + kwargs_problems(family, rest, where=where)


def split_backbone_section(backbone: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A validated backbone section -> (registered name, keyword arguments for `create_backbone`)."""
    problems = backbone_problems(backbone)
    if problems:
        raise ConfigError(problems[0])
    kwargs = dict(backbone)
    return kwargs.pop("name"), kwargs


def backbone_keys() -> set[str]:
    """Every key a `model.backbone` section may hold, over all registered families."""
    keys = {"name", *BUILDER_KEYS, *PyramidOptions.__annotations__}
    for family in {spec.family for spec in MODEL_SPECS.values()}:
        keys |= {
            name
            for name, p in inspect.signature(family).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
    return keys - {"options", "num_classes"}  # the class count comes from the model section
