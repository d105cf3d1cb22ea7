"""`flatten-dense demo [--task detection|segmentation]`: the project's main job, end to end.

Writes a synthetic dataset in the real on-disk format, trains a small FLatten model on it with
the same code path as COCO / ADE20K, evaluates the best checkpoint (metrics table and
metrics.json) and draws predictions on validation images (one PNG grid). What each task's demo
uses is in its `TaskSpec` (`flatten_dense/tasks.py`).
"""

from __future__ import annotations

import time
from pathlib import Path

from flatten_dense.commands.common import write_json
from flatten_dense.commands.infer import infer
from flatten_dense.commands.test import test
from flatten_dense.commands.train import train
from flatten_dense.core.config import ConfigError
from flatten_dense.core.image_io import read_rgb_image, write_png
from flatten_dense.core.paths import CONFIGS
from flatten_dense.core.visualize import image_grid
from flatten_dense.tasks import task_spec

__all__ = ["CONFIGS", "demo"]

PICTURES = 6


def demo(*, task: str = "detection", out_dir: str | Path = "runs/demo", config: str | Path | None = None) -> dict:
    """Run the demo of a task; returns its summary (also written to RUN_DIR/demo.json).

    `config` swaps in another model config of the same task (e.g. the Cascade Mask R-CNN demo
    config); it trains on the same synthetic data, in a run folder named after the config.
    """
    spec = task_spec(task)
    start = time.perf_counter()
    out_dir = Path(out_dir)
    default_config = CONFIGS / spec.demo_config
    if config is not None and not Path(config).is_file():
        raise ConfigError(f"demo config not found: {config}")
    config = Path(config) if config is not None else default_config
    data_root = out_dir / f"data_{task}"
    if not data_root.is_dir():
        spec.make_demo_data(data_root)
    run_dir = out_dir / (task if config == default_config else config.stem)
    overrides = [f"data.root={data_root}", f"trainer.default_root_dir={run_dir}"]
    train(config, [*overrides, "resume=none"])
    best = run_dir / "checkpoints" / "best.ckpt"
    summary = test(config, best, overrides)
    images = sorted(data_root.glob(spec.demo_images))[:PICTURES]
    drawn = infer(config, best, images, out_dir=run_dir / "predictions", overrides=overrides)
    picture = write_png(image_grid([read_rgb_image(p) for p in drawn]), run_dir / "predictions.png")
    value = summary["metrics"][spec.demo_metric]
    result = {
        "task": task,
        spec.demo_metric: value,
        "target": spec.demo_target,
        "reached": value >= spec.demo_target,
        "minutes": round((time.perf_counter() - start) / 60, 2),
        "metrics": str(run_dir / "metrics.json"),
        "picture": str(picture),
    }
    write_json(run_dir / "demo.json", result)
    print(f"\ndemo {task}: {spec.demo_metric} = {value:.3f} (target {spec.demo_target}) in {result['minutes']} min")
    print(f"metrics: {result['metrics']}\npredictions: {picture}")
    return result
