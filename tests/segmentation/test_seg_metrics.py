"""Dataset-level confusion-matrix metrics (mmseg definitions) with ignore index 255."""

from __future__ import annotations

import math

import pytest
import torch

from flatten_dense.segmentation.metrics import SegmentationMetrics


def test_perfect_prediction() -> None:
    labels = torch.randint(0, 5, (2, 16, 16))
    labels[:, :3] = 255
    metric = SegmentationMetrics(5)
    preds = labels.clone()
    preds[labels == 255] = 0  # whatever is predicted on ignored pixels must not count
    metric.update(preds, labels)
    result = metric.compute()
    assert result["mIoU"] == 1.0 and result["mAcc"] == 1.0 and result["aAcc"] == 1.0


def test_hand_computed_confusion_with_ignored_pixels() -> None:
    labels = torch.tensor([[0, 1, 1], [2, 255, 0]])
    preds = torch.tensor([[0, 1, 2], [2, 0, 1]])
    metric = SegmentationMetrics(4, class_names=["a", "b", "c", "d"])
    metric.update(preds[None], labels[None])
    expected = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(metric.confusion, expected)
    result = metric.compute()
    iou, acc = result["IoU"].tolist(), result["Acc"].tolist()
    assert iou[:3] == pytest.approx([1 / 2, 1 / 3, 1 / 2]) and math.isnan(iou[3])  # class 3 absent
    assert acc[:3] == pytest.approx([1 / 2, 1 / 2, 1.0]) and math.isnan(acc[3])
    assert result["mIoU"].item() == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)
    assert result["mAcc"].item() == pytest.approx(2 / 3)
    assert result["aAcc"].item() == pytest.approx(3 / 5)


def test_predicted_but_absent_class_counts_zero_iou() -> None:
    metric = SegmentationMetrics(3)
    metric.update(torch.tensor([[0, 2]]), torch.tensor([[0, 0]]))
    result = metric.compute()
    assert result["IoU"][2] == 0 and math.isnan(result["Acc"][2].item()) and math.isnan(result["IoU"][1].item())
    assert result["mIoU"].item() == pytest.approx((0.5 + 0.0) / 2)


def test_dataset_level_not_per_image_and_logits_lists() -> None:
    # image 1: big, perfect; image 2: tiny, all wrong. Per-image averaging would give 0.5.
    label1, label2 = torch.zeros(10, 10, dtype=torch.long), torch.ones(1, 1, dtype=torch.long)
    logits1 = torch.zeros(2, 10, 10)
    logits1[0] = 1.0  # argmax 0 = correct
    logits2 = torch.zeros(2, 1, 1)
    logits2[0] = 1.0  # argmax 0, label 1
    metric = SegmentationMetrics(2)
    metric.update([logits1, logits2], [label1, label2])  # variable sizes, per-image K,H,W logits
    result = metric.compute()
    assert result["IoU"].tolist() == pytest.approx([100 / 101, 0.0])
    assert result["aAcc"].item() == pytest.approx(100 / 101)
    split = SegmentationMetrics(2)
    split.update(logits1[None], label1[None])
    split.update(logits2[None], label2[None])
    assert torch.equal(split.confusion, metric.confusion)


def test_invalid_inputs_raise() -> None:
    metric = SegmentationMetrics(3)
    with pytest.raises(ValueError, match="labels"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    metric.reset()
    assert metric.confusion.sum() == 0
