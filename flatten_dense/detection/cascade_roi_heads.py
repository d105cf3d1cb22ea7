"""Cascade R-CNN's RoI heads with mask branches (Cai & Vasconcelos, CVPR 2018; mmdetection's CascadeRoIHead).

torchvision has no cascade, so this module supplies the one missing layer, built from torchvision's
RoIAlign, matcher, sampler, box coder, conv-fc box head and mask head/loss:
- Training: stage s samples RoIs from its input boxes plus the ground truth, matched at its own IoU
  threshold (0.5, 0.6, 0.7), and learns class scores and a class-agnostic box refinement (GIoU loss
  on the decoded boxes, weight 10, as Swin's Cascade Mask R-CNN configs). Its refined, detached
  boxes (ground-truth RoIs left out) are the next stage's input. Stage losses are weighted
  1, 0.5, 0.25; each stage has its own mask head, trained on that stage's positive RoIs.
- Inference: every stage scores the boxes it receives and refines them for the next; the
  detections are the last stage's boxes with the mean of all stages' class probabilities, then
  per-class NMS. A detection's mask is the mean of every stage's mask probability. Counts are read
  as `x.shape[0]`, never `len(x)`: the ONNX trace keeps the former as a size, the latter as a constant.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.ops import (
    MultiScaleRoIAlign,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    generalized_box_iou_loss,
    remove_small_boxes,
)

__all__ = ["CascadeRoIHeads", "CascadeStage", "STAGE_BOX_CODER_WEIGHTS"]

# 1 / mmdet's regression target stds per stage ((0.1, 0.1, 0.2, 0.2), then halved, then thirded).
STAGE_BOX_CODER_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
BOX_LOSS_WEIGHT = 10.0  # GIoU loss weight of Swin's cascade configs


class CascadeStage(nn.Module):
    """One stage: a 4-conv + 1-fc box head with BN, a classifier over num_classes + 1 labels, a
    class-agnostic box regressor, and a mask head with its predictor."""

    def __init__(self, *, in_channels: int, fc_channels: int, mask_channels: int, num_classes: int) -> None:
        super().__init__()
        self.box_head = FastRCNNConvFCHead(
            (in_channels, 7, 7), [in_channels] * 4, [fc_channels], norm_layer=nn.BatchNorm2d
        )
        self.cls_score = nn.Linear(fc_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_channels, 4)
        self.mask_head = MaskRCNNHeads(in_channels, [mask_channels] * 4, 1)
        self.mask_predictor = MaskRCNNPredictor(mask_channels, mask_channels, num_classes + 1)

    def predict_boxes(self, roi_features: Tensor) -> tuple[Tensor, Tensor]:
        """(R, C, 7, 7) -> class logits (R, K + 1), box deltas (R, 4), in float32.

        float32 even under autocast: the boxes are decoded from the deltas and refined three times,
        and bfloat16 would round pixel coordinates near 1000 to steps of 4-8.
        """
        x = self.box_head(roi_features)
        return self.cls_score(x).float(), self.bbox_pred(x).float()

    def predict_masks(self, roi_features: Tensor) -> Tensor:
        """(R, C, 14, 14) -> mask logits (R, K + 1, 28, 28)."""
        return self.mask_predictor(self.mask_head(roi_features))


class CascadeRoIHeads(nn.Module):
    """Drop-in for torchvision's `RoIHeads` in a `MaskRCNN`: same call, same outputs."""

    def __init__(
        self,
        *,
        stages: Sequence[CascadeStage],
        box_roi_pool: MultiScaleRoIAlign,
        mask_roi_pool: MultiScaleRoIAlign,
        stage_iou_thresholds: Sequence[float] = (0.5, 0.6, 0.7),
        stage_loss_weights: Sequence[float] = (1.0, 0.5, 0.25),
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ) -> None:
        super().__init__()
        num_stages = len(stages)
        if not len(stage_iou_thresholds) == len(stage_loss_weights) == num_stages <= len(STAGE_BOX_CODER_WEIGHTS):
            raise ValueError(
                f"a cascade of up to {len(STAGE_BOX_CODER_WEIGHTS)} stages needs one IoU threshold and one loss weight "
                f"per stage; got {num_stages} stages, {len(stage_iou_thresholds)} thresholds, "
                f"{len(stage_loss_weights)} weights"
            )
        self.stages = nn.ModuleList(stages)
        self.box_roi_pool = box_roi_pool
        self.mask_roi_pool = mask_roi_pool
        self.matchers = [Matcher(t, t, allow_low_quality_matches=False) for t in stage_iou_thresholds]
        self.box_coders = [BoxCoder(w) for w in STAGE_BOX_CODER_WEIGHTS[:num_stages]]
        self.stage_loss_weights = tuple(stage_loss_weights)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    def has_mask(self) -> bool:
        return True

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """features: FPN maps; proposals: per image (P_i, 4) boxes (x1, y1, x2, y2) in input pixels.

        Returns (detections, {}) in eval mode and ([], losses) in training, as torchvision's RoIHeads.
        """
        if self.training:
            if targets is None:
                raise ValueError("CascadeRoIHeads needs targets in training mode")
            return [], self._losses(features, proposals, image_shapes, targets)
        return self._detect(features, proposals, image_shapes), {}

    def _sample(self, stage: int, boxes: list[Tensor], targets: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """Per image: sampled RoIs with their labels (0 = background), matched ground-truth index and
        box, and whether the RoI is a ground-truth box itself."""
        samples = []
        for image_boxes, target in zip(boxes, targets, strict=True):
            gt_boxes = target["boxes"].to(image_boxes.dtype)
            candidates = torch.cat([image_boxes, gt_boxes])  # R 4: the ground truth joins the proposals
            from_gt = torch.arange(len(candidates), device=candidates.device) >= len(image_boxes)
            if len(gt_boxes) == 0:
                matched = torch.zeros(len(candidates), dtype=torch.int64, device=candidates.device)
                labels = torch.zeros_like(matched)
            else:
                matched = self.matchers[stage](box_iou(gt_boxes, candidates))  # R: gt index, or < 0 below threshold
                labels = target["labels"][matched.clamp(min=0)].to(torch.int64)
                labels[matched == Matcher.BELOW_LOW_THRESHOLD] = 0
                labels[matched == Matcher.BETWEEN_THRESHOLDS] = -1
                matched = matched.clamp(min=0)
            positive, negative = self.fg_bg_sampler([labels])
            keep = torch.where(positive[0] | negative[0])[0]
            matched_boxes = gt_boxes[matched[keep]] if len(gt_boxes) else torch.zeros_like(candidates[keep])
            samples.append(
                {
                    "rois": candidates[keep],
                    "labels": labels[keep],
                    "matched": matched[keep],
                    "matched_boxes": matched_boxes,
                    "from_gt": from_gt[keep],
                }
            )
        return samples

    def _losses(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        boxes = [p.detach() for p in proposals]
        for index, stage in enumerate(self.stages):
            weight = self.stage_loss_weights[index]
            samples = self._sample(index, boxes, targets)
            rois = [s["rois"] for s in samples]
            logits, deltas = stage.predict_boxes(self.box_roi_pool(features, rois, image_shapes))  # R K+1, R 4
            labels = torch.cat([s["labels"] for s in samples])
            positive = labels > 0
            predicted = self.box_coders[index].decode_single(deltas[positive], torch.cat(rois)[positive])
            box_loss = generalized_box_iou_loss(
                predicted, torch.cat([s["matched_boxes"] for s in samples])[positive], reduction="sum"
            )
            losses[f"loss_classifier_stage{index}"] = weight * F.cross_entropy(logits, labels)
            losses[f"loss_box_reg_stage{index}"] = weight * BOX_LOSS_WEIGHT * box_loss / max(1, labels.numel())
            losses[f"loss_mask_stage{index}"] = weight * self._mask_loss(
                stage, features, samples, image_shapes, targets
            )
            if index + 1 < len(self.stages):
                refined = self._refine(index, deltas.detach(), rois, image_shapes)
                boxes = [r[~s["from_gt"]] for r, s in zip(refined, samples, strict=True)]
        return losses

    def _mask_loss(
        self,
        stage: CascadeStage,
        features: dict[str, Tensor],
        samples: list[dict[str, Tensor]],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> Tensor:
        positives = [s["labels"] > 0 for s in samples]
        rois = [s["rois"][p] for s, p in zip(samples, positives, strict=True)]
        mask_logits = stage.predict_masks(self.mask_roi_pool(features, rois, image_shapes))
        return maskrcnn_loss(
            mask_logits,
            rois,
            [t["masks"] for t in targets],
            [t["labels"] for t in targets],
            [s["matched"][p] for s, p in zip(samples, positives, strict=True)],
        )

    def _refine(
        self, stage: int, deltas: Tensor, rois: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """Stage `stage`'s boxes: its deltas applied to its input RoIs, clipped to each image."""
        boxes = self.box_coders[stage].decode_single(deltas, torch.cat(rois)).split([r.shape[0] for r in rois])
        return [clip_boxes_to_image(b, shape) for b, shape in zip(boxes, image_shapes, strict=True)]

    def _detect(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        boxes = proposals
        probabilities = []
        for index, stage in enumerate(self.stages):
            logits, deltas = stage.predict_boxes(self.box_roi_pool(features, boxes, image_shapes))
            probabilities.append(F.softmax(logits, dim=-1))  # scores of the boxes this stage was given
            boxes = self._refine(index, deltas, boxes, image_shapes)
        scores = torch.stack(probabilities).mean(dim=0).split([b.shape[0] for b in boxes])
        detections = [self._select(b, s, shape) for b, s, shape in zip(boxes, scores, image_shapes, strict=True)]
        mask_boxes = [d["boxes"] for d in detections]
        mask_features = self.mask_roi_pool(features, mask_boxes, image_shapes)
        mask_probabilities = torch.stack([stage.predict_masks(mask_features).sigmoid() for stage in self.stages]).mean(
            dim=0
        )
        labels = torch.cat([d["labels"] for d in detections])
        masks = mask_probabilities[torch.arange(labels.shape[0], device=labels.device), labels][:, None]  # D 1 28 28
        for detection, image_masks in zip(detections, masks.split([b.shape[0] for b in mask_boxes]), strict=True):
            detection["masks"] = image_masks
        return detections

    def _select(self, boxes: Tensor, scores: Tensor, image_shape: tuple[int, int]) -> dict[str, Tensor]:
        """One image: boxes (R, 4) and class probabilities (R, K + 1) -> detections after per-class NMS."""
        num_labels = scores.shape[1]
        labels = torch.arange(1, num_labels, device=scores.device).expand(boxes.shape[0], -1)  # R K
        boxes = boxes[:, None].expand(-1, num_labels - 1, -1).reshape(-1, 4)  # the same box for every class
        scores, labels = scores[:, 1:].reshape(-1), labels.reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
