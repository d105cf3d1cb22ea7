"""Every config key a user can set, read off the callables that receive them.

The same receivers validate a config (`core/validate.py`), so this list cannot drift from what is
accepted; `docs/config_reference.md` documents each key and a test keeps the two equal.
`trainer` takes any keyword of `lightning.Trainer` and is documented by Lightning.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from flatten_dense.core.validate import RUN_KEYS, SET_BY_RUN, section_receivers

__all__ = ["config_keys", "parameter_names"]


def parameter_names(fn: Callable[..., Any], *, skip: Iterable[str] = ()) -> list[str]:
    """The keyword parameters of a callable (a class: its __init__), without *args/**kwargs."""
    skipped = {"self", *skip}
    return [
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in skipped
    ]


def config_keys(tasks: dict, *, model_keys: Callable[[str, Any], Iterable[str]]) -> set[str]:
    """Dotted keys over every task: run-level keys, each section's receiver keys (not `trainer`) and
    the model keys `model_keys(task_name, spec)` gives (they depend on the task's builders)."""
    keys = set(RUN_KEYS)
    for name, spec in tasks.items():
        for section, receiver in section_receivers(spec).items():
            if section == "trainer":
                continue
            set_by_run = set(SET_BY_RUN.get(section, ()))
            if section == "data":  # keys the run derives from the model section
                set_by_run |= set(spec.data_from_model({}))
            keys |= {f"{section}.{key}" for key in parameter_names(receiver, skip=set_by_run)}
        keys |= {f"model.{key}" for key in model_keys(name, spec)}
    return keys
