"""Detectors (torchvision implementations) over FLatten backbones, and their COCO evaluation."""

from .builders import DETECTORS, build_detector, detector_options, list_detectors

__all__ = ["DETECTORS", "build_detector", "detector_options", "list_detectors"]
