"""Encoder-decoder segmentor, inference modes and the dataset-level mIoU metric."""

from flatten_dense.segmentation.inference import aug_test_inference, slide_inference, whole_inference
from flatten_dense.segmentation.metrics import SegmentationMetrics
from flatten_dense.segmentation.segmentor import EncoderDecoder, build_segmentor

__all__ = [
    "EncoderDecoder",
    "SegmentationMetrics",
    "aug_test_inference",
    "build_segmentor",
    "slide_inference",
    "whole_inference",
]
