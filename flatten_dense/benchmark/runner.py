"""Run measurements in fresh worker processes (so CPU peak-RSS figures are per measurement).

A baseline source tree (e.g. `git archive <commit> flatten_dense | tar -x -C /tmp/old`) can be
measured in the same run: its worker imports `flatten_dense` (the models) from that tree, and this
tree's benchmark package (the measuring code, whatever the old tree has) loaded from its files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .measure import MeasureOptions, measure
from .worker import RESULT_PREFIX

__all__ = ["run_measurement"]

PACKAGE_DIR = str(Path(__file__).resolve().parents[1])  # .../flatten_dense

BOOTSTRAP = """
import sys
root, package_dir, request = sys.argv[1:4]
if root:
    sys.path.insert(0, root)
import importlib.util
import flatten_dense
if package_dir not in flatten_dense.__path__:
    flatten_dense.__path__.append(package_dir)  # this tree's other helpers (cpu_allocator), after the old ones
bench_dir = package_dir + "/benchmark"
spec = importlib.util.spec_from_file_location(
    "flatten_dense.benchmark", bench_dir + "/__init__.py", submodule_search_locations=[bench_dir]
)
module = importlib.util.module_from_spec(spec)
sys.modules["flatten_dense.benchmark"] = module
spec.loader.exec_module(module)
from flatten_dense.benchmark.worker import main
raise SystemExit(main([request]))
"""


def run_measurement(
    spec: str,
    size: tuple[int, int],
    batch: int,
    options: MeasureOptions,
    *,
    subprocess_per_run: bool = True,
    source_root: str | None = None,
    timeout_s: float = 3600.0,
) -> dict:
    """One measurement, in a fresh process unless `subprocess_per_run` is False (then no baseline)."""
    if not subprocess_per_run:
        if source_root:
            raise ValueError("a baseline source tree needs subprocess_per_run=True")
        try:
            return measure(spec, size, batch, options)
        except Exception as error:
            return {"error": f"{type(error).__name__}: {error}"}
    request = json.dumps({"spec": spec, "size": list(size), "batch": batch, "options": options.__dict__})
    command = [sys.executable, "-c", BOOTSTRAP, source_root or "", PACKAGE_DIR, request]
    env = dict(os.environ)
    env.pop("PYTHONPATH", None) if source_root else None
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"error": f"worker exited with {done.returncode}: {' | '.join(tail)}"}
