"""Tiny COCO-format data and configs for detection tests (real code path, small sizes)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from flatten_dense.commands.build import build_network, load_run
from flatten_dense.detection.synthetic import make_synthetic_coco

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MASK_DETECTORS = ("mask_rcnn", "cascade_mask_rcnn")

RPN = "  rpn_pre_nms_top_n_train: 100\n  rpn_post_nms_top_n_train: 50\n  box_batch_size_per_image: 32\n"
MASK_HEADS = "  fpn_channels: 32\n  box_head_channels: 64\n  mask_head_channels: 16\n" + RPN
HEAD_OPTIONS = {
    "mask_rcnn": MASK_HEADS,
    "cascade_mask_rcnn": MASK_HEADS,
    "faster_rcnn": "  fpn_channels: 32\n  box_head_channels: 64\n" + RPN,
    "retinanet": "",
    "fcos": "  fpn_channels: 64\n",  # GroupNorm(32) in FCOS' head needs > 1 value per group at 1 x 1 P7
}


def tiny_coco(root: Path, *, num_train: int = 4, num_val: int = 3) -> Path:
    return make_synthetic_coco(root, num_train=num_train, num_val=num_val, image_size=(64, 96))


def tiny_config(folder: Path, detector: str, data_root: Path) -> Path:
    """A config inheriting the real base files, shrunk to seconds on a CPU."""
    path = folder / f"tiny_{detector}.yaml"
    base = CONFIGS / "_base_"
    head_options = HEAD_OPTIONS[detector] or "  fpn_channels: 32\n"
    path.write_text(
        f"""_base_:
  - {base}/default_runtime.yaml
  - {base}/models/{detector}_fpn.yaml
  - {base}/datasets/coco_detection.yaml
  - {base}/schedules/detection_1x.yaml
model:
  num_classes: null
  backbone:
    name: flatten_pvt_v2_b0
    drop_path_rate: 0.0
{head_options}  test_min_size: 64
  test_max_size: 96
data:
  root: {data_root}
  batch_size: 2
  num_workers: 0
  train_min_size: 64
  train_max_size: 96
scheduler:
  warmup_steps: 1
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 1
  limit_train_batches: 2
  num_sanity_val_steps: 0
  enable_progress_bar: false
  enable_model_summary: false
  log_every_n_steps: 1
  default_root_dir: {folder / ("run_" + detector)}
"""
    )
    return path


def build_model(config: Path, overrides: list[str] = (), *, num_classes: int = 80) -> nn.Module:
    """The network of a config file, as every command builds it (random weights)."""
    run = load_run(config, list(overrides), create_run_dir=False)
    return build_network(run, num_classes=num_classes)
