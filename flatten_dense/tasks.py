"""The task registry: the one place that maps a config's `task` to its code.

Adding a task is one folder (data, model, metric, LightningModule, pictures and a `SPEC`) plus
one line here; the build path (commands/build.py), the commands and the CLI read this dict and
nothing else.
"""

from __future__ import annotations

from flatten_dense import detection, segmentation
from flatten_dense.core.config import ConfigError
from flatten_dense.core.task import TaskSpec

__all__ = ["TASKS", "task_spec"]

TASKS: dict[str, TaskSpec] = {
    "detection": detection.SPEC,
    "segmentation": segmentation.SPEC,
}


def task_spec(name: object) -> TaskSpec:
    """The spec of a config's `task` value (ConfigError naming the choices otherwise)."""
    if name not in TASKS:
        raise ConfigError(f"'task' must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[name]
