"""Config validation, once, at load time: every section against the callable that receives it.

All problems of a file are collected and raised together as one `ConfigError` line, before any
dataset is read or any model is built. Keys that nothing would read are refused too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
from omegaconf import DictConfig

from flatten_dense.core.checkpointing import CheckpointOptions
from flatten_dense.core.config import kwargs_problems, raise_problems, to_container, top_level_problems
from flatten_dense.core.optim import build_optimizer, build_scheduler
from flatten_dense.core.run_logging import LoggingOptions
from flatten_dense.core.task import TaskSpec

__all__ = ["RUN_KEYS", "SET_BY_RUN", "VALIDATED_SECTIONS", "section_receivers", "validate_config"]


# run-level keys: the task's name, the random seed, the run folder
RUN_KEYS: dict[str, type] = {"task": str, "seed": int, "run_dir": str}
# sections checked whole against their receivers (the task may add its own, e.g. `evaluation`)
VALIDATED_SECTIONS = ("model", "data", "trainer", "optimizer", "scheduler", "evaluation", "checkpoint", "logging")
# keys of a section that the run fills in itself: a config setting them would be silently overridden
SET_BY_RUN: dict[str, tuple[str, ...]] = {
    "optimizer": ("model",),
    "scheduler": ("optimizer", "steps_per_epoch", "max_epochs", "max_steps"),
    "trainer": ("use_distributed_sampler", "callbacks", "plugins"),
}


def _section_problems(name: str, section: Any, receiver: Callable[..., Any]) -> list[str]:
    if not isinstance(section, Mapping):
        return [f"'{name}' must be a mapping, got {type(section).__name__} {section!r}"]
    problems = [
        f"'{name}.{key}' is set by the run itself; remove it from the config"
        for key in SET_BY_RUN.get(name, ())
        if key in section
    ]
    checked = {k: v for k, v in section.items() if k not in SET_BY_RUN.get(name, ())}
    return problems + kwargs_problems(receiver, checked, where=name)


def section_receivers(spec: TaskSpec) -> dict[str, Callable[..., Any]]:
    """Each top-level section of a config of this task (but `model`) and the callable that receives it."""
    return {
        "data": spec.datamodule,
        "trainer": L.Trainer,
        "optimizer": build_optimizer,
        "scheduler": build_scheduler,
        "checkpoint": CheckpointOptions,
        "logging": LoggingOptions,
        **spec.sections,
    }


def validate_config(cfg: DictConfig | Mapping[str, Any], *, spec: TaskSpec, source: str | os.PathLike | None) -> None:
    """Raise one ConfigError listing every problem of a loaded config of the task `spec`."""
    plain = to_container(cfg)
    sections = section_receivers(spec)
    problems = top_level_problems(plain, allowed=[*RUN_KEYS, "model", *sections])
    for key, kind in RUN_KEYS.items():
        value = plain.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            problems.append(f"'{key}' must be {kind.__name__}, got {type(value).__name__} {value!r}")
    if "optimizer" not in plain:
        problems.append("the 'optimizer' section is missing")
    for name, receiver in sections.items():
        if plain.get(name) is not None:
            problems += _section_problems(name, plain[name], receiver)
    data = plain.get("data") or {}
    model = plain.get("model")
    if not isinstance(model, Mapping):
        problems.append("the 'model' section is missing or not a mapping")
    else:
        if isinstance(data, Mapping):
            for key in spec.data_from_model(model):
                if key in data:
                    problems.append(f"'data.{key}' is set by the run from the model section; remove it from the config")
        if model.get("num_classes") is None:  # filled in from the dataset
            model = {k: v for k, v in model.items() if k != "num_classes"}
        problems += spec.model_problems(model)
    raise_problems(problems, source=source)
