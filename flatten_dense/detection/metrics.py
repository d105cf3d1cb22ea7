"""COCO evaluation of torchvision detector outputs with torchmetrics' MeanAveragePrecision.

Converts outputs and targets to the metric's format (bool masks, crowd flags, annotation areas),
names the results the way mmdetection reports them (`bbox_mAP`, `segm_mAP_50`, ...). Result files
are written by `results.py`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch.distributed as dist
from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

__all__ = [
    "MASK_THRESHOLD",
    "build_coco_metric",
    "compute_coco_metric",
    "metric_predictions",
    "metric_targets",
    "summarize_coco",
]

MASK_THRESHOLD = 0.5
# torchmetrics key suffix -> our report suffix (mmdetection's names)
REPORTED = {
    "map": "mAP",
    "map_50": "mAP_50",
    "map_75": "mAP_75",
    "map_small": "mAP_s",
    "map_medium": "mAP_m",
    "map_large": "mAP_l",
    "mar_100": "mAR_100",
}


def build_coco_metric(*, with_masks: bool, class_metrics: bool = False) -> MeanAveragePrecision:
    """bbox (and segm) COCO mAP on the faster_coco_eval backend; `update` per step, `compute` per epoch.

    Ranks are synced by `compute_coco_metric`, not by torchmetrics: its tensor gathering breaks
    when ranks hold different numbers of images (a rank's single-image state keeps other shapes).
    """
    iou_types = ("bbox", "segm") if with_masks else ("bbox",)
    return MeanAveragePrecision(
        iou_type=iou_types, backend="faster_coco_eval", class_metrics=class_metrics, sync_on_compute=False
    )


def compute_coco_metric(metric: MeanAveragePrecision) -> tuple[dict[str, Tensor], int]:
    """Gather every rank's per-image states (as objects, any sizes), then compute on each rank.

    Returns the results and the number of images evaluated (each image once over all ranks).
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        states = {name: [_to_cpu(item) for item in getattr(metric, name)] for name in metric._defaults}
        gathered: list[dict] = [{} for _ in range(dist.get_world_size())]
        dist.all_gather_object(gathered, states)
        for name in states:
            setattr(metric, name, [_to_device(item, metric.device) for part in gathered for item in part[name]])
    return metric.compute(), len(metric.groundtruth_labels)


def _to_cpu(item):
    return item.cpu() if isinstance(item, Tensor) else item


def _to_device(item, device):
    return item.to(device) if isinstance(item, Tensor) else item


def metric_predictions(outputs: Sequence[Mapping[str, Tensor]], *, with_masks: bool) -> list[dict[str, Tensor]]:
    """Detector outputs -> metric predictions; soft masks (N, 1, H, W) become bool (N, H, W)."""
    converted = []
    for output in outputs:
        item = {"boxes": output["boxes"].float(), "scores": output["scores"].float(), "labels": output["labels"]}
        if with_masks:
            item["masks"] = output["masks"][:, 0] > MASK_THRESHOLD
        converted.append(item)
    return converted


def metric_targets(targets: Sequence[Mapping[str, Tensor]], *, with_masks: bool) -> list[dict[str, Tensor]]:
    """Dataset targets -> metric targets, keeping crowd regions and the file's areas."""
    converted = []
    for target in targets:
        item = {
            "boxes": target["boxes"].as_subclass(Tensor).float(),
            "labels": target["labels"],
            "iscrowd": target["iscrowd"],
            "area": target["area"].float(),
        }
        if with_masks:
            item["masks"] = target["masks"].as_subclass(Tensor).bool()
        converted.append(item)
    return converted


def summarize_coco(results: Mapping[str, Tensor], *, prefix: str = "") -> dict[str, float]:
    """torchmetrics' result dict -> {'<prefix>bbox_mAP': ..., '<prefix>segm_mAP_50': ...}."""
    summary = {}
    single_type = "map" in results  # a bbox-only metric's keys carry no iou-type prefix
    for iou_type in ("bbox", "segm"):
        for key, name in REPORTED.items():
            value = results.get(key if single_type and iou_type == "bbox" else f"{iou_type}_{key}")
            if value is not None:
                summary[f"{prefix}{iou_type}_{name}"] = float(value)
    return summary
