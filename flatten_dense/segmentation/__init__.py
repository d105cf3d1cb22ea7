"""Semantic segmentation: ADE20K data, heads (one FPN), the segmentor and its test-time inference,
the dataset-level mIoU metric, the LightningModule, and this task's `SPEC` for the registry."""

from flatten_dense.core.task import TaskSpec
from flatten_dense.segmentation.datamodule import ADE20KDataModule
from flatten_dense.segmentation.inference import (
    EvaluationSettings,
    aug_test_inference,
    slide_inference,
    whole_inference,
)
from flatten_dense.segmentation.metrics import SegmentationMetrics
from flatten_dense.segmentation.model_config import segmentor_model_keys, segmentor_problems
from flatten_dense.segmentation.results import LabelPngWriter
from flatten_dense.segmentation.segmentor import EncoderDecoder, build_segmentor
from flatten_dense.segmentation.synthetic import make_synthetic_ade20k
from flatten_dense.segmentation.task import SegmentationTask
from flatten_dense.segmentation.visualize import draw_segmentation_prediction

__all__ = [
    "SPEC",
    "EncoderDecoder",
    "EvaluationSettings",
    "SegmentationMetrics",
    "aug_test_inference",
    "build_segmentor",
    "slide_inference",
    "whole_inference",
]


def _module_kwargs(datamodule: ADE20KDataModule) -> dict:
    return {"class_names": list(datamodule.class_names)}


SPEC = TaskSpec(
    datamodule=ADE20KDataModule,
    module=SegmentationTask,
    model_problems=segmentor_problems,
    model_keys=segmentor_model_keys,
    draw=draw_segmentation_prediction,
    monitor="val/mIoU",
    demo_config="segmentation/demo_sem_fpn_flatten_pvt_v2_b0_synthetic.yaml",
    make_demo_data=make_synthetic_ade20k,
    demo_images="images/validation/*",
    demo_metric="test/mIoU",
    demo_target=0.50,
    sections={"evaluation": EvaluationSettings},
    format_writer=LabelPngWriter,
    module_kwargs=_module_kwargs,
)
