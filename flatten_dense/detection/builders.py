"""Detectors from torchvision's implementations over any FLatten backbone + FPN.

Cascade Mask R-CNN is torchvision's MaskRCNN with our `CascadeRoIHeads` in place of its RoI heads.

`num_classes` counts foreground classes (80 for COCO), as in mmdetection; torchvision's heads
get one more for the background label 0 (RetinaNet and FCOS never predict it).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from flatten_dense.detection.fpn import BackboneWithFPN
from flatten_dense.models import create_backbone

from .cascade_roi_heads import CascadeRoIHeads, CascadeStage
from .input_transform import InferenceResizeTransform

__all__ = ["DETECTORS", "build_detector", "detector_has_masks", "detector_options", "list_detectors"]

RCNN_LEVELS = (0, 1, 2, 3)  # P2-P5 (+ max-pool P6)
SINGLE_STAGE_LEVELS = (1, 2, 3)  # P3-P5 (+ P6, P7)


def _rcnn(cls: type, fpn: BackboneWithFPN, num_classes: int, widths: dict[str, int], **kwargs: Any) -> nn.Module:
    box_head = TwoMLPHead(fpn.out_channels * 7 * 7, widths["box_head_channels"])
    predictor = FastRCNNPredictor(widths["box_head_channels"], num_classes + 1)
    return cls(fpn, num_classes=None, box_head=box_head, box_predictor=predictor, **kwargs)


def _mask_rcnn(fpn: BackboneWithFPN, num_classes: int, widths: dict[str, int], **kwargs: Any) -> nn.Module:
    channels = widths["mask_head_channels"]
    mask_head = MaskRCNNHeads(fpn.out_channels, [channels] * 4, 1)  # 4 conv3x3 layers, as mmdet
    mask_predictor = MaskRCNNPredictor(channels, channels, num_classes + 1)
    return _rcnn(MaskRCNN, fpn, num_classes, widths, mask_head=mask_head, mask_predictor=mask_predictor, **kwargs)


def _cascade_mask_rcnn(
    fpn: BackboneWithFPN,
    num_classes: int,
    widths: dict[str, int],
    *,
    stage_iou_thresholds: tuple[float, ...] = (0.5, 0.6, 0.7),
    stage_loss_weights: tuple[float, ...] = (1.0, 0.5, 0.25),
    **kwargs: Any,
) -> nn.Module:
    stages = [
        CascadeStage(
            in_channels=fpn.out_channels,
            fc_channels=widths["box_head_channels"],
            mask_channels=widths["mask_head_channels"],
            num_classes=num_classes,
        )
        for _ in stage_iou_thresholds
    ]
    first = stages[0]
    # torchvision builds the RPN, transform and RoI pools; its single-stage RoI heads are then replaced.
    model = MaskRCNN(
        fpn,
        num_classes=None,
        box_head=first.box_head,
        box_predictor=first.cls_score,
        mask_head=first.mask_head,
        mask_predictor=first.mask_predictor,
        **kwargs,
    )
    single = model.roi_heads
    model.roi_heads = CascadeRoIHeads(
        stages=stages,
        box_roi_pool=single.box_roi_pool,
        mask_roi_pool=single.mask_roi_pool,
        stage_iou_thresholds=tuple(stage_iou_thresholds),
        stage_loss_weights=tuple(stage_loss_weights),
        batch_size_per_image=single.fg_bg_sampler.batch_size_per_image,
        positive_fraction=single.fg_bg_sampler.positive_fraction,
        score_thresh=single.score_thresh,
        nms_thresh=single.nms_thresh,
        detections_per_img=single.detections_per_img,
    )
    return model


def _faster_rcnn(fpn: BackboneWithFPN, num_classes: int, widths: dict[str, int], **kwargs: Any) -> nn.Module:
    return _rcnn(FasterRCNN, fpn, num_classes, widths, **kwargs)


def _retinanet(fpn: BackboneWithFPN, num_classes: int, widths: dict[str, int], **kwargs: Any) -> nn.Module:
    return RetinaNet(fpn, num_classes + 1, **kwargs)


def _fcos(fpn: BackboneWithFPN, num_classes: int, widths: dict[str, int], **kwargs: Any) -> nn.Module:
    return FCOS(fpn, num_classes + 1, **kwargs)


# name -> (builder, backbone levels used, extra FPN block factory given (C5 channels, FPN width))
DETECTORS: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...], Callable[[int, int], nn.Module]]] = {
    "mask_rcnn": (_mask_rcnn, RCNN_LEVELS, lambda c5, width: LastLevelMaxPool()),
    "cascade_mask_rcnn": (_cascade_mask_rcnn, RCNN_LEVELS, lambda c5, width: LastLevelMaxPool()),
    "faster_rcnn": (_faster_rcnn, RCNN_LEVELS, lambda c5, width: LastLevelMaxPool()),
    "retinanet": (_retinanet, SINGLE_STAGE_LEVELS, lambda c5, width: LastLevelP6P7(c5, width)),  # P6 from C5
    "fcos": (_fcos, SINGLE_STAGE_LEVELS, lambda c5, width: LastLevelP6P7(width, width)),  # P6 from P5
}


TORCHVISION_CLASSES: dict[str, type] = {
    "mask_rcnn": MaskRCNN,
    "cascade_mask_rcnn": MaskRCNN,
    "faster_rcnn": FasterRCNN,
    "retinanet": RetinaNet,
    "fcos": FCOS,
}
SET_BY_BUILDER = {
    "self", "backbone", "num_classes", "kwargs", "box_head", "box_predictor", "mask_head", "mask_predictor",
    "min_size", "max_size", "image_mean", "image_std",
}  # fmt: skip
# torchvision options that take a built module: a YAML value cannot be one
MODULE_OPTIONS = {
    "anchor_generator", "head", "proposal_matcher", "box_roi_pool", "mask_roi_pool", "rpn_anchor_generator", "rpn_head",
}  # fmt: skip
# The cascade sets IoU thresholds and box coders per stage instead of torchvision's single values.
CASCADE_OPTIONS = {"stage_iou_thresholds", "stage_loss_weights"}
REPLACED_BY_CASCADE = {"box_fg_iou_thresh", "box_bg_iou_thresh", "bbox_reg_weights"}


WITH_MASKS = {"mask_rcnn", "cascade_mask_rcnn"}


def list_detectors() -> list[str]:
    return sorted(DETECTORS)


def detector_has_masks(name: str) -> bool:
    """Whether detector `name` trains on instance masks (so the data must load them)."""
    return name in WITH_MASKS


def detector_options(name: str) -> set[str]:
    """Keyword arguments of the torchvision detector `name` that callers may pass through."""
    options = set(inspect.signature(TORCHVISION_CLASSES[name]).parameters) - SET_BY_BUILDER - MODULE_OPTIONS
    if name == "cascade_mask_rcnn":
        return (options - REPLACED_BY_CASCADE) | CASCADE_OPTIONS
    return options


def build_detector(
    name: str,
    *,
    backbone: str | nn.Module,
    num_classes: int,
    pretrained_backbone: str | Path | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    fpn_channels: int = 256,
    box_head_channels: int = 1024,
    mask_head_channels: int = 256,
    test_min_size: int = 800,
    test_max_size: int = 1333,
    **detector_kwargs: Any,
) -> nn.Module:
    """A torchvision detector over a FLatten backbone + FPN.

    `backbone` is a registered name (built with `create_backbone(name, pretrained=..., **backbone_kwargs)`
    on the levels the detector needs) or a ready module whose `feature_info` describes its outputs.
    `test_min_size`/`test_max_size` are the test-time resize; training images come resized by the data
    pipeline (`data.train_min_size`/`data.train_max_size`).
    `fpn_channels`, `box_head_channels` and `mask_head_channels` default to the standard widths.
    Other keyword arguments go to the torchvision detector (e.g. `box_detections_per_img`).
    """
    if name not in DETECTORS:
        raise ValueError(f"unknown detector {name!r}; choose one of {', '.join(list_detectors())}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1 (foreground classes), got {num_classes}")
    unknown = sorted(set(detector_kwargs) - detector_options(name))
    if unknown:
        raise TypeError(
            f"{name} has no option {', '.join(unknown)}; options: {', '.join(sorted(detector_options(name)))}"
        )
    builder, levels, extra_block = DETECTORS[name]
    if isinstance(backbone, str):
        kwargs = dict(backbone_kwargs or {})
        kwargs.setdefault("out_indices", levels)
        body = create_backbone(backbone, pretrained=pretrained_backbone, **kwargs)
    else:
        if pretrained_backbone is not None or backbone_kwargs:
            raise ValueError("pretrained_backbone and backbone_kwargs apply only when the backbone is given by name")
        body = backbone
    c5_channels = body.feature_info.channels()[-1]
    fpn = BackboneWithFPN(body, out_channels=fpn_channels, extra_blocks=extra_block(c5_channels, fpn_channels))
    widths = {"box_head_channels": box_head_channels, "mask_head_channels": mask_head_channels}
    model = builder(fpn, num_classes, widths, **detector_kwargs)
    model.transform = InferenceResizeTransform(min_size=test_min_size, max_size=test_max_size)
    model.num_foreground_classes = num_classes
    return model
