"""COCO-format result files of a test run, as mmdetection writes them: one file per IoU type.

`CocoResultsWriter` is a Lightning callback: it collects `DetectionTask.test_step`'s detections,
gathers them from every rank and writes `PREFIX.bbox.json` (and `PREFIX.segm.json` for mask
detectors) with the dataset's own category ids at full float precision, so COCOeval on the files
gives the same numbers as the printed table. It writes a predict run's detections the same way:
`submission_writer(DIR)` is the format-only run's (`flatten-dense test --format-only --out-dir DIR`),
DIR/results.bbox.json and DIR/results.segm.json, ready for the COCO test server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from faster_coco_eval.core import mask as mask_utils
from torch import Tensor

from flatten_dense.detection.metrics import MASK_THRESHOLD

__all__ = ["CocoResultsWriter", "coco_results", "results_paths", "submission_writer"]


def coco_results(
    outputs: Sequence[Mapping[str, Tensor]],
    image_ids: Sequence[int],
    label_to_category_id: Mapping[int, int],
    *,
    with_masks: bool,
) -> dict[str, list[dict[str, Any]]]:
    """{"bbox": [...], "segm": [...]} COCO result entries (xywh boxes, RLE masks), full precision."""
    results: dict[str, list[dict[str, Any]]] = {"bbox": [], "segm": []} if with_masks else {"bbox": []}
    for output, image_id in zip(outputs, image_ids, strict=True):
        boxes = output["boxes"].detach().cpu().float()
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        scores = output["scores"].detach().cpu().float().tolist()
        categories = [int(label_to_category_id[int(label)]) for label in output["labels"].tolist()]
        for box, score, category in zip(xywh, scores, categories):
            results["bbox"].append({"image_id": int(image_id), "category_id": category, "bbox": box, "score": score})
        if with_masks and len(scores):
            binary = (output["masks"][:, 0] > MASK_THRESHOLD).detach().cpu().numpy().astype(np.uint8)
            rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
            for rle, score, category in zip(rles, scores, categories):
                counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
                segmentation = {"size": list(rle["size"]), "counts": counts}
                results["segm"].append(
                    {"image_id": int(image_id), "category_id": category, "segmentation": segmentation, "score": score}
                )
    return results


def results_paths(prefix: str | Path, iou_types: Sequence[str]) -> dict[str, Path]:
    """mmdet's names: PREFIX.bbox.json, PREFIX.segm.json."""
    return {iou_type: Path(f"{prefix}.{iou_type}.json") for iou_type in iou_types}


class CocoResultsWriter(L.Callback):
    """Writes the test run's detections as COCO result files under `prefix` (rank 0 writes)."""

    def __init__(self, prefix: str | Path) -> None:
        self.prefix = Path(prefix)
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.written: dict[str, Path] = {}

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.results = {}

    def on_test_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        image_ids = [int(target["image_id"]) for target in batch[1]]
        entries = coco_results(outputs, image_ids, pl_module.label_to_category_id, with_masks=pl_module.with_masks)
        for iou_type, items in entries.items():
            self.results.setdefault(iou_type, []).extend(items)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = self.results
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list[dict[str, list]] = [{} for _ in range(dist.get_world_size())]
            dist.all_gather_object(gathered, results)
            results = {key: [item for part in gathered for item in part.get(key, [])] for key in results}
        if not trainer.is_global_zero:
            return
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        for iou_type, path in results_paths(self.prefix, list(results)).items():
            path.write_text(json.dumps(results[iou_type]))
            self.written[iou_type] = path
            print(f"{len(results[iou_type])} COCO-format {iou_type} results written to {path}")

    # a predict run (format-only: no ground truth, no metric) hands over the same detections
    on_predict_epoch_start = on_test_epoch_start
    on_predict_batch_end = on_test_batch_end
    on_predict_epoch_end = on_test_epoch_end


def submission_writer(out_dir: str | Path) -> CocoResultsWriter:
    """The format-only run's writer: OUT_DIR/results.bbox.json (and results.segm.json for masks)."""
    return CocoResultsWriter(Path(out_dir) / "results")
