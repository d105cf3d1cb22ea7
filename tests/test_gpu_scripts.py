"""tools/gpu_check.sh and tools/gpu_wheels.sh: they parse, and the wheels cover what the check imports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_wheels.sh"])
def test_script_parses(script):
    subprocess.run(["bash", "-n", str(TOOLS / script)], check=True)


def test_the_carried_wheels_are_the_modules_the_check_needs():
    needed = re.search(r'NEEDED="import ([^"]+)"', (TOOLS / "gpu_check.sh").read_text()).group(1)
    modules = {name.strip() for name in needed.split(",")}
    wheels = re.findall(r"([A-Za-z0-9_-]+)==[0-9.]+", (TOOLS / "gpu_wheels.sh").read_text())
    as_modules = {name.replace("-", "_") for name in wheels} - {"antlr4_python3_runtime"}  # omegaconf's own need
    assert modules == as_modules
