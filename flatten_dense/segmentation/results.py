"""Label PNGs of a format-only run, as the ADE20K test server takes them (mmseg's `format_only`).

`LabelPngWriter` is a Lightning callback for the predict run of `flatten-dense test --format-only
--out-dir DIR`: each image's class map becomes DIR/<image stem>.png, a uint8 grayscale PNG in the
dataset's own label encoding. With `reduce_zero_label` (ADE20K) class k is written as k + 1, so
the values are 1..150 and 0 ("other") never occurs; without it class k is written as k. Every
rank writes its own images; rank 0 reports how many were written in all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from PIL import Image

from flatten_dense.segmentation.labels import IGNORE_INDEX

__all__ = ["LabelPngWriter", "label_png_values"]


def label_png_values(class_map: torch.Tensor, *, reduce_zero_label: bool) -> np.ndarray:
    """Class indices H x W -> the uint8 values of the dataset's label files (k + 1 with reduce_zero_label)."""
    return (class_map.detach().cpu() + int(reduce_zero_label)).to(torch.uint8).numpy()


class LabelPngWriter(L.Callback):
    """Writes a predict run's class maps (`SegmentationTask.predict_step`) as OUT_DIR/<stem>.png."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.written: dict[str, Path] = {}
        self.count = 0
        self.reduce_zero_label = True

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.reduce_zero_label = bool(trainer.datamodule.reduce_zero_label)
        highest = pl_module.num_classes - 1 + int(self.reduce_zero_label)
        if highest >= IGNORE_INDEX:  # before the first prediction, not after
            raise ValueError(
                f"{pl_module.num_classes} classes do not fit uint8 label PNGs: values up to {highest}, "
                f"and {IGNORE_INDEX} is the ignore label"
            )
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def on_predict_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for class_map, target in zip(outputs, batch[1], strict=True):
            values = label_png_values(class_map, reduce_zero_label=self.reduce_zero_label)
            Image.fromarray(values).save(self.out_dir / f"{target['image_id']}.png", format="PNG")
            self.count += 1

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = int(trainer.strategy.reduce(torch.tensor(float(self.count), device=pl_module.device), reduce_op="sum"))
        if trainer.is_global_zero:
            self.written = {"png": self.out_dir}
            low, high = int(self.reduce_zero_label), pl_module.num_classes - 1 + int(self.reduce_zero_label)
            print(f"{total} label PNGs (values {low}..{high}) written to {self.out_dir}")
