"""Checkpoint files never run code and never surprise: a code-running pickle is refused through
every entry point (pretrained weights, test, infer, resume) and its marker never appears; garbage,
truncated and wrong-task files are one line, exit 2; the authors' release format, whose pickle
holds their yacs `CfgNode` config, loads into `create_classifier` and `create_backbone`; output
paths are checked before the work starts."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import flatten_dense as fd
from flatten_dense.cli import main
from flatten_dense.commands.build import build_datamodule, load_run, task_for_data
from flatten_dense.detection.task import DetectionTask
from flatten_dense.models.safe_load import UnsafeCheckpointError, safe_torch_load
from flatten_dense.segmentation.synthetic import make_synthetic_ade20k

sys.path.insert(0, str(Path(__file__).parent / "detection"))
from detection_helpers import tiny_coco, tiny_config  # noqa: E402

SEG_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "segmentation"
SEG_CONFIG = SEG_CONFIG / "demo_sem_fpn_flatten_pvt_v2_b0_synthetic.yaml"
MODEL = "flatten_pvt_v2_b0"


class WritesMarker:
    """Unpickling this runs `os.system` (a blocked module) ..."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalsMarker(WritesMarker):
    """... or `eval` (a builtin): both are what a hostile file would do."""

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny detection config, a checkpoint of it (Lightning's layout), and hostile/broken files."""
    folder = tmp_path_factory.mktemp("ckpt")
    coco = tiny_coco(folder / "coco")
    config = tiny_config(folder, "retinanet", coco)
    run = load_run(config, create_run_dir=False)
    task = task_for_data(run, build_datamodule(run), load_pretrained=False)
    good = folder / "good.ckpt"
    torch.save(
        {
            "state_dict": task.state_dict(),
            "hyper_parameters": dict(task.hparams),
            "task_class": DetectionTask.__name__,
            "epoch": 0,
            "global_step": 0,
        },
        good,
    )
    files = {"config": config, "good": good, "coco": coco, "folder": folder}
    for name, payload in (("os_system", WritesMarker), ("eval", EvalsMarker)):
        path = folder / f"evil_{name}.ckpt"
        marker = folder / f"MARKER_{name}"
        state = {"state_dict": task.state_dict(), "task_class": "DetectionTask", "payload": payload(marker)}
        torch.save(state, path)
        files[f"evil_{name}"], files[f"marker_{name}"] = path, marker
    (folder / "garbage.ckpt").write_bytes(b"this is not a checkpoint\n" * 40)
    data = good.read_bytes()
    (folder / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    files["garbage"], files["truncated"] = folder / "garbage.ckpt", folder / "truncated.ckpt"
    image = folder / "image.png"
    Image.new("RGB", (96, 64), (90, 120, 30)).save(image)
    files["image"] = image
    return files


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == err[-1], err
    return errors[0]


def _entry_points(setup: dict[str, Path], checkpoint: Path, tmp_path: Path) -> dict[str, list[str]]:
    config = str(setup["config"])
    run_dir = f"trainer.default_root_dir={tmp_path / 'run'}"
    return {
        "test": ["test", config, str(checkpoint), run_dir],
        "infer": ["infer", config, str(checkpoint), str(setup["image"]), "--out", str(tmp_path / "drawn")],
        "resume": ["train", config, f"resume={checkpoint}", run_dir],
        "pretrained": ["train", config, f"model.backbone.pretrained={checkpoint}", "resume=none", run_dir],
    }


@pytest.fixture
def no_step(monkeypatch):
    def step(self, *args, **kwargs):
        raise AssertionError("a training or test step ran")

    monkeypatch.setattr(DetectionTask, "training_step", step)
    monkeypatch.setattr(DetectionTask, "test_step", step)


ENTRY_POINTS = ("test", "infer", "resume", "pretrained")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("payload", ["os_system", "eval"])
def test_code_running_pickle_never_runs(entry, payload, setup, tmp_path, capsys, no_step):
    evil, marker = setup[f"evil_{payload}"], setup[f"marker_{payload}"]
    assert main(_entry_points(setup, evil, tmp_path)[entry]) == 2
    line = _one_error_line(capsys)
    culprit = "posix.system" if payload == "os_system" else "eval"
    assert str(evil) in line and culprit in line and "refusing" in line
    assert not marker.exists()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("broken", ["garbage", "truncated"])
def test_garbage_or_truncated_checkpoint_is_one_line(entry, broken, setup, tmp_path, capsys, no_step):
    assert main(_entry_points(setup, setup[broken], tmp_path)[entry]) == 2
    line = _one_error_line(capsys)
    assert str(setup[broken]) in line and "not a complete torch file" in line


def test_python_api_refuses_the_pickle_too(setup) -> None:
    for payload in ("os_system", "eval"):
        with pytest.raises(UnsafeCheckpointError, match="refusing"):
            fd.create_backbone(MODEL, pretrained=setup[f"evil_{payload}"])
        with pytest.raises(UnsafeCheckpointError):
            safe_torch_load(setup[f"evil_{payload}"])
        assert not setup[f"marker_{payload}"].exists()


def test_detection_checkpoint_with_a_segmentation_config_is_one_line(setup, tmp_path, capsys) -> None:
    ade = make_synthetic_ade20k(tmp_path / "ade", num_train=2, num_val=1, image_size=(48, 64), num_classes=3)
    argv = ["infer", str(SEG_CONFIG), str(setup["good"]), str(setup["image"]), "--out", str(tmp_path / "o")]
    assert main([*argv, f"data.root={ade}"]) == 2
    line = _one_error_line(capsys)
    assert "trained for detection" in line and "segmentation config" in line


@pytest.mark.parametrize("where", ["file", "sys", "proc"])
def test_run_folder_that_cannot_be_written_is_one_line(where, setup, tmp_path, capsys, no_step) -> None:
    targets = {"file": setup["image"], "sys": Path("/sys/flatten_dense_run"), "proc": Path("/proc/1/flatten_dense")}
    target = targets[where]
    if where != "file" and not target.parent.is_dir():
        pytest.skip(f"no {target.parent} here")
    argv = ["train", str(setup["config"]), "resume=none", f"trainer.default_root_dir={target}"]
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert f"run folder (trainer.default_root_dir) {target}" in line


def test_infer_out_file_and_unwritable_results_prefix_are_found_first(setup, tmp_path, capsys, no_step) -> None:
    argv = ["infer", str(setup["config"]), str(setup["good"]), str(setup["image"]), "--out", str(setup["image"])]
    assert main(argv) == 2
    assert f"--out {setup['image']} is a file" in _one_error_line(capsys)
    prefix = setup["image"] / "results"  # under a file: no folder can be made there
    argv = ["test", str(setup["config"]), str(setup["good"]), f"trainer.default_root_dir={tmp_path / 'run'}"]
    assert main([*argv, "--results-prefix", str(prefix)]) == 2  # no_step: before the evaluation
    assert f"--results-prefix folder {prefix.parent}" in _one_error_line(capsys)


# ------------------------------------------------------------------ the authors' release format


def test_release_file_with_a_yacs_config_loads_into_classifier_and_backbone(tmp_path: Path) -> None:
    yacs = pytest.importorskip("yacs.config")
    config = yacs.CfgNode()
    config.MODEL = yacs.CfgNode()
    config.MODEL.TYPE = "flatten_pvt_v2"
    config.MODEL.NAME = MODEL
    config.TRAIN = yacs.CfgNode()
    config.TRAIN.EPOCHS = 300
    config.TRAIN.BASE_LR = 1e-3
    config.freeze()
    source = fd.create_classifier(MODEL)
    release = tmp_path / f"{MODEL}.pth"
    torch.save(
        {
            "model": source.state_dict(),
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5}]},
            "lr_scheduler": {"last_epoch": 299},
            "max_accuracy": 70.5,
            "epoch": 299,
            "config": config,
            "args": argparse.Namespace(cfg="configs/flatten_pvt_v2_b0.yaml", local_rank=0),
        },
        release,
    )
    payload = safe_torch_load(release)
    assert payload["config"]["MODEL"]["NAME"] == MODEL and payload["config"]["TRAIN"]["EPOCHS"] == 300
    assert payload["args"].cfg == "configs/flatten_pvt_v2_b0.yaml"
    assert "yacs" not in type(payload["config"]).__module__  # an inert stand-in, not the real class

    classifier = fd.create_classifier(MODEL, pretrained=release)
    for name, value in source.state_dict().items():
        assert torch.equal(classifier.state_dict()[name], value), name
    backbone = fd.create_backbone(MODEL, pretrained=release, out_indices=(0, 1, 2, 3))
    key = next(k for k in backbone.state_dict() if k.endswith("weight") and k in source.state_dict())
    assert torch.equal(backbone.state_dict()[key], source.state_dict()[key])
