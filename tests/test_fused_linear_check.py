"""tools/fused_linear_check.py: the switch it flips really moves the forward off oneDNN, and back."""

from __future__ import annotations

import pytest
import torch
from tool_module import load_tool

from flatten_dense.models.layers import fused_linear

pytestmark = pytest.mark.skipif(fused_linear._ONEDNN_LINEAR is None, reason="this torch has no oneDNN linear")


@pytest.fixture(scope="module")
def tool():
    return load_tool("fused_linear_check")


class CountingOp:
    """Stands in for oneDNN's linear op: counts calls and forwards them."""

    def __init__(self, op):
        self.op, self.calls = op, 0

    def __call__(self, *args):
        self.calls += 1
        return self.op(*args)

    def binary(self, *args):
        self.calls += 1
        return self.op.binary(*args)


def test_the_off_side_runs_no_onednn_linear_and_the_switch_is_restored(tool, monkeypatch):
    counting = CountingOp(tool.ONEDNN_OP)
    monkeypatch.setattr(tool, "ONEDNN_OP", counting)
    monkeypatch.setattr(fused_linear, "_ONEDNN_LINEAR", counting)  # put back after the test
    model = tool.build_target("flatten_pvt_v2_b0").model.eval()
    x = torch.randn(1, 3, 64, 64)
    tool.timed_forward(model, x, onednn=False)
    assert counting.calls == 0
    assert fused_linear._ONEDNN_LINEAR is counting  # restored after the off run
    tool.timed_forward(model, x, onednn=True)
    assert counting.calls > 0


def test_measure_reports_alternated_rounds_and_per_round_ratios(tool):
    row = tool.measure("flatten_pvt_v2_b0", 64, 3)
    assert row["rounds"] == 3 and row["onednn_ms"] > 0 and row["aten_ms"] > 0
    low, high = row["ratio_range"]
    assert low <= row["ratio"] <= high
