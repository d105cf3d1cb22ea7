"""The start-up check of a COCO split: every sample's files and annotations, headers only.

Per image: the file exists, opens (header) in a mode we can read, and has the size the JSON
says. Per annotation: its category exists; with masks, polygons have >= 6 numbers and an even
count, and RLEs have the image's size and decode to it. A training split without annotations
(background only) and an evaluation split without ground truth are refused whole, unless the
dataset is read without ground truth (`CocoDetection(ground_truth=False)`, format-only runs).
"""

from __future__ import annotations

from flatten_dense.core.data_check import DataReport, Problem, header_reason, parallel_map, timed
from flatten_dense.core.image_io import image_header
from flatten_dense.detection.coco import CocoDetection, segmentation_problem

__all__ = ["check_coco"]


def _sample_problems(dataset: CocoDetection, index: int) -> list[Problem]:
    image_id = dataset.ids[index]
    info = dataset.coco.imgs[image_id]
    path = dataset.image_dir / str(info["file_name"])
    try:
        width, height, _ = image_header(path)
    except (FileNotFoundError, ValueError) as error:
        return [Problem(index, str(path), header_reason(error, path))]
    problems = []
    if (width, height) != (info["width"], info["height"]):
        problems.append(
            Problem(index, str(path), f"image is {width}x{height} but the JSON says {info['width']}x{info['height']}")
        )
    for ann in dataset.annotations_of(image_id):
        if ann.get("category_id") not in dataset.category_id_to_label:
            problems.append(Problem(index, str(path), f"unknown category_id {ann.get('category_id')!r}", ann.get("id")))
        elif dataset.with_masks:
            problem = segmentation_problem(ann.get("segmentation"), info["height"], info["width"])
            if problem is not None:
                problems.append(Problem(index, str(path), problem, ann.get("id")))
    return problems


def check_coco(dataset: CocoDetection, *, split: str, threads: int | None = None) -> DataReport:
    """Check every sample of a COCO split (headers in a thread pool); the report lists each problem."""

    def run() -> DataReport:
        per_sample = parallel_map(lambda i: _sample_problems(dataset, i), len(dataset), threads=threads, processes=True)
        annotations = [a for i in dataset.ids for a in dataset.annotations_of(i)]
        report = DataReport(
            split=split,
            source=str(dataset.annotation_file),
            samples=len(dataset),
            annotations=len(annotations),
            problems=[p for sample in per_sample for p in sample],
        )
        if not len(dataset):
            report.refusal = f"{dataset.annotation_file} lists no images: the {split} split is empty"
        elif split == "train" and not any(not a.get("iscrowd", 0) for a in annotations):
            report.refusal = (
                f"{dataset.annotation_file} has no (non-crowd) annotations: training would learn background only"
            )
        elif split != "train" and not annotations and dataset.ground_truth:
            report.refusal = (
                f"{dataset.annotation_file} has no annotations: the {split} split has no ground truth to evaluate "
                "(COCO mAP would be -1)"
            )
        return report

    return timed(run)
