"""`flatten-dense train CONFIG [key=value ...] [resume=PATH|auto|none]`.

By default (resume=auto) a rerun of the same command resumes from the newest checkpoint of the run
that loads (`last.ckpt`, step checkpoints, Lightning's `hpc_ckpt_N.ckpt`); broken ones are set aside
with a warning. The resumed run continues the same log version. Exit codes: 0 done, 143 after
SIGTERM and 138 after SIGUSR1 (a checkpoint was saved first), 1 when the numerical guard stops the
run, 2 for a mistake in the input.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import OmegaConf

from flatten_dense.commands.build import (
    Run,
    build_datamodule,
    build_trainer,
    load_run,
    read_training_checkpoint,
    task_for_data,
)
from flatten_dense.commands.common import pop_option, write_json
from flatten_dense.core.checkpointing import newest_complete_checkpoint
from flatten_dense.core.config import ConfigError
from flatten_dense.core.launch import check_launch, process_rank
from flatten_dense.core.rng_state import RNGStateCallback
from flatten_dense.core.run_log import RunCSVLogger, latest_version

__all__ = ["train"]

log = logging.getLogger(__name__)


def _resume_path(resume: str | None, run_dir: Path) -> str | None:
    """resume=PATH resumes from that file; default (auto) from the run's newest complete checkpoint."""
    if resume in ("none", "false", "False"):
        return None
    if resume not in (None, "auto"):
        if not Path(resume).is_file():
            raise ConfigError(f"resume checkpoint not found: {resume}")
        read_training_checkpoint(resume)  # garbage, truncated or code-running: one line, before any work
        return resume
    rank = process_rank()
    found = newest_complete_checkpoint(run_dir, rename=rank == 0)
    if found is not None and rank == 0:
        log.warning("resuming from %s (pass resume=none to start afresh)", found)
    return str(found) if found is not None else None


def _logger(run: Run, ckpt_path: str | None) -> RunCSVLogger:
    """The run's CSV log; a resumed run continues its latest version from the checkpoint's step."""
    root = run.run_dir / "logs"
    version = latest_version(root) if ckpt_path else None
    if version is None:
        return RunCSVLogger(str(run.run_dir), name="logs")
    step = int(torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))
    return RunCSVLogger(str(run.run_dir), name="logs", version=version, continue_before_step=step)


def _log_effective_batch(trainer: L.Trainer, run: Run) -> None:
    batch = int(run.section("data").get("batch_size", 1))
    accumulate = int(trainer.accumulate_grad_batches)
    rank_zero_info(
        f"effective batch size {trainer.world_size * batch * accumulate} = {trainer.world_size} processes x "
        f"{batch} images x {accumulate} accumulated batches"
    )


def train(config: str | Path, overrides: list[str] = ()) -> dict[str, float]:
    """Train from a config; returns the final logged metrics (also in RUN_DIR/train_metrics.json)."""
    resume, overrides = pop_option(list(overrides), "resume")
    run = load_run(config, overrides)
    check_launch(run.section("trainer"))  # a launcher/trainer mismatch fails before data and model are built
    L.seed_everything(int(run.cfg.get("seed", 0)), workers=True)
    datamodule = build_datamodule(run)
    task = task_for_data(run, datamodule)
    ckpt_path = _resume_path(resume, run.run_dir)
    trainer = build_trainer(run, callbacks=[RNGStateCallback()], logger=_logger(run, ckpt_path))
    if trainer.is_global_zero:
        OmegaConf.save(run.cfg, run.run_dir / "config.yaml")
    _log_effective_batch(trainer, run)
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if trainer.is_global_zero:
        write_json(run.run_dir / "train_metrics.json", {"metrics": metrics, "best_checkpoint": best})
    return metrics
