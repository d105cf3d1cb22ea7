#!/usr/bin/env python
"""Lean training-step and inference check: the issue-15 table in minutes instead of an hour.

    python tools/train_step_check.py --sizes 512 1024 --rounds 2 [--models SPEC ...] [--out FILE.json]

For each size: the peak resident-set growth (VmHWM, reset through /proc/self/clear_refs after a
64 x 64 warm-up) of one training step and of one forward in a fresh process per model; then the
step and forward times of all models interleaved in one process (one warm-up round, then ROUNDS
rounds; medians), with each training step's system time and fresh pages (minor faults: on a VM
the first touch of freshly mapped memory is a large share of a step) and the rounds' CPU steal.
fp32, batch 1, glibc allocator defaults for every row (no tuning), the thread count of --threads.
Model specs as in tools/benchmark.py: a zoo name, plain:NAME (fast_layers off), recompute:NAME
(recompute_attention=True), softmax:NAME (softmax-SRA PVT), torchvision:swin_t.
The resident-set peak moves by a few percent between identical processes (what the C library keeps
after frees); --rss-repeats N takes the median of N fresh processes. `tools/benchmark.py` is the
full tool (FLOPs, live-tensor peaks, GPU, configs); this one measures only what the training
targets need.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flatten_dense.benchmark.cli import describe_machine, machine_info  # noqa: E402
from flatten_dense.benchmark.targets import build_target, display_name  # noqa: E402

DEFAULT_SPECS = [
    "flatten_swin_t",
    "recompute:flatten_swin_t",
    "plain:flatten_swin_t",
    "torchvision:swin_t",
    "flatten_pvt_t",
    "recompute:flatten_pvt_t",
    "plain:flatten_pvt_t",
    "softmax:flatten_pvt_t",
]

MODES = ("train", "forward")

# One measurement in a fresh process: the peak RSS growth of a training step or a forward.
CHILD = r"""
import sys, gc, torch
torch.set_num_threads(int(sys.argv[4]))
from flatten_dense.benchmark.targets import build_target

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

spec, size, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = build_target(spec).model

def run(images):
    if mode == "train":
        model.train()
        out = model(images)
        out = out if isinstance(out, (list, tuple)) else [out]
        sum(o.float().mean() for o in out).backward()
        model.zero_grad(set_to_none=True)
    else:
        model.eval()
        with torch.inference_mode():
            model(images)

run(torch.randn(1, 3, 64, 64))
gc.collect()
images = torch.randn(1, 3, size, size)
start = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
run(images)
print("RESULT", (status("VmHWM") - start) / 2**20)
"""


def peak_rss_mib(spec: str, size: int, mode: str, threads: int) -> float | None:
    """Peak RSS growth (MiB) of one training step (`mode="train"`) or forward, in a fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", CHILD, spec, str(size), mode, str(threads)], capture_output=True, text=True, cwd=REPO
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    if not lines:
        print(f"{spec} {mode} at {size}: failed\n{result.stderr[-400:]}", file=sys.stderr)
        return None
    return float(lines[0].split()[1])


def median_peak_rss_mib(spec: str, size: int, mode: str, threads: int, repeats: int) -> float | None:
    """The median of `repeats` fresh-process peak RSS figures (None if any failed)."""
    figures = [peak_rss_mib(spec, size, mode, threads) for _ in range(repeats)]
    return None if None in figures else statistics.median(figures)


RATIO_KEYS = ("train_ms", "train_peak_rss_mib", "forward_ms", "forward_peak_rss_mib")


def baselines(label: str) -> list[str]:
    """What a FLatten row is compared with: its plain layers, torchvision's Swin, softmax PVT."""
    name = label.split("@", 1)[0]
    if not name.startswith("flatten_") or label.endswith("@plain_layers"):
        return []
    family = name.removeprefix("flatten_")
    other = ["tv_swin_" + family.split("_")[1]] if family.startswith("swin_") else [family + "_softmax"]
    return [name + "@plain_layers", *other]


def ratio_rows(rows: list[dict]) -> list[tuple[str, str, int, list[float | None]]]:
    """(ours, other, size, [ratio per RATIO_KEYS]) for every pair of rows measured at one size."""
    by_key = {(row["model"], row["size"]): row for row in rows}
    pairs = []
    for row in rows:
        for other in baselines(row["model"]):
            base = by_key.get((other, row["size"]))
            if base is not None:
                ratios = [row[k] / base[k] if row[k] and base[k] else None for k in RATIO_KEYS]
                pairs.append((row["model"], other, row["size"], ratios))
    return pairs


