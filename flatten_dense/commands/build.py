"""The one build path of every command: config -> validated run -> DataModule, task, Trainer, weights.

`load_run` loads a config with its overrides, looks its task up in `TASKS` and validates every
section at once, so a typo is one line before anything heavy starts. `train`, `test`, `infer`
and `demo` then build their pieces with the functions below and nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig

from flatten_dense.commands.common import writable_dir
from flatten_dense.core.checkpointing import AtomicCheckpointIO, BestCheckpoint, CheckpointOptions
from flatten_dense.core.config import ConfigError, load_config, resolve_run_dir, to_container
from flatten_dense.core.launch import check_launch
from flatten_dense.core.numerics import NumericalGuard, newest_checkpoint_in
from flatten_dense.core.paths import resolve_config
from flatten_dense.core.preemption import PreemptionCallback
from flatten_dense.core.resumable_sampler import RestoreDataPosition
from flatten_dense.core.run_logging import LoggingOptions
from flatten_dense.core.skipped_samples import SkippedSamplesReport
from flatten_dense.core.task import DenseTask, TaskSpec
from flatten_dense.core.validate import VALIDATED_SECTIONS, validate_config
from flatten_dense.models.checkpoint import CheckpointMismatchError, mismatch_report
from flatten_dense.models.safe_load import safe_torch_load
from flatten_dense.tasks import TASKS, task_spec

__all__ = [
    "Run",
    "build_datamodule",
    "build_network",
    "build_task",
    "build_trainer",
    "check_checkpoint_task",
    "load_run",
    "load_task_weights",
    "read_training_checkpoint",
    "task_for_data",
    "task_from_checkpoint",
]


@dataclass(frozen=True)
class Run:
    """A loaded, validated config: its task's spec, where it writes, and the file it came from."""

    cfg: DictConfig
    spec: TaskSpec
    run_dir: Path
    source: str

    @property
    def task_name(self) -> str:
        return str(self.cfg.get("task"))

    def section(self, name: str) -> dict[str, Any]:
        return to_container(self.cfg.get(name))


def load_run(config: str | os.PathLike, overrides: Sequence[str] = (), *, create_run_dir: bool = True) -> Run:
    """Load `config` with `key=value` overrides and validate it whole (ConfigError: one line)."""
    config = resolve_config(config)  # a path, or the name of a packaged config
    source = os.fspath(config)
    # every section is validated whole below, so an override may add keys to any of them (a typo
    # is still caught, with a suggestion); new top-level keys are validated as well
    cfg = load_config(config, list(overrides), open_sections=VALIDATED_SECTIONS)
    spec = task_spec(cfg.get("task"))
    validate_config(cfg, spec=spec, source=source)
    run_dir = resolve_run_dir(cfg, config_path=config)
    if create_run_dir:
        writable_dir(run_dir, "run folder (trainer.default_root_dir)")  # one line for a file, /sys, no permission
    return Run(cfg=cfg, spec=spec, run_dir=run_dir, source=source)


def build_datamodule(run: Run) -> L.LightningDataModule:
    """The task's DataModule, with the keys the model decides (e.g. detection masks) filled in."""
    data = run.section("data")
    data.update(run.spec.data_from_model(run.section("model")))
    return run.spec.datamodule(**data)


def _model_section(run: Run, num_classes: int, *, load_pretrained: bool) -> dict[str, Any]:
    model = run.section("model")
    if model.get("num_classes") is None:
        model["num_classes"] = num_classes
    elif int(model["num_classes"]) != num_classes:
        raise ConfigError(f"'model.num_classes' is {model['num_classes']} but the data has {num_classes} classes")
    if not load_pretrained and isinstance(model.get("backbone"), dict):
        model["backbone"].pop("pretrained", None)
    return model


def build_task(
    run: Run,
    *,
    num_classes: int,
    data_info: Mapping[str, Any],
    load_pretrained: bool = True,
) -> DenseTask:
    """The task's LightningModule; `num_classes` and `data_info` (class names, ids) come from the data.

    `load_pretrained=False` skips the ImageNet backbone file (when a checkpoint replaces it anyway).
    """
    kwargs: dict[str, Any] = dict(
        model=_model_section(run, num_classes, load_pretrained=load_pretrained),
        optimizer=run.section("optimizer"),
        scheduler=run.section("scheduler") or None,
        **data_info,
    )
    for name in run.spec.sections:  # the task's own sections, e.g. segmentation's `evaluation`
        kwargs[name] = run.section(name)
    return run.spec.module(**kwargs)


def task_for_data(run: Run, datamodule: L.LightningDataModule, *, load_pretrained: bool = True) -> DenseTask:
    """`build_task` with the class count and names read from the DataModule."""
    return build_task(
        run,
        num_classes=int(datamodule.num_classes),
        data_info=run.spec.module_kwargs(datamodule),
        load_pretrained=load_pretrained,
    )


def build_network(run: Run, *, num_classes: int) -> torch.nn.Module:
    """Only the network of a config (random weights), e.g. for benchmarks."""
    module = build_task(run, num_classes=num_classes, data_info={}, load_pretrained=False)
    return module.model


