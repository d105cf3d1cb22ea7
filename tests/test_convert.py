"""`flatten-dense convert`: a release file (pickled yacs config) as weights a plain loader reads."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import flatten_dense as fd
from flatten_dense.cli import main
from flatten_dense.models.safe_load import UnsafeCheckpointError

MODEL = "flatten_pvt_v2_b0"


def _release(path: Path) -> dict[str, torch.Tensor]:
    state = fd.create_classifier(MODEL).state_dict()
    ema = {k: v + 1 for k, v in state.items()}
    config = argparse.Namespace(cfg="configs/flatten_pvt_v2_b0.yaml")  # a pickled class, as the release files hold
    torch.save({"model": state, "state_dict_ema": ema, "epoch": 299, "max_accuracy": 70.5, "args": config}, path)
    return state


def test_convert_writes_a_weights_only_copy_that_plain_loaders_read(tmp_path: Path) -> None:
    release = tmp_path / "release.pth"
    state = _release(release)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the plain loader refuses the pickled namespace
        torch.load(release, weights_only=True)
    out = tmp_path / "plain.pth"
    assert main(["convert", str(release), "--out", str(out)]) == 0
    plain = torch.load(out, weights_only=True)
    assert plain["epoch"] == 299 and "args" not in plain
    assert plain["model"].keys() == state.keys()
    assert all(torch.equal(plain["model"][k], v) for k, v in state.items())
    assert all(torch.equal(plain["state_dict_ema"][k], v + 1) for k, v in state.items())
    model = fd.create_classifier(MODEL, pretrained=out)  # and our loader reads it as the release
    assert torch.equal(model.head.weight, state["head.weight"])


def test_convert_to_safetensors_with_the_ema_weights(tmp_path: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    release = tmp_path / "release.pth"
    state = _release(release)
    out = tmp_path / "plain.safetensors"
    assert main(["convert", str(release), "--out", str(out), "--use-ema"]) == 0
    loaded = safetensors.load_file(str(out))
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], v + 1) for k, v in state.items())


def test_unsafe_class_is_refused_not_run(tmp_path: Path) -> None:
    assert UnsafeCheckpointError  # the loader's allow-list is what convert relies on
    assert main(["convert", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "x.pth")]) == 2
