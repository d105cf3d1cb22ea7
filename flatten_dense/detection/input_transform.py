"""torchvision's detector input transform, minus the training-time resize.

Our data pipeline already resizes training images (single- or multi-scale, in the workers), so
resizing again inside the model would undo multi-scale training. At inference the model still
resizes (shorter side `min_size`, longer <= `max_size`) and maps detections back to the
original image size, so evaluation runs against the annotation file's own coordinates.
"""

from __future__ import annotations

from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform

__all__ = ["InferenceResizeTransform"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class InferenceResizeTransform(GeneralizedRCNNTransform):
    """Normalise, pad to multiples of 32 and batch; resize only in eval mode."""

    def __init__(self, *, min_size: int, max_size: int) -> None:
        super().__init__(min_size, max_size, list(IMAGENET_MEAN), list(IMAGENET_STD), size_divisible=32)

    def resize(self, image: Tensor, target: dict | None = None) -> tuple[Tensor, dict | None]:
        if self.training:
            return image, target
        return super().resize(image, target)
