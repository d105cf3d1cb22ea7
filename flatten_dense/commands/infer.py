"""`flatten-dense infer CONFIG CHECKPOINT IMAGE|DIR... [key=value ...] --out DIR [--score-threshold 0.5]`.

Builds the task from the config and its overrides (e.g. `model.box_score_thresh=0.9`,
`evaluation.mode=slide`) exactly as `test` does, loads the checkpoint's weights, and writes
DIR/<image stem>.png for each image (a folder stands for the images in it). Class names and
the class count come from the checkpoint, so the dataset need not be present.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from flatten_dense.commands.build import load_run, task_from_checkpoint
from flatten_dense.commands.common import writable_dir
from flatten_dense.core.config import ConfigError
from flatten_dense.core.image_io import IMAGE_SUFFIXES, read_rgb_image, write_png

__all__ = ["expand_images", "infer"]


def expand_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files as given, and the image files (sorted) of each folder given."""
    images: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise ConfigError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {item}")
            images += found
        elif item.is_file():
            images.append(item)
        else:
            raise ConfigError(f"image not found: {item}")
    if not images:
        raise ConfigError("give at least one image (or a folder of images) to draw predictions on")
    return images


def infer(
    config: str | Path,
    checkpoint: str | Path,
    images: Sequence[str | Path],
    *,
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    score_threshold: float = 0.5,
) -> list[Path]:
    """Predict on image files (or folders of them) and save drawings; returns the written paths."""
    run = load_run(config, overrides, create_run_dir=False)
    paths = expand_images(images)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file, not a folder")
    task = task_from_checkpoint(run, checkpoint)  # a refused checkpoint leaves no --out folder behind
    writable_dir(out_dir, "--out")  # before the first image
    written = []
    with torch.no_grad():
        for path in paths:
            image = read_rgb_image(path).float().div(255)  # 3 H W in [0, 1], the models' input
            target = write_png(run.spec.draw(task, image, score_threshold), out_dir / f"{path.stem}.png")
            written.append(target)
            print(f"wrote {target}")
    return written
