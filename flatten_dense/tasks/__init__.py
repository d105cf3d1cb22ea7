"""LightningModules for the dense-prediction tasks."""

from .base import DenseTask
from .detection import DetectionTask

__all__ = ["DenseTask", "DetectionTask"]
