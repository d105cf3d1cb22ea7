"""The pieces of fault-tolerant training, one at a time (fast): sampler order and position, per-sample
seeds, atomic and finite-only writes, the set-aside scan, `best` on bad metrics, launch mistakes."""

from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flatten_dense.core import launch
from flatten_dense.core.checkpointing import (
    AtomicCheckpointIO,
    BestCheckpoint,
    atomic_save,
    newest_complete_checkpoint,
)
from flatten_dense.core.config import ConfigError
from flatten_dense.core.launch import check_launch, launcher_world
from flatten_dense.core.resumable_sampler import ResumableSampler, SampleSeeded

REPO = Path(__file__).resolve().parents[1]
LAUNCH_VARIABLES = ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "RANK", "LOCAL_RANK")
SLURM_VARIABLES = ("SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_NNODES", "SLURM_PROCID", "SLURM_JOB_NAME")


def test_order_depends_on_seed_and_epoch_only_and_shards_cover_the_dataset() -> None:
    first = ResumableSampler(10, seed=3)
    first.set_epoch(2)
    fresh = ResumableSampler(10, seed=3)
    fresh.set_epoch(0)
    list(fresh)
    fresh.set_epoch(2)  # epochs seen before do not matter
    assert list(first) == list(fresh)
    fresh.set_epoch(1)
    assert [i for i, _ in fresh] != [i for i, _ in first]
    shards = [ResumableSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    indices = [i for shard in shards for i, _ in shard]
    assert len(indices) == 12 and set(indices) == set(range(10))  # padded to 4 per rank, like DistributedSampler
    assert all(len(shard) == 4 for shard in shards)


def test_start_at_skips_the_consumed_part_of_that_epoch_only() -> None:
    sampler = ResumableSampler(8, seed=0)
    sampler.set_epoch(1)
    full = list(sampler)
    sampler.start_at(1, 3)
    assert list(sampler) == full[3:]
    assert list(sampler) == full  # the next iteration starts the epoch afresh
    sampler.start_at(0, 3)
    sampler.set_epoch(1)  # another epoch than the saved one: no skip
    assert list(sampler) == full


class _RandomItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[float, float]:
        return float(torch.rand(())), random.random()


def test_samples_read_under_their_own_seed_leave_the_global_rng_alone() -> None:
    dataset = SampleSeeded(_RandomItems())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert dataset[(1, 42)] == dataset[(1, 42)]
    assert dataset[(1, 42)] != dataset[(1, 43)]
    assert torch.equal(torch.get_rng_state(), before)
    assert len(dataset) == 4


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(2)}, "global_step": 1}, path)
    with pytest.raises((AttributeError, TypeError, RuntimeError)):  # what torch.save raises for a lambda
        atomic_save({"bad": lambda: None}, path)  # cannot be pickled
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_non_finite_weights_are_never_written(tmp_path: Path, caplog) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 1}, path)
    with caplog.at_level(logging.WARNING):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}, "global_step": 2}, path)
    assert "not finite" in caplog.text
    assert torch.load(path, weights_only=True)["global_step"] == 1


def test_broken_checkpoints_are_set_aside_and_the_newest_good_one_chosen(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "checkpoints"
    good = folder / "step-00000002.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(1)}, "global_step": 2}, good)
    nan = folder / "step-00000003.ckpt"
    torch.save({"state_dict": {"w": torch.tensor([float("nan")])}, "global_step": 3}, nan)
    truncated = folder / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(1000)}, "global_step": 4}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    atomic_save({"state_dict": {"w": torch.ones(1)}, "global_step": 4}, folder / "best.ckpt")  # never resumed from
    for age, path in enumerate((good, nan, truncated)):
        os.utime(path, ns=(10**18 + age * 10**9, 10**18 + age * 10**9))
    with caplog.at_level(logging.WARNING):
        assert newest_complete_checkpoint(tmp_path) == good
    assert caplog.text.count("set aside") == 2
    assert (folder / "last.ckpt.corrupt").is_file() and (folder / "step-00000003.ckpt.corrupt").is_file()
    assert newest_complete_checkpoint(tmp_path / "nothing") is None


