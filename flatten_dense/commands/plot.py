"""`flatten-dense plot RUN_DIR [--out FILE]`: a run's curves from its CSV log, in one PNG.

Reads `RUN_DIR/logs/version_*/metrics.csv` (Lightning's CSVLogger; versions in order, a later
version replacing the steps it repeats) and draws three panels against the training step: the
loss and its components (`train/*`), the learning rate of every parameter group (`lr-*`), and
the validation metrics (`val/*`; COCO's per-size and recall entries are left out to keep the
panel readable). Written to `RUN_DIR/curves.png` unless `--out` says otherwise.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from pathlib import Path

from flatten_dense.core.config import ConfigError
from flatten_dense.core.run_logging import DETAIL_METRICS

__all__ = ["plot_run", "read_run_log"]

Series = dict[str, tuple[list[float], list[float]]]  # name -> (steps, values)


def _version_number(path: Path) -> int:
    match = re.fullmatch(r"version_(\d+)", path.parent.name)
    return int(match.group(1)) if match else -1


def _float(text: str | None) -> float | None:
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def read_run_log(run_dir: str | Path) -> list[dict[str, float]]:
    """The rows of a run's CSV log (numbers only, empty cells left out), oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    files = sorted(run_dir.glob("logs/version_*/metrics.csv"), key=_version_number)
    if not files:
        raise ConfigError(f"no CSV log in {run_dir} (expected logs/version_*/metrics.csv)")
    rows: list[dict[str, float]] = []
    for path in files:
        with open(path, newline="") as file:
            cells = [{name: _float(text) for name, text in row.items()} for row in csv.DictReader(file)]
        version = [{name: value for name, value in row.items() if value is not None} for row in cells]
        steps = [row["step"] for row in version if "step" in row]
        if steps:  # a later version (a restart) replaces the steps it logs again
            first = min(steps)
            rows = [row for row in rows if row.get("step", -1) < first]
        rows += version
    return rows


def _series(rows: Sequence[dict[str, float]]) -> Series:
    series: Series = {}
    for row in rows:
        if "step" not in row:
            continue
        for name, value in row.items():
            if name in ("step", "epoch"):
                continue
            steps, values = series.setdefault(name, ([], []))
            steps.append(row["step"])
            values.append(value)
    return series


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw the run's curves; returns the PNG's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    series = _series(read_run_log(run_dir))
    panels = [
        ("training losses", [n for n in series if n.startswith("train/")], True),
        ("learning rate", [n for n in series if n.startswith("lr-")], False),
        ("validation", [n for n in series if n.startswith("val/") and not DETAIL_METRICS.search(n)], False),
    ]
    panels = [panel for panel in panels if panel[1]]
    if not panels:
        raise ConfigError(f"the CSV log of {run_dir} holds no train/, lr- or val/ columns")
    figure, axes = plt.subplots(len(panels), 1, figsize=(9, 3.2 * len(panels)), sharex=True, squeeze=False)
    for axis, (title, names, log_scale) in zip(axes[:, 0], panels):
        for name in sorted(names):
            steps, values = series[name]
            marker = "o" if len(steps) < 30 else None
            axis.plot(steps, values, label=name, marker=marker, markersize=3, linewidth=1.2)
        if log_scale and all(v > 0 for n in names for v in series[n][1]):
            axis.set_yscale("log")
        axis.set_title(title, fontsize=10, loc="left")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    axes[-1, 0].set_xlabel("training step")
    figure.suptitle(f"{run_dir.name}: {run_dir}", fontsize=10)
    figure.tight_layout()
    out = Path(out) if out is not None else run_dir / "curves.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return out
