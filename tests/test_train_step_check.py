"""tools/train_step_check.py: the pairs it times, the ratios it reports, one real paired run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "train_step_check.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("train_step_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_flatten_row_is_timed_next_to_what_it_is_compared_with(tool):
    specs = ["flatten_swin_t", "plain:flatten_swin_t", "torchvision:swin_t", "flatten_pvt_t", "torchvision:swin_b"]
    assert tool.timing_groups(specs) == [
        ["flatten_swin_t", "plain:flatten_swin_t"],
        ["flatten_swin_t", "torchvision:swin_t"],
        ["flatten_pvt_t"],
        ["torchvision:swin_b"],
    ]


def test_pair_ratios_are_per_round_not_ratios_of_medians(tool):
    ours = [{"train_ms": 10.0}, {"train_ms": 30.0}, {"train_ms": 20.0}]
    other = [{"train_ms": 20.0}, {"train_ms": 30.0}, {"train_ms": 10.0}]
    assert tool.pair_ratios(ours, other, "train_ms") == {"median": 1.0, "min": 0.5, "max": 2.0}


def test_paired_rounds_alternate_and_measure_both_models(tool, capsys):
    specs = ["flatten_pvt_v2_b0", "plain:flatten_pvt_v2_b0"]
    result = tool.paired_rounds(specs, 64, 2)
    log = [line.split()[4] for line in capsys.readouterr().err.splitlines()]
    ours, plain = "flatten_pvt_v2_b0", "flatten_pvt_v2_b0@plain_layers"
    assert log == [ours, plain, plain, ours]
    for spec in specs:
        assert len(result["rounds"][spec]) == 2
        assert all(r["train_ms"] > 0 and r["forward_ms"] > 0 for r in result["rounds"][spec])
        assert 0.0 < result["matmul_share"][spec] < 1.0