def train_step(model: torch.nn.Module, images: torch.Tensor) -> None:
    model.train()
    out = model(images)
    out = out if isinstance(out, (list, tuple)) else [out]
    sum(o.float().mean() for o in out).backward()
    model.zero_grad(set_to_none=True)


def forward(model: torch.nn.Module, images: torch.Tensor) -> None:
    model.eval()
    with torch.inference_mode():
        model(images)


def cpu_ticks() -> tuple[int, int] | None:
    """(steal, total) CPU ticks of the whole machine from /proc/stat; None where there is none."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[7] if len(fields) > 7 else 0, sum(fields)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU time the hypervisor gave to other guests in between (a VM's noise source)."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def interleaved_times(specs: list[str], size: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Per call: milliseconds, and for training steps the system time (kernel work, mostly first
    touches of freshly mapped pages) and the MiB of pages first touched (minor faults x 4 KiB).
    All models in turn in each round; a warm-up round first, not kept."""
    models = {spec: build_target(spec).model for spec in specs}
    images = torch.randn(1, 3, size, size)
    keys = ("train_ms", "forward_ms", "train_system_ms", "train_faulted_mib")
    times = {spec: {key: [] for key in keys} for spec in specs}
    for round_index in range(rounds + 1):
        for spec, model in models.items():
            for key, call in (("train_ms", train_step), ("forward_ms", forward)):
                usage = resource.getrusage(resource.RUSAGE_SELF)
                start = time.perf_counter()
                call(model, images)
                elapsed = (time.perf_counter() - start) * 1e3
                after = resource.getrusage(resource.RUSAGE_SELF)
                if round_index:
                    times[spec][key].append(elapsed)
                    if key == "train_ms":
                        times[spec]["train_system_ms"].append((after.ru_stime - usage.ru_stime) * 1e3)
                        times[spec]["train_faulted_mib"].append((after.ru_minflt - usage.ru_minflt) * 4 / 1024)
                print(f"  size {size} round {round_index} {display_name(spec)} {key} {elapsed:.0f}", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--models", nargs="+", default=DEFAULT_SPECS, help="model specs, as tools/benchmark.py")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after one warm-up round")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rss-repeats", type=int, default=1, help="fresh processes per peak-RSS figure (median)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_info("cpu", tuned_allocator=False)
    print("machine:", describe_machine(machine), flush=True)
    rows = []
    for size in args.sizes:
        memory = {
            spec: {mode: median_peak_rss_mib(spec, size, mode, args.threads, args.rss_repeats) for mode in MODES}
            for spec in args.models
        }
        ticks = cpu_ticks()
        times = interleaved_times(args.models, size, args.rounds)
        steal = steal_share(ticks, cpu_ticks())
        for spec in args.models:
            rows.append(
                {
                    "model": display_name(spec),
                    "size": size,
                    "train_ms": statistics.median(times[spec]["train_ms"]),
                    "forward_ms": statistics.median(times[spec]["forward_ms"]),
                    "train_peak_rss_mib": memory[spec]["train"],
                    "forward_peak_rss_mib": memory[spec]["forward"],
                    "train_system_ms": statistics.median(times[spec]["train_system_ms"]),
                    "train_faulted_mib": statistics.median(times[spec]["train_faulted_mib"]),
                    "cpu_steal": steal,
                    "rounds": args.rounds,
                    "rss_repeats": args.rss_repeats,
                }
            )
    print(
        f"\n{describe_machine(machine)}; fp32, batch 1, medians of {args.rounds} interleaved rounds"
        f" and of {args.rss_repeats} fresh process(es) per peak RSS\n"
    )
    print(
        "| model | size | train step ms | train peak RSS MiB | forward ms | forward peak RSS MiB"
        " | train system ms | train fresh pages MiB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['size']} | {row['train_ms']:.0f} | {row['train_peak_rss_mib'] or 0:.0f} "
            f"| {row['forward_ms']:.0f} | {row['forward_peak_rss_mib'] or 0:.0f} "
            f"| {row['train_system_ms']:.0f} | {row['train_faulted_mib']:.0f} |"
        )
    for size in args.sizes:
        steal = next(row["cpu_steal"] for row in rows if row["size"] == size)
        if steal is not None:
            print(f"size {size}: CPU steal (time given to other guests) {100 * steal:.1f}% during the timed rounds")
    print("\n| ours / other | size | train time | train peak RSS | forward time | forward peak RSS |")
    print("|---|---|---|---|---|---|")
    for ours, other, size, ratios in ratio_rows(rows):
        print(f"| {ours} / {other} | {size} | " + " | ".join(f"{r:.2f}x" if r else "-" for r in ratios) + " |")
    if args.out is not None:
        args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
