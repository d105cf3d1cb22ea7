"""Datasets checked at start-up, before the first step: what every task's check shares.

A task's check (`detection/data_check.py`, `segmentation/data_check.py`) reads each sample's
headers (file exists, opens, has the size its annotation says, labels in range) in a thread pool
and returns a `DataReport`. The DataModule applies it when it builds the split's dataset:

- `skip_bad_samples=False` (default): the first problem is one `ValueError` line naming the file
  (and the annotation id) and how many more there are;
- `skip_bad_samples=True`: bad samples are left out, and a sample that still fails to decode
  later is replaced by the next good one. Both are counted: `core/skipped_samples.py` carries the
  decode failures from the DataLoader workers to the main process with the batches and warns once
  per epoch and split (how many, the first few files).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch.utils.data import Dataset

__all__ = [
    "DataReport",
    "Problem",
    "SkippingDataset",
    "apply_report",
    "decode_problem",
    "check_threads",
    "header_reason",
    "parallel_map",
    "REPORT_HEADER",
    "report_table",
]

log = logging.getLogger(__name__)

R = TypeVar("R")
FIRST_SHOWN = 3


@dataclass(frozen=True)
class Problem:
    """One bad sample: the file, the annotation (when one is to blame) and what is wrong."""

    index: int  # the sample's index in the dataset
    file: str
    message: str
    annotation: int | str | None = None

    def line(self) -> str:
        where = f" (annotation {self.annotation})" if self.annotation is not None else ""
        return f"{self.file}{where}: {self.message}"


@dataclass
class DataReport:
    """What a split's check found; `problems` holds every bad sample (first problem each)."""

    split: str
    source: str  # the annotation file or the image folder
    samples: int
    annotations: int  # detection: instances; segmentation: label files
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0
    refusal: str | None = None  # a whole-split problem (no images, no ground truth)

    @property
    def bad_indices(self) -> set[int]:
        return {p.index for p in self.problems}

    @property
    def ok(self) -> bool:
        return not self.problems and self.refusal is None

    def first_error(self) -> str:
        """The one line a run stops with."""
        if not self.problems:
            return str(self.refusal)
        more = len(self.bad_indices) - 1
        tail = (
            f" (+{more} more bad sample(s) in {self.split}; data.skip_bad_samples=true skips them, "
            "`flatten-dense check-data CONFIG` lists them)"
            if more
            else " (data.skip_bad_samples=true skips it)"
        )
        return f"bad {self.split} sample: {self.problems[0].line()}{tail}"


def check_threads() -> int:
    """Workers for the checks: up to 8, never more than the CPUs."""
    return max(1, min(8, os.cpu_count() or 1))


_WORK: Callable[[int], Any] | None = None  # the function forked processes run (inherited, never pickled)


def _run_chunk(bounds: tuple[int, int]) -> list[Any]:
    assert _WORK is not None
    return [_WORK(i) for i in range(*bounds)]


