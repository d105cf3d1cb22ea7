"""What every dense-prediction task shares: the LightningModule base and the task's spec.

A task is one folder (`flatten_dense/detection`, `flatten_dense/segmentation`) that provides a
`TaskSpec`; `flatten_dense/tasks.py` lists the specs by name, and nothing else switches on a
task name. A `DenseTask` builds its network in `configure_models` (the torchgeo pattern), so the
base class never needs to know which task it is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
from torch import Tensor, nn

from flatten_dense.core.optim import build_optimizer, build_scheduler

__all__ = ["DenseTask", "TaskSpec"]


class DenseTask(L.LightningModule):
    """Network, optimiser and schedule; subclasses build the network and define the steps."""

    def __init__(
        self,
        *,
        model: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        class_names: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names or [])
        self.model: nn.Module = self.configure_models()

    def configure_models(self) -> nn.Module:
        """The network of `self.hparams.model` (a plain, validated `model` section)."""
        raise NotImplementedError

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # lets infer/test refuse a checkpoint of another task in one line
        checkpoint["task_class"] = type(self).__name__

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


@dataclass(frozen=True)
class TaskSpec:
    """Everything the run machinery needs to know about one task.

    datamodule / module: the LightningDataModule and DenseTask classes a config of this task builds.
    model_problems: every problem of a plain `model` section (checked at load time, before building).
    model_keys: every key a `model` section may hold (dotted below it), for the config reference.
    sections: the task's own top-level config sections and the callable each one is passed to.
    data_from_model: data keys the run derives from the model section (so the two cannot disagree).
    module_kwargs: keyword arguments of `module` taken from the datamodule (class names, ids, ...).
    results_writer: a callback class that writes the test run's predictions as files under a prefix.
    format_writer: a callback that writes a predict run's predictions (no ground truth needed) into a
    folder in the benchmark's submission format (`flatten-dense test --format-only --out-dir DIR`).
    draw: (module in eval mode, float image 3 x H x W in [0, 1], score threshold) -> uint8 drawing.
    monitor / mode: the validation metric that chooses `best.ckpt`.
    demo_*: the built-in demo: config (relative to configs/), data maker, validation-image glob,
    the metric it reports and the value it should reach.
    """

    datamodule: type[L.LightningDataModule]
    module: type[DenseTask]
    model_problems: Callable[[Mapping[str, Any]], list[str]]
    model_keys: Callable[[], Iterable[str]]
    draw: Callable[[DenseTask, Tensor, float], Tensor]
    monitor: str
    demo_config: str
    make_demo_data: Callable[[Path], Path]
    demo_images: str
    demo_metric: str
    demo_target: float
    mode: Literal["min", "max"] = "max"
    results_writer: Callable[[Path], L.Callback] | None = None
    format_writer: Callable[[Path], L.Callback] | None = None
    sections: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    data_from_model: Callable[[Mapping[str, Any]], dict[str, Any]] = field(default=lambda model: {})
    module_kwargs: Callable[[L.LightningDataModule], dict[str, Any]] = field(default=lambda datamodule: {})
