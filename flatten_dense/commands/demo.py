"""`flatten-dense demo [--task detection|segmentation]`: the project's main job, end to end.

Writes a synthetic dataset in the real on-disk format, trains a small FLatten model on it with
the same code path as COCO / ADE20K, evaluates the best checkpoint (metrics table and
metrics.json) and draws predictions on validation images (one PNG grid).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.io import read_image, write_png
from torchvision.utils import make_grid

from .common import write_json
from .infer import infer
from .test import test
from .train import train

__all__ = ["DEMOS", "demo"]

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
PICTURES = 6


@dataclass(frozen=True)
class DemoSpec:
    config: Path
    make_data: Callable[[Path], Path]
    validation_images: str  # glob under the data root
    metric: str
    target: float


def _synthetic_coco(root: Path) -> Path:
    from flatten_dense.data.synthetic_coco import make_synthetic_coco

    return make_synthetic_coco(root)


def _synthetic_ade20k(root: Path) -> Path:
    from flatten_dense.data.synthetic_ade20k import make_synthetic_ade20k

    return make_synthetic_ade20k(root)


DEMOS = {
    "detection": DemoSpec(
        CONFIGS / "detection" / "demo_mask_rcnn_flatten_pvt_v2_b0_synthetic.yaml", _synthetic_coco, "val2017/*.png", "test/bbox_mAP", 0.30
    ),
    "segmentation": DemoSpec(
        CONFIGS / "segmentation" / "demo_sem_fpn_flatten_pvt_v2_b0_synthetic.yaml",
        _synthetic_ade20k,
        "images/validation/*",
        "test/mIoU",
        0.50,
    ),
}


def _grid(pictures: list[Path], target: Path) -> Path:
    images = [read_image(str(p)) for p in pictures]
    height = max(i.shape[1] for i in images)
    width = max(i.shape[2] for i in images)
    padded = [torch.nn.functional.pad(i, (0, width - i.shape[2], 0, height - i.shape[1]), value=255) for i in images]
    write_png(make_grid(padded, nrow=3, padding=4, pad_value=255), str(target))
    return target


def demo(*, task: str = "detection", out_dir: str | Path = "runs/demo", config: str | Path | None = None) -> dict:
    """Run the demo of a task; returns its summary (also written to RUN_DIR/demo.json).

    `config` swaps in another model config of the same task (e.g. the Cascade Mask R-CNN demo
    config); it trains on the same synthetic data, in a run folder named after the config.
    """
    spec = DEMOS[task]
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"demo config not found: {config}")
    config = Path(config) if config is not None else spec.config
    data_root = out_dir / f"data_{task}"
    if not data_root.is_dir():
        spec.make_data(data_root)
    run_dir = out_dir / (task if config == spec.config else config.stem)
    overrides = [f"data.root={data_root}", f"trainer.default_root_dir={run_dir}"]
    train(config, [*overrides, "resume=none"])
    summary = test(config, run_dir / "checkpoints" / "best.ckpt", overrides)
    images = sorted(data_root.glob(spec.validation_images))[:PICTURES]
    drawn = infer(config, run_dir / "checkpoints" / "best.ckpt", images, out_dir=run_dir / "predictions", overrides=overrides)
    picture = _grid(drawn, run_dir / "predictions.png")
    value = summary["metrics"][spec.metric]
    result = {
        "task": task,
        spec.metric: value,
        "target": spec.target,
        "reached": value >= spec.target,
        "minutes": round((time.perf_counter() - start) / 60, 2),
        "metrics": str(run_dir / "metrics.json"),
        "picture": str(picture),
    }
    write_json(run_dir / "demo.json", result)
    print(f"\ndemo {task}: {spec.metric} = {value:.3f} (target {spec.target}) in {result['minutes']} min")
    print(f"metrics: {result['metrics']}\npredictions: {picture}")
    return result
