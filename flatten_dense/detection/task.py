"""Detection and instance segmentation as a LightningModule around a torchvision detector.

Training: the detector's summed losses, each component logged. Validation/test: COCO mAP with
torchmetrics (update per step, compute once per epoch, synced across ranks; evaluation samplers
never pad, so every image counts once). Crowd regions are left out of the training targets and
kept for evaluation, where COCO ignores detections that match them. `test_step` returns the
detections, so callbacks (e.g. `CocoResultsWriter`) can export them; `predict_step` returns them
without any metric (format-only runs, on data without ground truth).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN

from flatten_dense.core.task import DenseTask
from flatten_dense.detection.metrics import (
    build_coco_metric,
    compute_coco_metric,
    metric_predictions,
    metric_targets,
    summarize_coco,
)
from flatten_dense.detection.model_config import build_detector_from_section

__all__ = ["DetectionTask", "training_targets"]


def training_targets(targets: list[dict[str, Tensor]], *, with_masks: bool) -> list[dict[str, Tensor]]:
    """Plain-tensor targets without crowd regions, as torchvision's detectors expect."""
    converted = []
    for target in targets:
        keep = target["iscrowd"] == 0
        item = {"boxes": target["boxes"].as_subclass(Tensor)[keep], "labels": target["labels"][keep]}
        if with_masks:
            item["masks"] = target["masks"].as_subclass(Tensor)[keep]
        converted.append(item)
    return converted


class DetectionTask(DenseTask):
    def __init__(
        self,
        *,
        model: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        label_to_category_id: dict[int, int] | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler, class_names=class_names)
        self.with_masks = isinstance(self.model, MaskRCNN)
        self.label_to_category_id = {int(k): int(v) for k, v in (label_to_category_id or {}).items()}
        self.val_metric = build_coco_metric(with_masks=self.with_masks)
        self.test_metric = build_coco_metric(with_masks=self.with_masks, class_metrics=True)
        self.test_summary: dict[str, Any] = {}

    def configure_models(self) -> nn.Module:
        return build_detector_from_section(self.hparams.model)

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.model(images)

    def predict_image(self, image: Tensor) -> dict[str, Tensor]:
        """One image 3,H,W (float in [0, 1]) -> its detections (in eval mode), on the CPU."""
        output = self.model([image.as_subclass(Tensor).to(self.device)])[0]
        return {name: value.cpu() for name, value in output.items()}

    def training_step(self, batch: tuple[list[Tensor], list[dict]], batch_idx: int) -> Tensor:
        images, targets = batch
        losses = self.model(images, training_targets(targets, with_masks=self.with_masks))
        loss = sum(losses.values())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(images), sync_dist=True)  # mean over ranks
        self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=len(images))
        return loss

    def _evaluate(self, batch: tuple[list[Tensor], list[dict]], metric) -> list[dict[str, Tensor]]:
        images, targets = batch
        outputs = self.model(images)
        metric.update(
            metric_predictions(outputs, with_masks=self.with_masks), metric_targets(targets, with_masks=self.with_masks)
        )
        return outputs

    def validation_step(self, batch: tuple[list[Tensor], list[dict]], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metric)

    def on_validation_epoch_end(self) -> None:
        results, _ = compute_coco_metric(self.val_metric)
        self.log_dict(summarize_coco(results, prefix="val/"))
        self.val_metric.reset()

    def test_step(self, batch: tuple[list[Tensor], list[dict]], batch_idx: int) -> list[dict[str, Tensor]]:
        return self._evaluate(batch, self.test_metric)

    def predict_step(self, batch: tuple[list[Tensor], list[dict]], batch_idx: int) -> list[dict[str, Tensor]]:
        """The detections of a batch, with no metric: format-only runs need no ground truth."""
        return self.model(batch[0])

    def on_test_epoch_end(self) -> None:
        results, images = compute_coco_metric(self.test_metric)
        summary = summarize_coco(results, prefix="test/")
        summary["test/images"] = float(images)  # over all ranks: each image once
        self.log_dict(summary)
        self.test_summary = {"metrics": summary, "per_class": self._per_class(results)}
        self.test_metric.reset()

    def _per_class(self, results: dict[str, Tensor]) -> list[dict[str, Any]]:
        """Per-class AP rows named by the dataset's category ids and names."""
        classes = results.get("classes")
        if classes is None:
            return []
        rows = []
        for index, label in enumerate(torch.atleast_1d(classes).tolist()):
            row = {"label": int(label), "category_id": self.label_to_category_id.get(int(label), int(label))}
            if 0 < label <= len(self.class_names):
                row["name"] = self.class_names[label - 1]
            for iou_type in ("bbox", "segm") if self.with_masks else ("bbox",):
                values = results.get(f"{iou_type}_map_per_class" if self.with_masks else "map_per_class")
                if values is not None:
                    row[f"{iou_type}_AP"] = float(torch.atleast_1d(values)[index])
            rows.append(row)
        return rows
