"""Presenting benchmark rows: a plain-text table, softmax/FLatten ratios, and a scaling plot."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

__all__ = ["format_table", "compare_ratios", "format_ratios", "median_rows", "plot_scaling"]

COLUMNS = (
    ("model", "{}", "model"),
    ("size", "{}", "size"),
    ("batch", "{}", "B"),
    ("params_m", "{:.2f}", "params M"),
    ("gflops", "{:.1f}", "GFLOPs"),
    ("latency_ms", "{:.1f}", "fwd ms"),
    ("train_latency_ms", "{:.1f}", "train ms"),
    ("train_images_per_second", "{:.2f}", "train img/s"),
    ("peak_mem_mb", "{:.0f}", "fwd mem MiB"),
    ("tensor_peak_mb", "{:.0f}", "fwd tensor MiB"),
    ("train_peak_mem_mb", "{:.0f}", "train mem MiB"),
    ("train_tensor_peak_mb", "{:.0f}", "train tensor MiB"),
    ("gflops_per_second", "{:.1f}", "GFLOP/s"),
    ("matmul_fraction", "{:.0%}", "of matmul"),
)


def _cell(row: dict, key: str, fmt: str) -> str:
    if key == "size":
        return "x".join(str(s) for s in row["size"])
    if key == "params_m":
        return fmt.format(row["params"] / 1e6) if "params" in row else "-"
    if key == "gflops":
        return fmt.format(row["flops"] / 1e9) if "flops" in row else "-"
    if key == "gflops_per_second":
        return fmt.format(row["flops_per_second"] / 1e9) if "flops_per_second" in row else "-"
    value = row.get(key)
    return "-" if value is None else fmt.format(value)


def format_table(rows: list[dict]) -> str:
    """Markdown table of all rows (errors get their message in the last column)."""
    header = [title for _, _, title in COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "error" in row:
            cells = [row["model"], _cell(row, "size", ""), str(row.get("batch", "-"))] + ["-"] * (len(COLUMNS) - 4)
            cells.append(f"error: {row['error']}")
        else:
            cells = [_cell(row, key, fmt) for key, fmt, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


RATIO_KEYS = (
    "latency_ms",
    "train_latency_ms",
    "peak_mem_mb",
    "train_peak_mem_mb",
    "tensor_peak_mb",
    "train_tensor_peak_mb",
    "flops",
)


def median_rows(rows: list[dict]) -> list[dict]:
    """One row per (model, size, batch): the median of each figure over the rounds that measured it.

    The first round's row supplies the rest; a row that failed in any round stays an error row.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], tuple(row["size"]), row["batch"])].append(row)
    merged = []
    for items in groups.values():
        failed = [row for row in items if "error" in row]
        if failed or len(items) == 1:
            merged.append(failed[0] if failed else items[0])
            continue
        row = dict(items[0], rounds=len(items))
        for key, value in items[0].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = statistics.median(item[key] for item in items)
        merged.append(row)
    return merged


def compare_ratios(rows: list[dict], pairs: list[tuple[str, str]]) -> list[dict]:
    """For each (model, versus) pair at each size: versus / model for latency, memory and FLOPs.

    A ratio above 1 means `model` is faster (or smaller) than `versus`.
    """
    index = {(row["model"], tuple(row["size"]), row["batch"]): row for row in rows if "error" not in row}
    ratios = []
    for model, versus in pairs:
        for (name, size, batch), row in index.items():
            other = index.get((versus, size, batch))
            if name != model or other is None:
                continue
            entry = {"model": model, "versus": versus, "size": list(size), "batch": batch}
            for key in RATIO_KEYS:
                if row.get(key) and other.get(key):
                    entry[f"{key}_ratio"] = other[key] / row[key]
            ratios.append(entry)
    return ratios


def format_ratios(ratios: list[dict]) -> str:
    """Each figure of `model` as a fraction of `versus`'s (below 1: `model` is faster or smaller).

    The stored `*_ratio` entries are the inverse (versus / model, a speed-up).
    """
    lines = [
        "| model | versus | size | fwd time | train time | fwd mem | train mem | train tensor mem | FLOPs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ratios:
        cells = [r["model"], r["versus"], "x".join(map(str, r["size"]))]
        for key in (
            "latency_ms_ratio",
            "train_latency_ms_ratio",
            "peak_mem_mb_ratio",
            "train_peak_mem_mb_ratio",
            "train_tensor_peak_mb_ratio",
            "flops_ratio",
        ):
            cells.append(f"{1 / r[key]:.2f}x" if key in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_scaling(rows: list[dict], path: str | Path, title: str = "") -> None:
    """Forward latency and peak memory against input pixels, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        if "error" not in row:
            series[row["model"]].append(row)
    with_tensor_peak = any("tensor_peak_mb" in row for items in series.values() for row in items)
    fig, axes = plt.subplots(1, 3 if with_tensor_peak else 2, figsize=(16 if with_tensor_peak else 11, 4.2))
    ax_time, ax_mem = axes[0], axes[1]
    for model, items in sorted(series.items()):
        items.sort(key=lambda r: r["size"][0] * r["size"][1])
        pixels = [r["size"][0] * r["size"][1] / 1e6 for r in items]
        style = "--" if "softmax" in model or model.startswith("tv_") or "@" in model else "-"
        ax_time.plot(pixels, [r["latency_ms"] for r in items], style, marker="o", label=model)
        ax_mem.plot(pixels, [r["peak_mem_mb"] for r in items], style, marker="o", label=model)
        if with_tensor_peak:
            axes[2].plot(pixels, [r.get("tensor_peak_mb", float("nan")) for r in items], style, marker="o", label=model)
    ax_time.set(xlabel="input megapixels", ylabel="forward latency (ms, median)", title="latency")
    ax_mem.set(xlabel="input megapixels", ylabel="peak memory growth (MiB)", title="memory (process RSS)")
    if with_tensor_peak:
        axes[2].set(xlabel="input megapixels", ylabel="peak live tensor memory (MiB)", title="memory (live tensors)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
