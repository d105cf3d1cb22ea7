"""Helpers the commands share: run-level options, JSON and table output, input files."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flatten_dense.core.config import ConfigError

__all__ = ["format_table", "pop_option", "require_file", "writable_dir", "write_json"]


def pop_option(overrides: list[str], key: str) -> tuple[str | None, list[str]]:
    """Take a run-level `key=value` (e.g. resume=PATH) out of the config overrides."""
    value, rest = None, []
    for item in overrides:
        if item.startswith(f"{key}="):
            value = item.split("=", 1)[1]
        else:
            rest.append(item)
    return value, rest


def write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=float) + "\n")


def format_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain aligned text table; floats get 4 decimals, NaN shows as '-'."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "-" if math.isnan(value) else f"{value:.4f}"
        return str(value)

    table = [list(map(str, header))] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    return path


def writable_dir(path: str | Path, what: str) -> Path:
    """Create the folder `path` if need be and prove it writable, before any work starts.

    ConfigError (one line naming `what` and the path) for a file in the way, a read-only or
    virtual file system (/sys, /proc) or a missing permission.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as error:
        raise ConfigError(f"{what} {path} cannot be written: {error.strerror or error}") from None
    return path
