"""flatten-dense: FLatten Transformer backbones for detection and segmentation."""

from .models import CheckpointMismatchError, create_backbone, create_classifier, list_models

__all__ = ["CheckpointMismatchError", "create_backbone", "create_classifier", "list_models"]
__version__ = "0.2.0"
