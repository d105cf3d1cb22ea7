"""`flatten-dense train CONFIG [key=value ...] [resume=PATH|auto|none]`."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from flatten_dense.commands.build import build_datamodule, build_trainer, load_run, task_for_data
from flatten_dense.commands.common import pop_option, write_json
from flatten_dense.core.config import ConfigError

__all__ = ["train"]

log = logging.getLogger(__name__)


def _resume_path(resume: str | None, run_dir: Path) -> str | None:
    """resume=PATH resumes from that file; default (auto) from the run's last.ckpt if present."""
    if resume in ("none", "false", "False"):
        return None
    if resume not in (None, "auto"):
        if not Path(resume).is_file():
            raise ConfigError(f"resume checkpoint not found: {resume}")
        return resume
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        log.warning("resuming from %s (pass resume=none to start afresh)", last)
        return str(last)
    return None


def train(config: str | Path, overrides: list[str] = ()) -> dict[str, float]:
    """Train from a config; returns the final logged metrics (also in RUN_DIR/train_metrics.json)."""
    resume, overrides = pop_option(list(overrides), "resume")
    run = load_run(config, overrides)
    L.seed_everything(int(run.cfg.get("seed", 0)), workers=True)
    datamodule = build_datamodule(run)
    task = task_for_data(run, datamodule)
    trainer = build_trainer(run)
    ckpt_path = _resume_path(resume, run.run_dir)
    if trainer.is_global_zero:
        OmegaConf.save(run.cfg, run.run_dir / "config.yaml")
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if trainer.is_global_zero:
        write_json(run.run_dir / "train_metrics.json", {"metrics": metrics, "best_checkpoint": best})
    return metrics
