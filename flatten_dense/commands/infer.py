"""`flatten-dense infer CONFIG CHECKPOINT IMAGE... --out DIR [--score-threshold 0.5]`.

Draws predictions on each image and writes DIR/<image stem>.png. Class names come from the
checkpoint, so the dataset need not be present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torchvision.io import write_png

from flatten_dense.config import ConfigError
from flatten_dense.data.image_io import read_rgb_image
from flatten_dense.factory import task_class
from flatten_dense.models.checkpoint import load_weights

from .common import load_run_config, require_file

__all__ = ["infer", "task_from_checkpoint"]


def task_from_checkpoint(task: str, checkpoint: Path):
    """Rebuild the task from the hyper-parameters saved in its checkpoint, then load its weights."""
    payload = torch.load(checkpoint, map_location="cpu", weights_only=False)
    hparams: dict[str, Any] = dict(payload.get("hyper_parameters") or {})
    if "model" not in hparams:
        raise ConfigError(f"{checkpoint} is not a flatten-dense training checkpoint (no saved hyper-parameters)")
    model = dict(hparams["model"])
    model["backbone"] = {k: v for k, v in dict(model["backbone"]).items() if k != "pretrained"}
    hparams["model"] = model
    module = task_class(task)(**hparams)
    load_weights(module, checkpoint)
    return module.eval()


def infer(
    config: str | Path,
    checkpoint: str | Path,
    images: list[str | Path],
    *,
    out_dir: str | Path,
    overrides: list[str] = (),
    score_threshold: float = 0.5,
) -> list[Path]:
    """Predict on image files and save drawings; returns the written paths."""
    checkpoint = require_file(checkpoint, "checkpoint")
    if not images:
        raise ConfigError("give at least one image to draw predictions on")
    cfg, _ = load_run_config(config, overrides)
    task = task_from_checkpoint(cfg.get("task"), checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in map(Path, images):
        image = read_rgb_image(path)  # uint8 3 H W
        with torch.no_grad():
            drawing = task.draw(image, score_threshold=score_threshold)
        target = out_dir / f"{path.stem}.png"
        write_png(drawing, str(target))
        written.append(target)
        print(f"wrote {target}")
    return written
