"""Distributed launch mistakes, caught before anything heavy starts.

- The launcher (torchrun's or SLURM's variables) says this process is one of several, but the
  trainer section asks for another number: with `trainer.devices` left at `auto` the launcher's
  numbers are adopted (one warning); set explicitly and different, one `ConfigError` line says what
  to pass. (Otherwise every process trains its own full copy, writing the same files.)
- `trainer.sync_batchnorm=true` on CPU processes: SyncBatchNorm needs CUDA, so BatchNorm stays
  per-process (one warning).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from flatten_dense.core.config import ConfigError

__all__ = ["LaunchWorld", "check_launch", "launcher_world"]

log = logging.getLogger(__name__)
_warned: set[str] = set()


def _warn_once(message: str, *args: Any) -> None:
    text = message % args
    if text not in _warned:
        _warned.add(text)
        log.warning(text)


@dataclass(frozen=True)
class LaunchWorld:
    """The processes an external launcher started: who, how many in all and per node."""

    launcher: str
    world_size: int
    per_node: int
    nodes: int
    rank: int


def _slurm_tasks_per_node() -> int | None:
    if os.environ.get("SLURM_NTASKS_PER_NODE"):
        return int(os.environ["SLURM_NTASKS_PER_NODE"])
    match = re.match(r"(\d+)", os.environ.get("SLURM_TASKS_PER_NODE", ""))  # e.g. "2(x3)"
    return int(match.group(1)) if match else None


def launcher_world() -> LaunchWorld | None:
    """What torchrun or SLURM says about this process; None when no launcher started several."""
    if TorchElasticEnvironment.detect():
        world = int(os.environ.get("WORLD_SIZE", "1"))
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        rank = int(os.environ.get("RANK", "0"))
        return LaunchWorld("torchrun", world, per_node, max(1, world // max(per_node, 1)), rank) if world > 1 else None
    if SLURMEnvironment.detect():
        world = int(os.environ.get("SLURM_NTASKS", "1"))
        nodes = int(os.environ.get("SLURM_NNODES", os.environ.get("SLURM_JOB_NUM_NODES", "1")))
        per_node = _slurm_tasks_per_node() or max(1, world // max(nodes, 1))
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        return LaunchWorld("SLURM", world, per_node, nodes, rank) if world > 1 else None
    return None


def process_rank() -> int:
    """This process's global rank as its launcher says (0 when started alone), before any process group."""
    world = launcher_world()
    return world.rank if world is not None else 0


def _on_cpu(trainer: Mapping[str, Any]) -> bool:
    accelerator = str(trainer.get("accelerator", "auto"))
    return accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())


def _count(devices: Any) -> int | None:
    if isinstance(devices, (list, tuple)):
        return len(devices)
    try:
        return int(devices)
    except (TypeError, ValueError):
        return None


def check_launch(trainer: dict[str, Any]) -> dict[str, Any]:
    """The trainer section, checked against the launcher and the device; adopted values filled in."""
    trainer = dict(trainer)
    world = launcher_world()
    if world is not None:
        devices, nodes = trainer.get("devices", "auto"), int(trainer.get("num_nodes", 1) or 1)
        if devices in ("auto", -1, "-1", None):
            if world.rank == 0:
                _warn_once(
                    "%s started %d processes (%d per node, %d nodes): using trainer.devices=%d trainer.num_nodes=%d",
                    world.launcher,
                    world.world_size,
                    world.per_node,
                    world.nodes,
                    world.per_node,
                    world.nodes,
                )
            trainer.update(devices=world.per_node, num_nodes=world.nodes)
        elif _count(devices) != world.per_node or nodes != world.nodes:
            raise ConfigError(
                f"{world.launcher} started {world.world_size} processes ({world.per_node} per node on {world.nodes} "
                f"nodes) but the config asks for trainer.devices={devices} trainer.num_nodes={nodes}; pass "
                f"trainer.devices={world.per_node} trainer.num_nodes={world.nodes} (or trainer.devices=auto)"
            )
    if trainer.get("sync_batchnorm") and _on_cpu(trainer):
        if (world.rank if world else 0) == 0:
            _warn_once(
                "trainer.sync_batchnorm=true needs CUDA; these are CPU processes, so BatchNorm stays per-process"
            )
        trainer["sync_batchnorm"] = False
    return trainer
