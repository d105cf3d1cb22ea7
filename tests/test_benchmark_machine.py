"""Benchmark figures say where they ran; interleaved rounds are merged into medians; plain-autograd rows."""

from __future__ import annotations

from flatten_dense.benchmark.cli import _targets, build_parser, describe_machine, machine_info
from flatten_dense.benchmark.report import compare_ratios, format_ratios, median_rows
from flatten_dense.benchmark.targets import build_target, display_name
from flatten_dense.models.layers.fast_layers import FastFocusedLinearAttention


def test_machine_line_names_cpu_flags_threads_and_allocator():
    info = machine_info("cpu", tuned_allocator=False)
    assert {"cpu", "cpu_flags", "allocator", "torch_threads"} <= set(info)
    line = describe_machine(info)
    assert info["cpu"] in line and "threads" in line and "allocator: glibc defaults" in line
    assert "tuned" in machine_info("cpu", tuned_allocator=True)["allocator"]


def test_rounds_are_merged_into_medians_and_ratios_cover_training():
    def row(model, latency, train):
        return dict(model=model, size=[64, 64], batch=1, latency_ms=latency, train_latency_ms=train, peak_mem_mb=10.0)

    rows = [row("a", 1.0, 4.0), row("b", 2.0, 8.0), row("a", 3.0, 6.0), row("b", 2.0, 8.0), row("a", 2.0, 5.0)]
    merged = {r["model"]: r for r in median_rows(rows)}
    assert merged["a"]["latency_ms"] == 2.0 and merged["a"]["train_latency_ms"] == 5.0 and merged["a"]["rounds"] == 3
    (ratio,) = compare_ratios(list(merged.values()), [("a", "b")])
    assert ratio["train_latency_ms_ratio"] == 8.0 / 5.0
    assert "| a | b | 64x64 | 1.00x | 0.62x | 1.00x |" in format_ratios([ratio])


def test_compare_plain_adds_the_plain_autograd_rows():
    args = build_parser().parse_args(["--models", "flatten_pvt_t", "--compare-plain"])
    targets, pairs = _targets(args)
    assert [t.label for t in targets] == ["flatten_pvt_t", "flatten_pvt_t@plain_layers"]
    assert pairs == [("flatten_pvt_t", "flatten_pvt_t@plain_layers")]
    assert display_name("plain:flatten_pvt_t") == "flatten_pvt_t@plain_layers"
    model = build_target("plain:flatten_pvt_t").model
    assert not model.fast_layers
    assert not any(isinstance(m, FastFocusedLinearAttention) for m in model.modules())


def test_recompute_target_turns_on_selective_checkpointing():
    assert display_name("recompute:flatten_swin_t") == "flatten_swin_t@recompute"
    model = build_target("recompute:flatten_swin_t").model
    attentions = [m for m in model.modules() if isinstance(m, FastFocusedLinearAttention)]
    assert model.recompute_attention and attentions and all(m.recompute for m in attentions)
