"""`flatten-dense check-data CONFIG [key=value ...] [--threads N] [--show N]`.

Runs the start-up check of every split of the config's dataset (the same check `train` and
`test` run before their first step) and prints a summary table, then the first problems, one
line each. Exits 2 with one line on stderr when a split has bad samples (unless
`data.skip_bad_samples=true`, which would leave them out) or is refused whole (empty, no ground truth).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from flatten_dense.commands.build import build_datamodule, load_run
from flatten_dense.commands.common import format_table
from flatten_dense.core.data_check import REPORT_HEADER, DataReport, report_table

__all__ = ["check_data", "splits_to_check"]

SPLITS = ("train", "val", "test")


def splits_to_check(datamodule: object) -> list[str]:
    """train, val and test, without test when it reads the same files as val."""
    names = getattr(datamodule, "splits", {})
    return [
        s
        for s in SPLITS
        if not (s == "test" and names.get("test") is not None and names.get("test") == names.get("val"))
    ]


def check_data(
    config: str | Path, overrides: Sequence[str] = (), *, threads: int | None = None, show: int = 20
) -> list[DataReport]:
    """Check every split of a config's data; print the table and the first `show` problems."""
    run = load_run(config, list(overrides), create_run_dir=False)
    datamodule = build_datamodule(run)
    if threads is not None:
        datamodule.check_threads = threads
    start = time.perf_counter()
    reports = [datamodule.check(split) for split in splits_to_check(datamodule)]
    total = time.perf_counter() - start
    print(format_table(report_table(reports), REPORT_HEADER))
    print(f"\nchecked in {total:.2f} s (reading the annotation files included)")
    problems = [p for r in reports for p in r.problems]
    for report in reports:
        if report.refusal:
            print(f"refused {report.split}: {report.refusal}")
    for problem in problems[:show]:
        print(f"bad: {problem.line()}")
    if len(problems) > show:
        print(f"... and {len(problems) - show} more")
    refused = [r for r in reports if r.refusal]
    skip = bool(getattr(datamodule, "skip_bad_samples", False))
    bad_samples = sum(len(r.bad_indices) for r in reports)
    if refused:
        raise ValueError(refused[0].refusal)
    if problems and not skip:
        first = next(r for r in reports if r.problems)
        raise ValueError(
            f"{bad_samples} bad sample(s) in {run.source}'s data (first: {first.problems[0].line()}); "
            "fix them or set data.skip_bad_samples=true"
        )
    if problems:
        print(f"data.skip_bad_samples=true: a run leaves these {bad_samples} sample(s) out")
    return reports
