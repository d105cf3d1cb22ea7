"""FLatten backbones: the model zoo, its builders and checkpoint loading."""

from .checkpoint import CheckpointMismatchError, load_pretrained, read_state_dict
from .feature_info import FeatureInfo
from .flatten_cswin import FlattenCSWin
from .flatten_pvt import FlattenPVT
from .flatten_swin import FlattenSwin
from .pyramid_model import PyramidModel
from .registry import create_backbone, create_classifier, list_models

__all__ = [
    "CheckpointMismatchError",
    "FeatureInfo",
    "FlattenCSWin",
    "FlattenPVT",
    "FlattenSwin",
    "PyramidModel",
    "create_backbone",
    "create_classifier",
    "list_models",
    "load_pretrained",
    "read_state_dict",
]
