"""Detection and instance segmentation: COCO data, FPN wiring, torchvision detectors, cascade heads,
COCO metric and result files, the LightningModule, and this task's `SPEC` for the registry."""

from flatten_dense.core.task import TaskSpec
from flatten_dense.detection.builders import DETECTORS, build_detector, detector_options, list_detectors
from flatten_dense.detection.datamodule import CocoDataModule
from flatten_dense.detection.model_config import data_from_detector, detector_model_keys, detector_problems
from flatten_dense.detection.results import CocoResultsWriter, submission_writer
from flatten_dense.detection.synthetic import make_synthetic_coco
from flatten_dense.detection.task import DetectionTask
from flatten_dense.detection.visualize import draw_detection_prediction

__all__ = ["DETECTORS", "SPEC", "build_detector", "detector_options", "list_detectors"]


def _module_kwargs(datamodule: CocoDataModule) -> dict:
    return {"class_names": list(datamodule.class_names), "label_to_category_id": dict(datamodule.label_to_category_id)}


SPEC = TaskSpec(
    datamodule=CocoDataModule,
    module=DetectionTask,
    model_problems=detector_problems,
    model_keys=detector_model_keys,
    draw=draw_detection_prediction,
    monitor="val/bbox_mAP",
    demo_config="detection/demo_mask_rcnn_flatten_pvt_v2_b0_synthetic.yaml",
    make_demo_data=make_synthetic_coco,
    demo_images="val2017/*.png",
    demo_metric="test/bbox_mAP",
    demo_target=0.30,
    data_from_model=data_from_detector,
    results_writer=CocoResultsWriter,
    format_writer=submission_writer,
    module_kwargs=_module_kwargs,
)
