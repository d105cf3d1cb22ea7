"""What both dense-prediction LightningModules share: the network, optimiser and schedule.

Subclasses set `monitor`/`mode` (the validation metric checkpoints follow) and the steps.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from torch import nn

from flatten_dense.model_builder import build_task_model
from flatten_dense.optim import build_optimizer, build_scheduler

__all__ = ["DenseTask"]


class DenseTask(L.LightningModule):
    task: str = ""
    monitor: str = ""
    mode: str = "max"

    def __init__(self, *, model: dict[str, Any], optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: nn.Module = build_task_model(self.task, model)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = build_optimizer(self.model, **self.hparams.optimizer)
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        trainer = self.trainer
        total_steps = int(trainer.estimated_stepping_batches)
        max_epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
        steps_per_epoch = max(1, total_steps // max_epochs) if max_epochs else None
        scheduler = build_scheduler(
            optimizer,
            **self.hparams.scheduler,
            steps_per_epoch=steps_per_epoch,
            max_epochs=max_epochs,
            max_steps=trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else total_steps,
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
