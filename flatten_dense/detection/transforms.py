"""torchvision.transforms.v2 pipelines for detection: (image, target) in, (image, target) out.

Images come out float32 in [0, 1]; boxes, labels, masks, iscrowd and area stay aligned.

Area convention: `area` is always in pixels of the image that comes out. Resizing multiplies it
by (new_h * new_w) / (old_h * old_w), the exact factor for a scaled region, so it stays the
annotation's area in the new pixel grid (flips leave it unchanged). The "eval" pipeline does not
resize, so evaluation sees the file's original areas, as COCO's small/medium/large ranges expect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["DetectionTransforms", "build_detection_transforms", "KINDS"]

KINDS = ("train", "train_multiscale", "eval")


def _labels_iscrowd_area(inputs: Any) -> tuple[torch.Tensor, ...]:
    """Tensors that `SanitizeBoundingBoxes` must filter together with the boxes.

    Module level so the pipeline pickles into spawned DataLoader workers. Masks are filtered by
    SanitizeBoundingBoxes itself (per-instance masks with N matching the boxes).
    """
    target = inputs[1]
    return tuple(target[key] for key in ("labels", "iscrowd", "area") if key in target)


class DetectionTransforms:
    """Apply a v2 pipeline to (image, target) and rescale `area` by the change of image size."""

    def __init__(self, pipeline: v2.Transform) -> None:
        self.pipeline = pipeline

    def __call__(self, image: Any, target: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        old_h, old_w = F.get_size(image)
        image, target = self.pipeline(image, target)
        new_h, new_w = F.get_size(image)
        if "area" in target and (new_h, new_w) != (old_h, old_w):
            target["area"] = target["area"] * ((new_h * new_w) / (old_h * old_w))
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


def build_detection_transforms(
    kind: str,
    *,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    flip_prob: float = 0.5,
) -> DetectionTransforms:
    """Build a pipeline.

    kind:
      "train": shorter side resized to `min_size` (an int), longer side <= `max_size`,
        horizontal flip with `flip_prob`.
      "train_multiscale": shorter side drawn at random from `min_size` (a list, e.g.
        range(480, 801, 32)), longer side <= `max_size`, flip.
      "eval": no resize, only conversion to float; the detector resizes at test time and maps
        predictions back to the original size, so metrics are computed in original pixels.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown detection transforms kind {kind!r}; choose one of {', '.join(KINDS)}")
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]  # only images change dtype
    if kind == "eval":
        return DetectionTransforms(v2.Compose(to_float))

    if kind == "train":
        if not isinstance(min_size, int):
            raise ValueError(f"'train' needs one int min_size, got {min_size!r}; use 'train_multiscale' for a list")
        sizes = [min_size]
    else:
        sizes = [min_size] if isinstance(min_size, int) else [int(s) for s in min_size]
        if not sizes:
            raise ValueError("'train_multiscale' needs a non-empty list of min_size values")
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")
    pipeline = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomHorizontalFlip(p=flip_prob),
            # scale = min(s / shorter side, max_size / longer side) with s drawn from `sizes`;
            # resizing uint8 before conversion is cheaper; masks use nearest neighbour.
            v2.RandomShortestSize(min_size=sizes, max_size=max_size, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            # boxes shrunk below 1 px by downscaling go, with their labels, iscrowd, area, masks
            v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=_labels_iscrowd_area),
        ]
    )
    return DetectionTransforms(pipeline)
