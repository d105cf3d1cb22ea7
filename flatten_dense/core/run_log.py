"""CSV logs that a resumed run continues, instead of a new version that repeats the killed steps.

`RunCSVLogger(..., version=N, continue_before_step=G)` keeps the rows of `logs/version_N/metrics.csv`
logged before step G (the steps the resumed checkpoint holds) and appends after them; Lightning's
writer would delete the file. `latest_version` finds N.
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

__all__ = ["RunCSVLogger", "latest_version"]


def latest_version(log_root: Path) -> int | None:
    """The highest N of `log_root/version_N`, or None."""
    numbers = [int(m.group(1)) for p in log_root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(numbers) if numbers else None


def _step(row: dict[str, str]) -> float:
    try:
        return float(row.get("step") or "nan")
    except ValueError:
        return float("nan")


class _ContinuedWriter(ExperimentWriter):
    def __init__(self, log_dir: str, *, before_step: int) -> None:
        self.before_step = before_step
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as file:
            reader = csv.DictReader(file)
            keys = list(reader.fieldnames or [])
            rows = [row for row in reader if _step(row) < self.before_step]
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(temporary, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(temporary, path)
        self.metrics_keys = keys


class RunCSVLogger(CSVLogger):
    """`CSVLogger`; with `continue_before_step` it continues the version's metrics file (see module doc)."""

    def __init__(self, *args: Any, continue_before_step: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.continue_before_step = continue_before_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        if self.continue_before_step is None:
            return super().experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _ContinuedWriter(self.log_dir, before_step=self.continue_before_step)
        return self._experiment
