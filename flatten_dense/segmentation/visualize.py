"""Pictures of segmentation predictions: a colour per class blended over the image."""

from __future__ import annotations

import torch
from torch import Tensor

from flatten_dense.core.visualize import palette, to_uint8

__all__ = ["draw_segmentation", "draw_segmentation_prediction"]


def draw_segmentation(image: Tensor, prediction: Tensor, num_classes: int, *, alpha: float = 0.5) -> Tensor:
    """image uint8 (3, H, W) + class map (H, W) -> colour overlay uint8 (3, H, W)."""
    colors = torch.tensor(palette(num_classes), dtype=torch.float32)  # K 3
    overlay = colors[prediction.clamp(0, num_classes - 1)].permute(2, 0, 1)  # 3 H W
    blended = image.float() * (1 - alpha) + overlay * alpha
    return blended.round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def draw_segmentation_prediction(task, image: Tensor, score_threshold: float = 0.5) -> Tensor:
    """A SegmentationTask (in eval mode) predicts on `image` (float 3 x H x W in [0, 1]); drawn as uint8.

    `score_threshold` belongs to the shared drawing interface and is unused: every pixel gets a class.
    """
    del score_threshold
    prediction = task.predict_image(image).cpu()
    return draw_segmentation(to_uint8(image), prediction, task.num_classes)
