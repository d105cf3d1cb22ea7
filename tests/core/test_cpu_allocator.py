"""glibc allocator tuning: applied once, switchable off, and harmless where it does not apply."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CHECK = """
from flatten_dense.core import cpu_allocator
first = cpu_allocator.tune_cpu_allocator()
print(first, cpu_allocator.tune_cpu_allocator() is first)
"""


def _run(env_value: str | None) -> str:
    env = dict(os.environ)
    env.pop("FLATTEN_DENSE_MALLOC_TUNING", None)
    if env_value is not None:
        env["FLATTEN_DENSE_MALLOC_TUNING"] = env_value
    return subprocess.run(
        [sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_tuning_applies_once_on_glibc() -> None:
    expected = "True" if platform.libc_ver()[0] == "glibc" else "False"
    assert _run(None) == f"{expected} True"


def test_tuning_can_be_switched_off() -> None:
    assert _run("0") == "False True"
