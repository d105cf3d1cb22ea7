"""Pictures from every run: a few fixed validation images drawn with the model's predictions.

At each validation end (not the sanity check), global rank 0 draws the same `num_images`
validation images with the task's `TaskSpec.draw` and writes one grid to
`RUN_DIR/pictures/epoch_XXX.png`, so a run folder shows how predictions evolve. When tensorboard
is installed the grid is logged there too, under `val/predictions`: to the Trainer's
`TensorBoardLogger` if it has one, else to event files of its own in `RUN_DIR/tensorboard`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from flatten_dense.core.image_io import write_png
from flatten_dense.core.visualize import image_grid

__all__ = ["PredictionPictures", "tensorboard_available"]

Draw = Callable[[L.LightningModule, Tensor, float], Tensor]


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def _evenly_spaced(count: int, length: int) -> list[int]:
    if length <= 0:
        return []
    if count >= length:
        return list(range(length))
    return sorted({round(i * (length - 1) / max(count - 1, 1)) for i in range(count)})


def _first_dataset(dataloaders: Any) -> Any:
    if isinstance(dataloaders, (list, tuple)):
        dataloaders = dataloaders[0] if dataloaders else None
    return getattr(dataloaders, "dataset", None)


class PredictionPictures(L.Callback):
    """Draws fixed validation images with predictions at each validation end (rank 0)."""

    def __init__(
        self,
        draw: Draw,
        out_dir: str | Path,
        *,
        num_images: int = 4,
        score_threshold: float = 0.5,
        nrow: int = 4,
        tensorboard_dir: str | Path | None = None,
    ) -> None:
        """Pictures go to `out_dir`; `tensorboard_dir` (default: beside `out_dir`, `tensorboard/`)
        receives the event files when the Trainer has no TensorBoardLogger."""
        self.draw = draw
        self.out_dir = Path(out_dir)
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir else self.out_dir.parent / "tensorboard"
        self._writer: Any = None
        self.num_images = num_images
        self.score_threshold = score_threshold
        self.nrow = nrow
        self._images: list[Tensor] | None = None

    def _validation_images(self, trainer: L.Trainer) -> list[Tensor]:
        if self._images is None:
            dataset = _first_dataset(trainer.val_dataloaders)
            if dataset is None or not hasattr(dataset, "__len__"):
                self._images = []
            else:
                samples = [dataset[i] for i in _evenly_spaced(self.num_images, len(dataset))]
                self._images = [s[0] if isinstance(s, (tuple, list)) else s for s in samples]
        return self._images

    def picture_path(self, epoch: int) -> Path:
        return self.out_dir / f"epoch_{epoch:03d}.png"

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.num_images < 1:
            return
        images = self._validation_images(trainer)
        if not images:
            return
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                drawn = [self.draw(pl_module, image, self.score_threshold).cpu() for image in images]
        finally:
            pl_module.train(was_training)
        grid = image_grid(drawn, nrow=self.nrow)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_png(grid, self.picture_path(trainer.current_epoch))
        writer = self._tensorboard(trainer)
        if writer is not None:
            writer.add_image("val/predictions", grid, global_step=trainer.global_step)
            writer.flush()

    def _tensorboard(self, trainer: L.Trainer) -> Any:
        """The Trainer's TensorBoard writer, else one of our own (tensorboard installed), else None."""
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        if self._writer is None and tensorboard_available():
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.tensorboard_dir))
        return self._writer

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