def test_lightnings_hpc_checkpoint_is_resumed_from_when_newest(tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(1)}, "global_step": 2}, last)
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(1)}, "global_step": 3}, hpc)
    os.utime(last, ns=(10**18, 10**18))
    assert newest_complete_checkpoint(tmp_path) == hpc


@pytest.mark.parametrize("value", [float("nan"), -1.0, float("inf")])
def test_best_is_never_chosen_on_nan_or_minus_one(value: float) -> None:
    best = BestCheckpoint(monitor="val/bbox_mAP", mode="max", save_top_k=1)
    assert not best.check_monitor_top_k(None, torch.tensor(value))
    assert best.check_monitor_top_k(None, torch.tensor(0.1))


def _launched(monkeypatch, variables: dict[str, str]) -> None:
    monkeypatch.setattr(launch, "_warned", set())  # each test sees its own first warning
    for name in (*LAUNCH_VARIABLES, *SLURM_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)


TORCHRUN_2 = {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
SLURM_2 = {
    "SLURM_NTASKS": "2",
    "SLURM_NTASKS_PER_NODE": "2",
    "SLURM_NNODES": "1",
    "SLURM_PROCID": "0",
    "SLURM_JOB_NAME": "t",
}


@pytest.mark.parametrize("variables, launcher", [(TORCHRUN_2, "torchrun"), (SLURM_2, "SLURM")])
def test_launcher_world_that_disagrees_with_the_trainer_is_one_line(monkeypatch, variables, launcher) -> None:
    _launched(monkeypatch, variables)
    assert launcher_world().world_size == 2
    with pytest.raises(
        ConfigError, match=f"{launcher} started 2 processes.*pass trainer.devices=2 trainer.num_nodes=1"
    ):
        check_launch({"accelerator": "cpu", "devices": 1, "num_nodes": 1})
    assert check_launch({"accelerator": "cpu", "devices": 2, "num_nodes": 1})["devices"] == 2


def test_launcher_world_is_adopted_when_devices_is_auto(monkeypatch, caplog) -> None:
    _launched(monkeypatch, TORCHRUN_2)
    with caplog.at_level(logging.WARNING):
        trainer = check_launch({"accelerator": "cpu", "devices": "auto", "num_nodes": 1})
    assert (trainer["devices"], trainer["num_nodes"]) == (2, 1)
    assert "using trainer.devices=2" in caplog.text


def test_one_process_needs_no_launcher_check(monkeypatch) -> None:
    _launched(monkeypatch, {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "t"})
    assert launcher_world() is None
    assert check_launch({"devices": 1}) == {"devices": 1}


def test_sync_batchnorm_on_cpu_falls_back_with_one_warning(monkeypatch, caplog) -> None:
    _launched(monkeypatch, {})
    with caplog.at_level(logging.WARNING):
        trainer = check_launch({"accelerator": "cpu", "sync_batchnorm": True})
    assert trainer["sync_batchnorm"] is False
    assert caplog.text.count("sync_batchnorm") == 1


@pytest.mark.slow  # a subprocess that imports torch: ~10 s alone, a minute on a busy machine
def test_torchrun_without_devices_fails_in_one_line_from_the_command(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "tests" / "detection"))
    from detection_helpers import tiny_coco, tiny_config

    config = tiny_config(tmp_path, "retinanet", tiny_coco(tmp_path / "coco", num_train=2, num_val=1))
    env = {k: v for k, v in os.environ.items() if k not in (*LAUNCH_VARIABLES, *SLURM_VARIABLES)}
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "train.py"), str(config)],
        env={**env, **TORCHRUN_2},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "trainer.devices=2" in errors[0]
    assert "Traceback" not in result.stderr


def test_checkpoint_section_is_validated(tmp_path: Path) -> None:
    sys.path.insert(0, str(REPO / "tests" / "detection"))
    from detection_helpers import tiny_coco, tiny_config

    from flatten_dense.commands.build import load_run

    config = tiny_config(tmp_path, "retinanet", tiny_coco(tmp_path / "coco", num_train=2, num_val=1))
    assert load_run(config, ["checkpoint.every_n_steps=5"], create_run_dir=False).section("checkpoint") == {
        "every_n_steps": 5
    }
    with pytest.raises(ConfigError, match="checkpoint.every_n_step"):
        load_run(config, ["checkpoint.every_n_step=5"], create_run_dir=False)
