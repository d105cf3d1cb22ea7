"""tools/fused_linear_check.py: the switch it flips really moves the forward off oneDNN, and back."""

from __future__ import annotations

import pytest
import torch
from tool_module import load_tool

from flatten_dense.models.layers import fused_linear

pytestmark = pytest.mark.skipif(not fused_linear.has_onednn_linear(), reason="this torch has no oneDNN linear")


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
    counting = CountingOp(fused_linear._ONEDNN_LINEAR)
    monkeypatch.setattr(fused_linear, "_ONEDNN_LINEAR", counting)  # put back after the test
    model = tool.build_target("flatten_pvt_v2_b0").model.eval()
    x = torch.randn(1, 3, 64, 64)
    tool.timed_forward(model, x, onednn=False)
    assert counting.calls == 0
    assert fused_linear._ONEDNN_LINEAR is counting  # restored after the off run
    tool.timed_forward(model, x, onednn=True)
    assert counting.calls > 0


def test_measure_alternates_the_order_and_takes_the_median_of_per_round_ratios(tool, monkeypatch):
    calls = []
    seconds = iter([9.0, 9.0] + [1.0, 2.0, 4.0, 3.0, 3.0, 1.0])  # warm-ups, then (on, off), (off, on), (on, off)

    def fake_forward(model, x, *, onednn):
        calls.append(onednn)
        return next(seconds)

    monkeypatch.setattr(tool, "timed_forward", fake_forward)
    row = tool.measure("flatten_pvt_v2_b0", 64, 3)
    assert calls == [True, False, True, False, False, True, True, False]
    # per round on / off: 1/2, 3/4, 3/1 -> median 0.75 (the ratio of the medians, 3000 / 2000 ms, would be 1.5)
    assert row["ratio"] == 0.75 and row["ratio_range"] == [0.5, 3.0]
    assert row["onednn_ms"] == 3000.0 and row["aten_ms"] == 2000.0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--models", "torchvision:swin_t"], "not a registered backbone: torchvision:swin_t"),
        (["--sizes", "16"], "--sizes must be at least 32: got 16"),
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--out", "/no/such/folder/ab.json"], "--out: folder /no/such/folder does not exist"),
    ],
)
def test_bad_arguments_are_refused_before_measuring(tool, monkeypatch, capsys, argv, message):
    monkeypatch.setattr(tool, "measure", lambda *args: pytest.fail("measured despite bad arguments"))
    monkeypatch.setattr("sys.argv", ["fused_linear_check.py", *argv])
    with pytest.raises(SystemExit):
        tool.main()
    assert message in capsys.readouterr().err