def parallel_map(fn: Callable[[int], R], count: int, *, threads: int | None = None, processes: bool = False) -> list[R]:
    """`[fn(i) for i in range(count)]`, in order, spread over workers.

    Threads suit work that releases the GIL (PNG decodes, slow file systems); `processes=True`
    forks workers for pure-Python work (header parsing, annotation checks). Small inputs, one
    worker, or no `fork` on the platform: a plain loop.
    """
    global _WORK
    workers = check_threads() if threads is None else threads
    if workers <= 1 or count < 256:
        return [fn(i) for i in range(count)]
    if processes:
        if "fork" not in multiprocessing.get_all_start_methods():
            return [fn(i) for i in range(count)]
        step = -(-count // (workers * 4))
        chunks = [(start, min(count, start + step)) for start in range(0, count, step)]
        _WORK = fn
        try:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                return [r for chunk in pool.map(_run_chunk, chunks) for r in chunk]
        finally:
            _WORK = None
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, range(count), chunksize=max(1, count // (workers * 8))))


def header_reason(error: Exception, path: Any) -> str:
    """An image-reading error as the reason alone (the report names the file itself)."""
    if isinstance(error, FileNotFoundError):
        return "file not found"
    text = str(error)
    text = text.split(f"{path}: ", 1)[1] if f"{path}: " in text else text
    return text.replace(f" '{path}'", "")  # PIL: "cannot identify image file '<path>'"


def timed(fn: Callable[[], DataReport]) -> DataReport:
    start = time.perf_counter()
    report = fn()
    report.seconds = time.perf_counter() - start
    return report


def decode_problem(index: int, files: Sequence[str], error: Exception) -> Problem:
    """A sample that failed to decode, as a `Problem`: the file named in the error (else its first
    file), the reason without that path, and the annotation id when the error names one."""
    text = " ".join(str(error).split())
    file = next((f for f in files if f and f in text), files[0] if files else "?")
    annotation = re.search(r"annotation (\S+) of image", text)
    reason = text.split(f"{file}: ", 1)[1] if f"{file}: " in text else text
    return Problem(index, file, reason, annotation.group(1) if annotation else None)


class SkippingDataset(Dataset):
    """A dataset without the samples the start-up check found bad (`left_out`); a sample that fails
    to decode later is replaced by the next good one and recorded.

    The records travel as `core/skipped_samples.py` describes: `take_failed()` (in the process that
    read the samples, e.g. a DataLoader worker) -> the batch -> `record()` (main process) ->
    `take_epoch()` for the epoch's warning. Attributes of the wrapped dataset (class names,
    category ids, ...) read through.
    """

    _OWN = ("dataset", "indices", "split", "source", "left_out", "_failed", "_received")

    def __init__(self, dataset: Any, left_out: Iterable[Problem] = (), *, split: str, source: str = "") -> None:
        self.dataset = dataset
        self.split = split
        self.source = source
        self.left_out: tuple[Problem, ...] = tuple(left_out)
        bad = {p.index for p in self.left_out}
        self.indices = [i for i in range(len(dataset)) if i not in bad]
        self._failed: list[Problem] = []  # decode failures in this process, not yet taken
        self._received: list[Problem] = []  # decode failures the main process got this epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getattr__(self, name: str) -> Any:
        if name in SkippingDataset._OWN:  # not set yet (e.g. while unpickling)
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> Any:
        for step in range(len(self.indices)):
            position = (index + step) % len(self.indices)
            original = self.indices[position]
            try:
                return self.dataset[original]
            except Exception as error:  # skip_bad_samples: a decode failure skips the sample
                files = self.dataset.sample_files(original) if hasattr(self.dataset, "sample_files") else ()
                self._failed.append(decode_problem(original, [str(f) for f in files], error))
        raise ValueError(f"every {self.split} sample failed to load")

    def take_failed(self) -> tuple[Problem, ...]:
        """The decode failures this process has seen since the last call."""
        failed, self._failed = tuple(self._failed), []
        return failed

    def record(self, failed: Iterable[Problem]) -> None:
        """Main process: decode failures that arrived with a batch."""
        self._received.extend(failed)

    def take_epoch(self) -> list[Problem]:
        """Main process: the decode failures recorded since the last call (one epoch's)."""
        received, self._received = self._received, []
        return received


def apply_report(dataset: Any, report: DataReport, *, skip_bad_samples: bool) -> Any:
    """The dataset a run uses, or ValueError (one line) for a problem the run must not start with."""
    if report.refusal is not None:
        raise ValueError(report.refusal)
    if report.problems and not skip_bad_samples:
        raise ValueError(report.first_error())
    if not skip_bad_samples:
        return dataset
    if len(report.bad_indices) >= len(dataset):
        raise ValueError(f"every {report.split} sample of {report.source} is bad, e.g. {report.problems[0].line()}")
    first = {}  # the first problem of each bad sample: what the epoch warnings name
    for problem in report.problems:
        first.setdefault(problem.index, problem)
    if first:  # the warning comes with every epoch (core/skipped_samples.py); this says it at start-up
        log.info("data.skip_bad_samples: leaving out %d of %d %s sample(s)", len(first), len(dataset), report.split)
    return SkippingDataset(dataset, first.values(), split=report.split, source=report.source)


def report_table(reports: Sequence[DataReport]) -> list[tuple[Any, ...]]:
    """Rows (split, source, samples, annotations, bad samples, problems, seconds, verdict)."""
    rows = []
    for r in reports:
        verdict = "ok" if r.ok else ("refused" if r.refusal and not r.problems else "BAD")
        rows.append(
            (r.split, r.source, r.samples, r.annotations, len(r.bad_indices), len(r.problems), r.seconds, verdict)
        )
    return rows


REPORT_HEADER = ("split", "source", "samples", "annotations", "bad samples", "problems", "seconds", "verdict")
