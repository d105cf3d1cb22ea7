"""Pictures of predictions: boxes, labels, scores and masks; colour overlays for segmentation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

__all__ = ["draw_detections", "draw_segmentation", "palette"]


def palette(num_colors: int, *, seed: int = 3) -> list[tuple[int, int, int]]:
    """Distinct-looking deterministic colours."""
    generator = torch.Generator().manual_seed(seed)
    colors = torch.randint(40, 256, (num_colors, 3), generator=generator)
    return [tuple(int(c) for c in row) for row in colors]


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


def draw_segmentation(image: Tensor, prediction: Tensor, num_classes: int, *, alpha: float = 0.5) -> Tensor:
    """image uint8 (3, H, W) + class map (H, W) -> colour overlay uint8 (3, H, W)."""
    colors = torch.tensor(palette(num_classes), dtype=torch.float32)  # K 3
    overlay = colors[prediction.clamp(0, num_classes - 1)].permute(2, 0, 1)  # 3 H W
    blended = image.float() * (1 - alpha) + overlay * alpha
    return blended.round().clamp(0, 255).to(torch.uint8)
