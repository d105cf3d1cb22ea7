"""Semantic segmentation as a LightningModule around an EncoderDecoder (Semantic FPN or UperNet).

Training: the segmentor's losses on stacked crops, each one logged. Validation/test: images
differ in size (the collate gives lists), so each one is predicted alone (whole image, sliding
window, or multi-scale + flip), its logits resized to its label's original size, and counted in
a dataset-level confusion matrix (update per step, compute once per epoch, summed across ranks;
evaluation samplers never pad, so every image counts once).

How to predict is the config's `evaluation` section (see `EvaluationSettings`); `--aug-test`
sets `task.aug_test = True` for one run without editing it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from flatten_dense.config import ConfigError, check_kwargs
from flatten_dense.data.segmentation_transforms import rescale_size
from flatten_dense.segmentation.inference import DEFAULT_AUG_SCALES, aug_test_inference, inference
from flatten_dense.segmentation.metrics import SegmentationMetrics
from flatten_dense.visualize import draw_segmentation

from .base import DenseTask

__all__ = ["EvaluationSettings", "SegmentationTask"]


@dataclass
class EvaluationSettings:
    """The `evaluation` section of a segmentation config: how validation, test and infer predict.

    mode: "whole" (one pass on the test-scale image) or "slide" (mmseg's overlapping `window`
    crops, `stride` apart). aug_test: average softmax over `aug_scales` (x the test scale) and,
    with `flip`, their mirror images. scale: the (long, short) keep-ratio bound `infer` resizes
    raw images to, as the data's test pipeline does (None: predict at the image's own size).
    """

    mode: Literal["whole", "slide"] = "whole"
    window: int | tuple[int, int] = 512
    stride: int | tuple[int, int] = 341
    aug_test: bool = False
    aug_scales: tuple[float, ...] = DEFAULT_AUG_SCALES
    flip: bool = True
    scale: tuple[int, int] | None = None

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> EvaluationSettings:
        """Checked settings from a plain config section (unknown keys and bad types: ConfigError)."""
        section = dict(section or {})
        check_kwargs(cls, section, where="evaluation")
        for key in ("window", "stride", "scale"):
            if isinstance(section.get(key), list):
                section[key] = tuple(section[key])
        if "aug_scales" in section:
            section["aug_scales"] = tuple(float(s) for s in section["aug_scales"])
            if not section["aug_scales"]:
                raise ConfigError("'evaluation.aug_scales' must not be empty")
        return cls(**section)


class SegmentationTask(DenseTask):
    task = "segmentation"
    monitor = "val/mIoU"
    mode = "max"

    def __init__(
        self,
        *,
        model: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
        evaluation: dict[str, Any] | None = None,
    ) -> None:
        settings = EvaluationSettings.from_section(evaluation)  # fail fast, before building the model
        super().__init__(model=model, optimizer=optimizer, scheduler=scheduler)
        num_classes = int(model["num_classes"])
        self.class_names = list(class_names) if class_names else [str(k) for k in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ConfigError(f"{len(self.class_names)} class names for model.num_classes = {num_classes}")
        self.num_classes = num_classes
        self.settings = settings
        self.aug_test = settings.aug_test  # the test command's --aug-test sets this
        self.val_metric = SegmentationMetrics(num_classes)
        self.test_metric = SegmentationMetrics(num_classes)
        self.test_summary: dict[str, Any] = {}

    def forward(self, images: Tensor) -> Tensor:
        """images B,3,H,W (uint8 or float in [0, 1]) -> logits B,K,H,W."""
        return self.model(images)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels = batch
        losses = self.model.loss(images, labels)
        batch_size = len(images)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=batch_size)
        return losses["loss"]

    @torch.no_grad()
    def predict_logits(self, image: Tensor, output_size: Sequence[int]) -> Tensor:
        """One image 3,H,W (already at the test scale) -> scores 1,K,*output_size by the settings
        (logits, or averaged probabilities with aug_test; either way argmax gives the class)."""
        images = image.as_subclass(Tensor).unsqueeze(0).to(self.device)
        s = self.settings
        if self.aug_test:
            return aug_test_inference(
                self.model, images, scales=s.aug_scales, flip=s.flip, mode=s.mode,
                window=s.window, stride=s.stride, output_size=output_size,
            )
        return inference(self.model, images, mode=s.mode, window=s.window, stride=s.stride, output_size=output_size)

    def _evaluate(self, batch: tuple[list[Tensor], list[dict[str, Any]]], metric: SegmentationMetrics) -> None:
        images, targets = batch
        for image, target in zip(images, targets, strict=True):
            label = target["mask"].as_subclass(Tensor).to(self.device)
            scores = self.predict_logits(image, output_size=label.shape[-2:])
            metric.update(scores.argmax(dim=1)[0], label)

    def validation_step(self, batch: tuple[list[Tensor], list[dict[str, Any]]], batch_idx: int) -> None:
        self._evaluate(batch, self.val_metric)

    def on_validation_epoch_end(self) -> None:
        results = self.val_metric.compute()
        self.log_dict({f"val/{k}": results[k] for k in ("mIoU", "mAcc", "aAcc")}, prog_bar=True)
        self.val_metric.reset()

    def test_step(self, batch: tuple[list[Tensor], list[dict[str, Any]]], batch_idx: int) -> None:
        self._evaluate(batch, self.test_metric)

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

    @torch.no_grad()
    def draw(self, image: Tensor, *, score_threshold: float = 0.5, alpha: float = 0.5) -> Tensor:
        """uint8 (3, H, W) image -> the same image with the predicted classes overlaid in colour.

        The image is resized to the evaluation scale (when set) as the test pipeline does, and the
        prediction back to the image's size. `score_threshold` is accepted for the shared `infer`
        interface and ignored: a segmentation map labels every pixel.
        """
        del score_threshold
        self.eval()
        height, width = image.shape[-2:]
        model_input = image.as_subclass(Tensor)
        if self.settings.scale is not None:
            size = rescale_size(height, width, self.settings.scale)
            model_input = F.interpolate(model_input[None].float(), size=size, mode="bilinear", align_corners=False)[0] / 255.0
        prediction = self.predict_logits(model_input, output_size=(height, width)).argmax(dim=1)[0].cpu()
        return draw_segmentation(image.as_subclass(Tensor), prediction, self.num_classes, alpha=alpha)
