"""Pictures of detections: masks, boxes and 'name score' captions."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from flatten_dense.core.visualize import palette, to_uint8

__all__ = ["draw_detection_prediction", "draw_detections"]


def draw_detections(
    image: Tensor, output: dict[str, Tensor], class_names: Sequence[str], *, score_threshold: float = 0.5
) -> Tensor:
    """image uint8 (3, H, W) + detector output -> uint8 (3, H, W) with masks, boxes and 'name score'."""
    keep = output["scores"] >= score_threshold
    labels = output["labels"][keep].tolist()
    colors = palette(max(len(class_names), 1) + 1)
    label_colors = [colors[label % len(colors)] for label in labels]
    canvas = image
    if "masks" in output and keep.any():
        masks = output["masks"][keep][:, 0] > 0.5
        canvas = draw_segmentation_masks(canvas, masks, alpha=0.45, colors=label_colors)
    names = [class_names[label - 1] if 0 < label <= len(class_names) else str(label) for label in labels]
    captions = [f"{name} {score:.2f}" for name, score in zip(names, output["scores"][keep].tolist())]
    if keep.any():
        canvas = draw_bounding_boxes(canvas, output["boxes"][keep], labels=captions, colors=label_colors, width=2)
    return canvas


@torch.no_grad()
def draw_detection_prediction(task, image: Tensor, score_threshold: float = 0.5) -> Tensor:
    """A DetectionTask (in eval mode) predicts on `image` (float 3 x H x W in [0, 1]); drawn as uint8."""
    output = task.predict_image(image)
    return draw_detections(to_uint8(image), output, task.class_names, score_threshold=score_threshold)
