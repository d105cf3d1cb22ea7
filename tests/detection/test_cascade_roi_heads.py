"""Cascade Mask R-CNN's RoI heads: sampling per stage, refinement between stages, score and mask
averaging at test time, stage-weighted losses (the model end to end is in test_detection.py)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign, box_iou

from flatten_dense.detection import build_detector
from flatten_dense.detection.cascade_roi_heads import (
    STAGE_BOX_CODER_WEIGHTS,
    CascadeRoIHeads,
    CascadeStage,
)

NUM_CLASSES = 3
IMAGE = (64, 96)  # H W


def make_heads(**kwargs) -> CascadeRoIHeads:
    torch.manual_seed(0)
    stages = [CascadeStage(in_channels=8, fc_channels=16, mask_channels=8, num_classes=NUM_CLASSES) for _ in range(3)]
    return CascadeRoIHeads(
        stages=stages,
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
        batch_size_per_image=64,
        **kwargs,
    )


def features() -> dict[str, Tensor]:
    return {"0": torch.randn(2, 8, IMAGE[0] // 4, IMAGE[1] // 4, generator=torch.Generator().manual_seed(1))}


def targets() -> list[dict[str, Tensor]]:
    masks = torch.zeros(2, *IMAGE, dtype=torch.uint8)
    masks[0, 10:30, 10:40] = 1
    masks[1, 30:60, 50:90] = 1
    return [
        {"boxes": torch.tensor([[10.0, 10, 40, 30], [50, 30, 90, 60]]), "labels": torch.tensor([1, 3]), "masks": masks},
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, *IMAGE, dtype=torch.uint8),
        },
    ]


def proposals(count: int = 60) -> list[Tensor]:
    """Boxes around the first image's objects (IoUs spread over 0..1) and random boxes on the second."""
    generator = torch.Generator().manual_seed(2)
    near = targets()[0]["boxes"].repeat(count // 2, 1) + torch.randn(count, 4, generator=generator) * 8
    near = torch.cat([near[:, :2], near[:, :2] + (near[:, 2:] - near[:, :2]).abs() + 1], dim=1)
    corners = torch.rand(count, 2, 2, generator=generator) * torch.tensor([IMAGE[1], IMAGE[0]])
    scattered = torch.cat([corners.min(dim=1).values, corners.max(dim=1).values + 2], dim=1)
    return [near, scattered]


def test_each_stage_samples_at_its_own_iou_threshold() -> None:
    heads = make_heads()
    gt = targets()[0]["boxes"]
    for stage, threshold in enumerate((0.5, 0.6, 0.7)):
        sample = heads._sample(stage, proposals(), targets())[0]
        best_iou, best_gt = box_iou(sample["rois"], gt).max(dim=1)
        positive = sample["labels"] > 0
        assert positive.any() and (~positive).any()
        assert (best_iou[positive] >= threshold).all() and (best_iou[~positive] < threshold).all()
        assert torch.equal(sample["matched_boxes"][positive], gt[best_gt[positive]])
        assert torch.equal(sample["labels"][positive], targets()[0]["labels"][best_gt[positive]])
        from_gt = sample["from_gt"]
        assert (sample["labels"][from_gt] > 0).all()  # ground-truth boxes join as positives of themselves
        assert torch.equal(sample["rois"][from_gt], sample["matched_boxes"][from_gt])


def test_next_stage_gets_refined_sampled_boxes_without_ground_truth(monkeypatch) -> None:
    heads = make_heads().train()
    seen: list[list[Tensor]] = []
    sample = heads._sample

    def recording_sample(stage: int, boxes: list[Tensor], image_targets: list[dict[str, Tensor]]):
        seen.append(boxes)
        result = sample(stage, boxes, image_targets)
        recorded.append(result)
        return result

    recorded: list[list[dict[str, Tensor]]] = []
    monkeypatch.setattr(heads, "_sample", recording_sample)
    heads(features(), proposals(), [IMAGE, IMAGE], targets())
    assert len(seen) == 3
    for stage in (1, 2):
        for image in range(2):
            previous = recorded[stage - 1][image]
            assert len(seen[stage][image]) == int((~previous["from_gt"]).sum())
            assert (seen[stage][image][:, 2:] <= torch.tensor([IMAGE[1], IMAGE[0]])).all()  # clipped to the image


def test_losses_are_finite_stage_weighted_and_reach_every_stage() -> None:
    heads = make_heads(stage_loss_weights=(1.0, 0.5, 0.0)).train()
    losses = heads(features(), proposals(), [IMAGE, IMAGE], targets())[1]
    values = {name: loss.item() for name, loss in losses.items()}
    assert set(losses) == {f"loss_{kind}_stage{i}" for kind in ("classifier", "box_reg", "mask") for i in range(3)}
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(values[f"loss_{kind}_stage2"] == 0.0 for kind in ("classifier", "box_reg", "mask"))
    assert values["loss_classifier_stage1"] > 0 and values["loss_mask_stage1"] > 0
    sum(losses.values()).backward()
    for stage in heads.stages[:2]:
        for module in (stage.box_head, stage.cls_score, stage.bbox_pred, stage.mask_head):
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_detections_are_last_stage_boxes_with_mean_scores_and_masks(monkeypatch) -> None:
    """Stage s predicts fixed class probabilities and moves every box right by 2 ** s pixels."""
    heads = make_heads(score_thresh=0.0, nms_thresh=1.0, detections_per_img=1000).eval()
    stage_probabilities = torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.1, 0.2, 0.6, 0.1], [0.4, 0.1, 0.1, 0.4]])
    for index, stage in enumerate(heads.stages):
        weights = STAGE_BOX_CODER_WEIGHTS[index]

        def predict_boxes(roi_features: Tensor, index: int = index, weights=weights) -> tuple[Tensor, Tensor]:
            rois = torch.cat(current_boxes[index])
            deltas = torch.zeros(len(rois), 4)
            deltas[:, 0] = weights[0] * 2**index / (rois[:, 2] - rois[:, 0])  # dx = shift / width, scaled
            return stage_probabilities[index].log().expand(len(rois), -1), deltas

        monkeypatch.setattr(stage, "predict_boxes", predict_boxes)
        monkeypatch.setattr(
            stage, "predict_masks", lambda f, index=index: torch.full((len(f), NUM_CLASSES + 1, 28, 28), float(index))
        )
    pool_forward = heads.box_roi_pool.forward
    current_boxes: list[list[Tensor]] = []  # the boxes each stage receives, in stage order

    def recording_pool(maps, boxes, shapes):
        current_boxes.append(boxes)
        return pool_forward(maps, boxes, shapes)

    monkeypatch.setattr(heads.box_roi_pool, "forward", recording_pool)
    boxes = [torch.tensor([[10.0, 10, 30, 30], [40, 20, 60, 50]]), torch.tensor([[5.0, 5, 25, 45]])]
    with torch.no_grad():
        detections = heads(features(), boxes, [IMAGE, IMAGE])[0]
    mean = stage_probabilities.mean(dim=0)
    for image_boxes, detection in zip(boxes, detections, strict=True):
        assert len(detection["boxes"]) == len(image_boxes) * NUM_CLASSES
        for box, score, label in zip(detection["boxes"], detection["scores"], detection["labels"], strict=True):
            expected = image_boxes + torch.tensor([7.0, 0, 7, 0])  # 1 + 2 + 4 pixels right
            assert torch.isclose(expected, box, atol=1e-4).all(dim=1).any()
            assert torch.isclose(score, mean[label], atol=1e-6)
        expected_mask = torch.tensor([0.0, 1.0, 2.0]).sigmoid().mean()
        assert torch.allclose(detection["masks"], expected_mask.expand_as(detection["masks"]))


@pytest.mark.parametrize("option", ["box_fg_iou_thresh", "box_reg_weights"])
def test_single_stage_matching_options_are_refused(option: str) -> None:
    with pytest.raises(TypeError, match=option):
        build_detector("cascade_mask_rcnn", backbone="flatten_pvt_v2_b0", num_classes=3, **{option: 0.5})


def test_stage_options_must_agree() -> None:
    with pytest.raises(ValueError, match="one IoU threshold and one loss weight per stage"):
        make_heads(stage_iou_thresholds=(0.5, 0.6), stage_loss_weights=(1.0, 0.5, 0.25))


def test_boxes_are_decoded_in_float32_under_autocast() -> None:
    heads = make_heads().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        detections = heads(features(), proposals(), [IMAGE, IMAGE])[0]
        logits, deltas = heads.stages[0].predict_boxes(torch.randn(4, 8, 7, 7))
    assert logits.dtype == deltas.dtype == torch.float32
    assert all(d["boxes"].dtype == torch.float32 for d in detections)
