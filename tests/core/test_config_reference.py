"""docs/config_reference.md documents every key a config may set (read off the receivers that
validate configs), and nothing that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

from flatten_dense.core.config_keys import config_keys
from flatten_dense.tasks import TASKS

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "config_reference.md"


def documented_keys(text: str) -> set[str]:
    """The first column of every table row: | `key` | ..."""
    return set(re.findall(r"^\| `([a-z_][a-z0-9_.]*)` \|", text, flags=re.MULTILINE))


def accepted_keys() -> set[str]:
    return config_keys(TASKS, model_keys=lambda name, spec: spec.model_keys())


def test_every_config_key_is_documented() -> None:
    missing = sorted(accepted_keys() - documented_keys(REFERENCE.read_text()))
    assert not missing, f"keys without documentation in {REFERENCE.name}: {missing}"


def test_every_documented_key_exists() -> None:
    stale = sorted(documented_keys(REFERENCE.read_text()) - accepted_keys())
    assert not stale, f"{REFERENCE.name} documents keys nothing accepts: {stale}"


def test_an_undocumented_key_fails_the_check(tmp_path: Path) -> None:
    text = REFERENCE.read_text().replace("| `data.seed` |", "| data seed |")
    assert "data.seed" in accepted_keys() - documented_keys(text)
