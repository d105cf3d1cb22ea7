"""The start-up check of an ADE20K-layout split: every image header and every label's pixels.

Per sample: the image opens (header) in a mode we can read; the label is an index image (P, L
or 16-bit grayscale) of the image's size whose values are class indices or 255 (ignored): with
`reduce_zero_label`, 0..K (0 is "other"), else 0..K-1. Labels are decoded in a thread pool (the
PNG decoder releases the GIL). A split whose labels hold no class pixel at all is refused whole:
there is nothing to learn from, or no ground truth to evaluate. A split read without labels
(`ADE20KDataset(labels=False)`, format-only runs) is checked for its image headers only.
"""

from __future__ import annotations

import numpy as np

from flatten_dense.core.data_check import DataReport, Problem, header_reason, parallel_map, timed
from flatten_dense.core.image_io import image_header
from flatten_dense.segmentation.ade20k import ADE20KDataset
from flatten_dense.segmentation.labels import IGNORE_INDEX, label_array

__all__ = ["check_ade20k", "label_values_problem"]


def label_values_problem(values: np.ndarray, *, num_classes: int, reduce_zero_label: bool) -> str | None:
    """What is wrong with a label's values, or None (255 is always allowed: ignored)."""
    highest = num_classes if reduce_zero_label else num_classes - 1
    bad = (values > highest) & (values != IGNORE_INDEX) | (values < 0)
    if bad.any():
        found = np.unique(values[bad])
        shown = ", ".join(str(int(v)) for v in found[:5]) + (", ..." if len(found) > 5 else "")
        return (
            f"label values {shown} are out of range for {num_classes} classes "
            f"(expected 0..{highest} or {IGNORE_INDEX}{', 0 = other' if reduce_zero_label else ''})"
        )
    return None


def _class_pixels(values: np.ndarray, *, num_classes: int, reduce_zero_label: bool) -> int:
    low = 1 if reduce_zero_label else 0
    highest = num_classes if reduce_zero_label else num_classes - 1
    return int(((values >= low) & (values <= highest)).sum())


def _sample(dataset: ADE20KDataset, index: int, num_classes: int) -> tuple[list[Problem], int]:
    image_path, label_path = dataset.samples[index]
    try:
        width, height, _ = image_header(image_path)
    except (FileNotFoundError, ValueError) as error:
        return [Problem(index, str(image_path), header_reason(error, image_path))], 0
    if label_path is None:
        return [], 0
    try:
        values = label_array(label_path)
    except ValueError as error:
        return [Problem(index, str(label_path), header_reason(error, label_path))], 0
    if values.shape != (height, width):
        shape = f"{values.shape[1]}x{values.shape[0]}" if values.ndim == 2 else str(values.shape)
        return [Problem(index, str(label_path), f"label is {shape} but image {image_path.name} is {width}x{height}")], 0
    problem = label_values_problem(values, num_classes=num_classes, reduce_zero_label=dataset.reduce_zero_label)
    if problem is not None:
        return [Problem(index, str(label_path), problem)], 0
    return [], _class_pixels(values, num_classes=num_classes, reduce_zero_label=dataset.reduce_zero_label)


def check_ade20k(dataset: ADE20KDataset, *, split: str, num_classes: int, threads: int | None = None) -> DataReport:
    """Check every sample of an ADE20K split; the report lists each bad sample."""

    def run() -> DataReport:
        results = parallel_map(lambda i: _sample(dataset, i, num_classes), len(dataset), threads=threads)
        report = DataReport(
            split=split,
            source=str(dataset.root / "images" / dataset.split),
            samples=len(dataset),
            annotations=len(dataset) if dataset.labels else 0,
            problems=[p for problems, _ in results for p in problems],
        )
        if dataset.labels and len(report.bad_indices) < len(dataset) and sum(pixels for _, pixels in results) == 0:
            what = "nothing to learn from" if split == "train" else "no ground truth to evaluate"
            report.refusal = (
                f"the labels in {dataset.root / 'annotations' / dataset.split} hold no class pixel "
                f"(all 0 = other or {IGNORE_INDEX}): {what}"
            )
        return report

    return timed(run)