def build_trainer(
    run: Run, *, evaluation: bool = False, callbacks: Sequence[L.Callback] = (), logger: Logger | None = None
) -> L.Trainer:
    """A Trainer writing under the run folder: CSV logs, the best, last and step checkpoints, lr curve.

    Checkpoints are written atomically and never with non-finite weights. `last.ckpt` is written at
    every training epoch's end and on SIGTERM/SIGUSR1 (then the run exits 128 + signal); step
    checkpoints as the `checkpoint` section says. The samplers shard by rank themselves, so
    Lightning's distributed sampler is turned off. `logger` replaces the default CSV log.
    """
    kwargs = check_launch(run.section("trainer"))
    kwargs["default_root_dir"] = str(run.run_dir)
    kwargs["use_distributed_sampler"] = False
    kwargs["plugins"] = [AtomicCheckpointIO()]
    display = LoggingOptions(**run.section("logging"))  # progress bar or log lines, pictures
    if evaluation:
        kwargs.update(
            logger=False,
            enable_checkpointing=False,
            callbacks=[SkippedSamplesReport(), *display.callbacks(kwargs), *callbacks],
        )
        return L.Trainer(**{k: v for k, v in kwargs.items() if k not in ("max_epochs", "max_steps")})
    options = CheckpointOptions(**run.section("checkpoint"))
    checkpoints = run.run_dir / "checkpoints"
    best = BestCheckpoint(
        dirpath=checkpoints,
        filename="best",
        monitor=run.spec.monitor,
        mode=run.spec.mode,
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
    every = {"every_n_train_steps": options.every_n_steps}
    if options.every_n_steps is None:
        every = {"train_time_interval": timedelta(minutes=options.every_minutes)}
    steps = ModelCheckpoint(
        dirpath=checkpoints,
        filename="step-{step:08d}",
        auto_insert_metric_name=False,
        monitor="step",
        mode="max",
        save_top_k=options.keep_last,
        save_on_train_epoch_end=False,
        enable_version_counter=False,
        **every,
    )
    guard = NumericalGuard(options.max_bad_steps, lambda: newest_checkpoint_in(checkpoints))
    kwargs.setdefault("logger", logger or CSVLogger(str(run.run_dir), name="logs"))
    kwargs["callbacks"] = [
        best,
        last,
        steps,
        guard,
        PreemptionCallback(checkpoints),
        RestoreDataPosition(),
        SkippedSamplesReport(),
        LearningRateMonitor(logging_interval="step"),
        *display.callbacks(kwargs, draw=run.spec.draw, pictures_dir=run.run_dir / "pictures"),
        *callbacks,
    ]
    return L.Trainer(**kwargs)


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint of this project, read without running code (tensors and plain data)."""
    path = Path(path)
    payload = safe_torch_load(path)  # one line for a missing, truncated, foreign or code-running file
    if not isinstance(payload, dict) or "state_dict" not in payload:
        raise ValueError(f"{path} is not a flatten-dense training checkpoint (no state_dict)")
    return payload


def _task_of_class(class_name: str) -> str | None:
    return next((name for name, spec in TASKS.items() if spec.module.__name__ == class_name), None)


def check_checkpoint_task(run: Run, payload: Mapping[str, Any], checkpoint: str | Path) -> None:
    """Refuse, in one line, a training checkpoint written by another task than the config's."""
    trained_for = _task_of_class(str(payload.get("task_class", "")))
    if trained_for is not None and trained_for != run.task_name:
        raise ConfigError(
            f"checkpoint {checkpoint} was trained for {trained_for}, but {run.source} is a {run.task_name} config"
        )


def load_task_weights(
    run: Run, task: DenseTask, checkpoint: str | Path, *, payload: Mapping[str, Any] | None = None
) -> None:
    """Load a training checkpoint into `task` strictly; another task's checkpoint is refused in one line."""
    payload = read_training_checkpoint(checkpoint) if payload is None else payload
    check_checkpoint_task(run, payload, checkpoint)
    state = payload["state_dict"]
    missing, unexpected, mismatched = mismatch_report(task, state, ())
    if missing or unexpected or mismatched:
        parts = [
            f"{len(names)} {label} (e.g. {names[0]})"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched))
            if names
        ]
        raise CheckpointMismatchError(f"checkpoint {checkpoint} does not fit {run.source}: " + "; ".join(parts))
    task.load_state_dict(state, strict=True)


TRAINING_KEYS = ("model", "optimizer", "scheduler")


def task_from_checkpoint(run: Run, checkpoint: str | Path) -> DenseTask:
    """The config's task with a training checkpoint's weights, its class count and names taken from
    the checkpoint (so no dataset is needed), in eval mode."""
    payload = read_training_checkpoint(checkpoint)
    check_checkpoint_task(run, payload, checkpoint)
    if "hyper_parameters" not in payload:
        raise ValueError(
            f"{checkpoint} holds no hyper-parameters (class names and count); is it a training checkpoint?"
        )
    hparams = dict(payload["hyper_parameters"])
    data_info = {k: v for k, v in hparams.items() if k not in (*TRAINING_KEYS, *run.spec.sections)}
    num_classes = int(dict(hparams.get("model") or {}).get("num_classes") or 0)
    task = build_task(run, num_classes=num_classes, data_info=data_info, load_pretrained=False)
    load_task_weights(run, task, checkpoint, payload=payload)
    return task.eval()
