"""Semantic segmentation as a LightningModule around an EncoderDecoder (Semantic FPN or UperNet).

Training: the segmentor's losses on stacked crops, each one logged. Validation/test: images
differ in size (the collate gives lists), so each one is predicted alone at its own size
(`EncoderDecoder.predict` resizes to the test scale and back; whole image, sliding window, or
multi-scale + flip by the `evaluation` section) and counted in a dataset-level confusion matrix
(update per step, compute once per epoch, summed across ranks; evaluation samplers never pad,
so every image counts once). `predict_step` gives the same class maps without a metric
(format-only runs, e.g. `LabelPngWriter` for a test-server submission).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flatten_dense.core.task import DenseTask
from flatten_dense.segmentation.inference import EvaluationSettings
from flatten_dense.segmentation.metrics import SegmentationMetrics
from flatten_dense.segmentation.model_config import build_segmentor_from_section

__all__ = ["SegmentationTask"]


class SegmentationTask(DenseTask):
    def __init__(
        self,
        *,
        model: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        evaluation: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler, class_names=class_names)
        self.num_classes = int(model["num_classes"])
        if not self.class_names:
            self.class_names = [str(k) for k in range(self.num_classes)]
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for model.num_classes = {self.num_classes}")
        self.settings = EvaluationSettings.from_section(evaluation)
        self.val_metric = SegmentationMetrics(self.num_classes)
        self.test_metric = SegmentationMetrics(self.num_classes)
        self.test_summary: dict[str, Any] = {}

    def configure_models(self) -> nn.Module:
        return build_segmentor_from_section(self.hparams.model)

    def forward(self, images: Tensor) -> Tensor:
        """images B,3,H,W (float in [0, 1]) -> logits B,K,H,W."""
        return self.model(images)

    def predict_image(self, image: Tensor) -> Tensor:
        """One image 3,H,W (float in [0, 1], its own size) -> class map H,W by the evaluation settings."""
        images = image.as_subclass(Tensor).unsqueeze(0).to(self.device)
        return self.model.predict(images, self.settings).argmax(dim=1)[0]

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        losses = self.model.loss(images, labels)
        batch_size = len(images)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=batch_size, sync_dist=True)  # mean over ranks
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=batch_size)
        return losses["loss"]

    @torch.no_grad()
    def _evaluate(self, batch: tuple[list[Tensor], list[dict[str, Any]]], metric: SegmentationMetrics) -> None:
        images, targets = batch
        for image, target in zip(images, targets, strict=True):
            label = target["mask"].as_subclass(Tensor).to(self.device)
            metric.update(self.predict_image(image), label)

    def validation_step(self, batch: tuple[list[Tensor], list[dict[str, Any]]], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metric)

    def on_validation_epoch_end(self) -> None:
        results = self.val_metric.compute()
        self.log_dict({f"val/{k}": results[k] for k in ("mIoU", "mAcc", "aAcc")}, prog_bar=True)
        self.val_metric.reset()

    def test_step(self, batch: tuple[list[Tensor], list[dict[str, Any]]], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metric)

    def predict_step(self, batch: tuple[list[Tensor], list[dict[str, Any]]], batch_idx: int) -> list[Tensor]:
        """Class maps (H_i x W_i, each image's own size) with no metric: format-only runs need no labels."""
        return [self.predict_image(image) for image in batch[0]]

    def on_test_epoch_end(self) -> None:
        results = self.test_metric.compute()
        metrics = {f"test/{k}": float(results[k]) for k in ("mIoU", "mAcc", "aAcc")}
        self.log_dict(metrics)
        per_class = [
            {"class": name, "IoU": float(iou), "Acc": float(acc)}
            for name, iou, acc in zip(self.class_names, results["IoU"].tolist(), results["Acc"].tolist())
        ]
        self.test_summary = {"metrics": metrics, "per_class": per_class}
        self.test_metric.reset()
