"""flatten-dense: FLatten Transformer backbones for detection and segmentation."""

from .models import CheckpointMismatchError, create_backbone, create_classifier, list_models

__all__ = ["CheckpointMismatchError", "create_backbone", "create_classifier", "list_models"]
try:  # timm is optional (extra "timm"): with it, every zoo name is also a timm model
    import timm as _timm  # noqa: F401
except ImportError:
    pass
else:
    from .models.timm_registration import register_with_timm as _register_with_timm

    _register_with_timm()

__version__ = "0.2.0"
