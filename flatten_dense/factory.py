"""From a loaded config to the run's pieces: DataModule, task (LightningModule) and Trainer.

All config checking happens here, before anything heavy starts, so a typo or a missing dataset
is reported as one line naming the key or the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig

from .config import ConfigError, check_kwargs, to_container
from .optim import build_optimizer, build_scheduler
from .tasks.base import DenseTask

__all__ = ["build_datamodule", "build_task", "build_trainer", "datamodule_class", "task_class"]


def datamodule_class(task: str) -> type[L.LightningDataModule]:
    if task == "detection":
        from .data.coco_datamodule import CocoDataModule

        return CocoDataModule
    if task == "segmentation":
        from .data.ade20k_datamodule import ADE20KDataModule

        return ADE20KDataModule
    raise ConfigError(f"'task' must be detection or segmentation, got {task!r}")


def task_class(task: str) -> type[DenseTask]:
    if task == "detection":
        from .tasks.detection import DetectionTask

        return DetectionTask
    if task == "segmentation":
        from .tasks.segmentation import SegmentationTask

        return SegmentationTask
    raise ConfigError(f"'task' must be detection or segmentation, got {task!r}")


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    cls = datamodule_class(cfg.get("task"))
    data = to_container(cfg.get("data"))
    check_kwargs(cls, data, where="data")
    try:
        return cls(**data)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"data: {error}") from None


def _checked_section(cfg: DictConfig, name: str, fn, *, skip: tuple[str, ...]) -> dict[str, Any] | None:
    section = cfg.get(name)
    if section is None:
        return None
    section = to_container(section)
    check_kwargs(fn, section, where=name)
    for key in skip:
        if key in section:
            raise ConfigError(f"'{name}.{key}' is set by the run itself; remove it from the config")
    return section


def build_task(cfg: DictConfig, datamodule: L.LightningDataModule, *, load_pretrained: bool = True) -> DenseTask:
    """The LightningModule of the config; `num_classes` must agree with the dataset.

    `load_pretrained=False` skips the ImageNet backbone file (when a checkpoint replaces it anyway).
    """
    task = cfg.get("task")
    model = to_container(cfg.get("model"))
    data_classes = datamodule.num_classes
    if model.get("num_classes") is None:
        model["num_classes"] = data_classes
    elif int(model["num_classes"]) != data_classes:
        raise ConfigError(f"'model.num_classes' is {model['num_classes']} but data.root has {data_classes} classes")
    if not load_pretrained and isinstance(model.get("backbone"), dict):
        model["backbone"].pop("pretrained", None)
    optimizer = _checked_section(cfg, "optimizer", build_optimizer, skip=("model",))
    if optimizer is None:
        raise ConfigError("the 'optimizer' section is missing")
    scheduler = _checked_section(cfg, "scheduler", build_scheduler, skip=("optimizer", "steps_per_epoch", "max_epochs", "max_steps"))
    kwargs: dict[str, Any] = dict(model=model, optimizer=optimizer, scheduler=scheduler, class_names=list(datamodule.class_names))
    if task == "detection":
        kwargs["label_to_category_id"] = dict(datamodule.label_to_category_id)
    if task == "segmentation":
        kwargs["evaluation"] = to_container(cfg.get("evaluation"))  # whole/slide, aug_test, ...
    try:
        return task_class(task)(**kwargs)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"model: {error}") from None


def build_trainer(cfg: DictConfig, run_dir: Path, task: DenseTask, *, evaluation: bool = False) -> L.Trainer:
    """A Trainer writing under `run_dir`: CSV logs, the best and the last checkpoint, lr curve.

    `last.ckpt` is written at every training epoch's end so no finished epoch is lost; the
    samplers shard by rank themselves, so Lightning's distributed sampler is turned off.
    """
    kwargs = to_container(cfg.get("trainer"))
    kwargs["default_root_dir"] = str(run_dir)
    kwargs["use_distributed_sampler"] = False
    if evaluation:
        kwargs.update(logger=False, enable_checkpointing=False, callbacks=[])
        return L.Trainer(**{k: v for k, v in kwargs.items() if k not in ("max_epochs", "max_steps")})
    checkpoints = run_dir / "checkpoints"
    best = ModelCheckpoint(
        dirpath=checkpoints,
        filename="best",
        monitor=task.monitor,
        mode=task.mode,
        save_top_k=1,
        enable_version_counter=False,
    )
    last = ModelCheckpoint(
        dirpath=checkpoints,
        filename="last",
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    kwargs.setdefault("logger", CSVLogger(str(run_dir), name="logs"))
    kwargs["callbacks"] = [best, last, LearningRateMonitor(logging_interval="step")]
    return L.Trainer(**kwargs)
