"""`flatten-dense train CONFIG [key=value ...] [resume=PATH|auto|none]`."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from omegaconf import OmegaConf

from flatten_dense.config import ConfigError
from flatten_dense.factory import build_datamodule, build_task, build_trainer

from .common import load_run_config, pop_option, write_json

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
    cfg, run_dir = load_run_config(config, overrides)
    L.seed_everything(int(cfg.get("seed", 0)), workers=True)
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule)
    trainer = build_trainer(cfg, run_dir, task)
    ckpt_path = _resume_path(resume, run_dir)
    if trainer.is_global_zero:
        OmegaConf.save(cfg, run_dir / "config.yaml")
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if trainer.is_global_zero:
        write_json(run_dir / "train_metrics.json", {"metrics": metrics, "best_checkpoint": best})
    return metrics
