"""tools/train_step_check.py: the pairs it times, the ratios it reports, a paired run in a worker."""

from __future__ import annotations

import pytest
from tool_module import load_tool

OURS, PLAIN = "flatten_pvt_v2_b0", "plain:flatten_pvt_v2_b0"


@pytest.fixture(scope="module")
def tool():
    return load_tool("train_step_check")


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
    other = [{"train_ms": 20.0}, {"train_ms": 15.0}, {"train_ms": 40.0}]  # median 20: ratio of medians 1.0
    assert tool.pair_ratios(ours, other, "train_ms") == {"median": 0.5, "min": 0.5, "max": 2.0}


def test_pair_row_floor_scales_the_per_round_ratio_by_our_matmul_share(tool):
    result = {
        "rounds": {
            OURS: [{"train_ms": t, "forward_ms": 3.0} for t in (10.0, 30.0, 20.0)],
            PLAIN: [{"train_ms": t, "forward_ms": f} for t, f in ((20.0, 6.0), (15.0, 2.0), (40.0, 3.0))],
        },
        "matmul_share": {OURS: 0.5, PLAIN: 0.9},
        "steal_ticks": [5, 100],
    }
    memory = {OURS: {"train": 50.0, "forward": None}, PLAIN: {"train": 100.0, "forward": 10.0}}
    row = tool.pair_row([OURS, PLAIN], result, memory, 64)
    assert row["train_time"] == {"median": 0.5, "min": 0.5, "max": 2.0}  # medians 20 / 20
    assert row["forward_time"] == {"median": 1.0, "min": 0.5, "max": 1.5}
    assert row["train_matmul_floor"] == 0.25
    assert row["train_peak_rss"] == 0.5 and row["forward_peak_rss"] is None
    assert row["cpu_steal"] == 0.05
    assert row["ours"] == OURS and row["other"] == "flatten_pvt_v2_b0@plain_layers"


def test_paired_rounds_alternate_and_measure_both_models(tool, capsys):
    result = tool.paired_rounds([OURS, PLAIN], 64, 2)
    log = [line.split()[4] for line in capsys.readouterr().err.splitlines() if " round " in line]
    ours, plain = OURS, "flatten_pvt_v2_b0@plain_layers"
    assert log == [ours, plain, plain, ours]
    for spec in (OURS, PLAIN):
        assert len(result["rounds"][spec]) == 2
        assert all(r["train_ms"] > 0 and r["forward_ms"] > 0 for r in result["rounds"][spec])
        assert 0.0 < result["matmul_share"][spec] < 1.0


def test_worker_process_returns_the_rounds(tool):
    result = tool.measured_in_fresh_process([OURS], 64, 1, 1)
    assert result is not None and len(result["rounds"][OURS]) == 1
    assert result["rounds"][OURS][0]["train_ms"] > 0


def test_fault_cost_is_system_time_per_fresh_mib(tool):
    assert tool.fault_cost({"train_system_ms": 900.0, "train_faulted_mib": 300.0}) == "3.0"
    assert tool.fault_cost({"train_system_ms": 20.0, "train_faulted_mib": 0.0}) == "-"


def test_peak_rss_child_measures_the_step_not_the_process(tool):
    """The fresh process resets the high-water mark after its warm-up: a forward's peak is small."""
    forward = tool.peak_rss_mib(OURS, 192, "forward", 1)
    train = tool.peak_rss_mib(OURS, 192, "train", 1)
    assert forward is not None and train is not None
    assert 0 < forward < train < 256
