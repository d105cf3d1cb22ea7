"""Dataset-level semantic segmentation metrics (mmseg's mIoU, mAcc, aAcc) from a confusion matrix.

torchmetrics' MeanIoU averages per image and has no ignore index; ADE20K numbers are defined on
the confusion matrix summed over the whole dataset, with the ignore label excluded. The matrix
is the only state (summed across ranks), so distributed evaluation is exact when every image is
seen once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchmetrics import Metric

from flatten_dense.segmentation.labels import IGNORE_INDEX

__all__ = ["SegmentationMetrics", "metrics_from_confusion"]


def metrics_from_confusion(confusion: torch.Tensor) -> dict[str, torch.Tensor]:
    """confusion[label, pred] (K x K counts) -> mIoU, mAcc, aAcc and per-class IoU, Acc.

    A class absent from both labels and predictions has IoU NaN; absent from labels, Acc NaN;
    means skip NaNs (mmseg's nanmean).
    """
    confusion = confusion.double()  # exact counts beyond 2**24 pixels
    intersect = confusion.diagonal()
    area_label = confusion.sum(dim=1)
    area_pred = confusion.sum(dim=0)
    union = area_label + area_pred - intersect
    iou = intersect / union  # 0/0 -> NaN
    acc = intersect / area_label
    results = {
        "mIoU": iou.nanmean(),
        "mAcc": acc.nanmean(),
        "aAcc": intersect.sum() / area_label.sum(),
        "IoU": iou,
        "Acc": acc,
    }
    return {name: value.float() for name, value in results.items()}  # float64 is not on every device


class SegmentationMetrics(Metric):
    """Accumulates a num_classes x num_classes confusion matrix; `compute()` returns
    {"mIoU", "mAcc", "aAcc" (scalars), "IoU", "Acc" (per class, NaN where undefined)}.

    `update(preds, target)`: preds are class indices (B,H,W or H,W) or logits (B,K,H,W, argmaxed
    over K); target has the same spatial size with `ignore_index` for unlabelled pixels.
    Lists of such tensors are accepted for batches of different sizes.
    """

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = tuple(class_names) if class_names is not None else None
        self.add_state(
            "confusion", default=torch.zeros(num_classes, num_classes, dtype=torch.long), dist_reduce_fx="sum"
        )

    def update(
        self, preds: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor | Sequence[torch.Tensor]
    ) -> None:
        if isinstance(preds, torch.Tensor) != isinstance(target, torch.Tensor):
            raise TypeError("preds and target must both be tensors or both be sequences")
        pairs = [(preds, target)] if isinstance(preds, torch.Tensor) else list(zip(preds, target, strict=True))
        for pred, label in pairs:
            self._update_one(pred, label)

    def _update_one(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        if pred.is_floating_point():  # logits: class dim is the one before H, W
            pred = pred.argmax(dim=-3)
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
        valid = label != self.ignore_index
        label = label[valid].long()
        pred = pred[valid].long()
        k = self.num_classes
        if label.numel() and (label.min() < 0 or label.max() >= k):
            raise ValueError(f"labels must be in [0, {k}) or {self.ignore_index}; got {label.unique().tolist()[:10]}")
        if pred.numel() and (pred.min() < 0 or pred.max() >= k):
            raise ValueError(f"predictions must be in [0, {k})")
        self.confusion += torch.bincount(label * k + pred, minlength=k * k).view(k, k)

    def compute(self) -> dict[str, torch.Tensor]:
        return metrics_from_confusion(self.confusion)
