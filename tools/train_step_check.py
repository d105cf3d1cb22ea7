#!/usr/bin/env python
"""Lean training-step and inference check: the issue-15 table in minutes instead of an hour.

    python tools/train_step_check.py --sizes 512 1024 --rounds 4 [--models SPEC ...] [--out FILE.json]

For each size: the peak resident-set growth (VmHWM, reset through /proc/self/clear_refs after a
64 x 64 warm-up) of one training step and of one forward in a fresh process per model; then the
times, pair by pair: each FLatten row and the row it is compared with (its plain layers, torchvision
Swin, softmax PVT) run in a fresh process of their own, one warm-up call each and then ROUNDS rounds
in alternating order (AB, BA, ...); a spec in no pair is timed alone. A ratio is the median of the
per-round ratios, with their range: on a VM whose speed drifts by tens of percent within minutes,
two steps seconds apart see the same machine, while rounds over all models a minute apart do not.
Each training step's system time and fresh pages (minor faults: on a VM the first touch of freshly
mapped memory is a large share of a step) with their quotient, the system ms per fresh MiB (what a
page fault costs in that process at that time: it moved 5x between two runs on this VM), the timed
rounds' CPU steal, and each model's matmul share of a profiled step (the "matmul floor": the ratio
if our step ran only its matrix products) are printed too.
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
import sys, gc, psutil, torch
torch.set_num_threads(int(sys.argv[4]))
from flatten_dense.benchmark.measure import peak_rss_bytes, reset_peak_rss
from flatten_dense.benchmark.targets import build_target

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
reset_peak_rss()  # VmHWM := VmRSS
start = psutil.Process().memory_info().rss
run(images)
print("RESULT", (peak_rss_bytes() - start) / 2**20)
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


def baselines(label: str) -> list[str]:
    """What a FLatten row is compared with: its plain layers, torchvision's Swin, softmax PVT."""
    name = label.split("@", 1)[0]
    if not name.startswith("flatten_") or label.endswith("@plain_layers"):
        return []
    family = name.removeprefix("flatten_")
    other = ["tv_swin_" + family.split("_")[1]] if family.startswith("swin_") else [family + "_softmax"]
    return [name + "@plain_layers", *other]


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


# Matrix products, and the CPU flash-attention kernels F.scaled_dot_product_attention runs (softmax
# PVT's attention, the plain Swin windows): batched matrix products with a softmax between them.
MATMUL_OPS = frozenset(
    {
        "aten::mm",
        "aten::addmm",
        "aten::bmm",
        "aten::baddbmm",
        "aten::addbmm",
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    }
)


def timed_calls(model: torch.nn.Module, images: torch.Tensor) -> dict[str, float]:
    """One training step and one forward: milliseconds, and the step's system time (kernel work,
    mostly first touches of freshly mapped pages) and the MiB of pages it first touched."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    train_step(model, images)
    figures = {"train_ms": (time.perf_counter() - start) * 1e3}
    after = resource.getrusage(resource.RUSAGE_SELF)
    figures["train_system_ms"] = (after.ru_stime - usage.ru_stime) * 1e3
    figures["train_faulted_mib"] = (after.ru_minflt - usage.ru_minflt) * 4 / 1024
    start = time.perf_counter()
    forward(model, images)
    figures["forward_ms"] = (time.perf_counter() - start) * 1e3
    return figures


def matmul_share(model: torch.nn.Module, images: torch.Tensor) -> float:
    """The share of one profiled training step's op time (the sum of every op's self time) spent in
    matrix products: what the step would cost if everything else were free. An estimate: the
    profiler's per-op overhead falls on the many small ops (the share reads low), and Python time
    between ops is in no op (it reads high)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        train_step(model, images)
    averages = profile.key_averages()
    total = sum(event.self_cpu_time_total for event in averages)
    matmul = sum(event.self_cpu_time_total for event in averages if event.key in MATMUL_OPS)
    return matmul / total if total else 0.0


def paired_rounds(specs: list[str], size: int, rounds: int) -> dict:
    """In this process: one or two models, one warm-up call each, then `rounds` rounds with the
    order reversed each round (AB, BA, ...), so both see the same machine within seconds of each
    other; the CPU steal of those rounds; then one profiled step each for the matmul share."""
    models = {spec: build_target(spec).model for spec in specs}
    images = torch.randn(1, 3, size, size)
    for model in models.values():
        timed_calls(model, images)
    figures: dict[str, list[dict[str, float]]] = {spec: [] for spec in specs}
    ticks = cpu_ticks()
    for round_index in range(rounds):
        for spec in specs if round_index % 2 == 0 else specs[::-1]:
            figures[spec].append(timed_calls(models[spec], images))
            line = " ".join(f"{key} {value:.0f}" for key, value in figures[spec][-1].items())
            print(f"  size {size} round {round_index} {display_name(spec)} {line}", file=sys.stderr, flush=True)
    after = cpu_ticks()
    steal_ticks = None if ticks is None or after is None else [after[0] - ticks[0], after[1] - ticks[1]]
    shares = {spec: matmul_share(models[spec], images) for spec in specs}
    return {"rounds": figures, "steal_ticks": steal_ticks, "matmul_share": shares}


WORKER_TIMEOUT_S = 4 * 3600


def measured_in_fresh_process(specs: list[str], size: int, rounds: int, threads: int) -> dict | None:
    """`paired_rounds` in a fresh process: only the pair's own allocations shape its heap. The
    worker's per-round lines go to this process's stderr as they come; None if it failed."""
    command = [sys.executable, str(Path(__file__).resolve()), "--paired-worker", *specs]
    command += ["--sizes", str(size), "--rounds", str(rounds), "--threads", str(threads)]
    try:
        result = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"{' / '.join(specs)} at {size}: no result within {WORKER_TIMEOUT_S} s", file=sys.stderr)
        return None
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        print(f"{' / '.join(specs)} at {size}: failed (exit {result.returncode}; its stderr above)", file=sys.stderr)
        return None
    return json.loads(lines[0].removeprefix("RESULT "))


def timing_groups(specs: list[str]) -> list[list[str]]:
    """Each (ours, compared-with) pair among `specs`, then every spec in no pair on its own."""
    by_label = {display_name(spec): spec for spec in specs}
    groups = [[spec, by_label[other]] for spec in specs for other in baselines(display_name(spec)) if other in by_label]
    paired = {spec for group in groups for spec in group}
    return groups + [[spec] for spec in specs if spec not in paired]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def pair_ratios(first: list[dict[str, float]], second: list[dict[str, float]], key: str) -> dict[str, float]:
    """Round by round first / second of `key`: median and range."""
    return spread([a[key] / b[key] for a, b in zip(first, second, strict=True)])


def pair_row(group: list[str], result: dict, memory: dict[str, dict[str, float | None]], size: int) -> dict:
    """The ratios of one timed pair (ours, other): times round by round, peak RSS of fresh processes,
    and the matmul floor (our share of matmul time x the median train-time ratio: what the ratio
    would be if our step ran nothing but its matrix products)."""
    ours, other = group
    first, second = result["rounds"][ours], result["rounds"][other]
    train_time = pair_ratios(first, second, "train_ms")
    row = {
        "ours": display_name(ours),
        "other": display_name(other),
        "size": size,
        "train_time": train_time,
        "forward_time": pair_ratios(first, second, "forward_ms"),
        "train_matmul_floor": result["matmul_share"][ours] * train_time["median"],
        "cpu_steal": steal_of([result]),
    }
    for mode in MODES:
        ours_mib, other_mib = memory[ours][mode], memory[other][mode]
        row[f"{mode}_peak_rss"] = ours_mib / other_mib if ours_mib and other_mib else None
    return row


def steal_of(results: list[dict]) -> float | None:
    """The CPU steal over the timed rounds of these workers (None where /proc/stat is missing)."""
    ticks = [result["steal_ticks"] for result in results if result["steal_ticks"] is not None]
    total = sum(t[1] for t in ticks)
    return sum(t[0] for t in ticks) / total if total else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--models", nargs="+", default=DEFAULT_SPECS, help="model specs, as tools/benchmark.py")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds per pair after one warm-up call")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rss-repeats", type=int, default=1, help="fresh processes per peak-RSS figure (median)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--paired-worker", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.paired_worker is not None:
        print("RESULT " + json.dumps(paired_rounds(args.paired_worker, args.sizes[0], args.rounds)))
        return
    machine = machine_info("cpu", tuned_allocator=False)
    print("machine:", describe_machine(machine), flush=True)
    rows, pairs = [], []
    for size in args.sizes:
        memory = {
            spec: {mode: median_peak_rss_mib(spec, size, mode, args.threads, args.rss_repeats) for mode in MODES}
            for spec in args.models
        }
        rounds: dict[str, list[dict[str, float]]] = {spec: [] for spec in args.models}
        shares: dict[str, list[float]] = {spec: [] for spec in args.models}
        results = []
        for group in timing_groups(args.models):
            print(f"size {size}: {' / '.join(display_name(spec) for spec in group)}", flush=True)
            result = measured_in_fresh_process(group, size, args.rounds, args.threads)
            if result is None:
                continue
            results.append(result)
            for spec in group:
                rounds[spec] += result["rounds"][spec]
                shares[spec].append(result["matmul_share"][spec])
            if len(group) == 2:
                pairs.append(pair_row(group, result, memory, size))
        steal = steal_of(results)
        for spec in args.models:
            if not rounds[spec]:
                continue
            rows.append(
                {
                    "model": display_name(spec),
                    "size": size,
                    **{key: statistics.median(r[key] for r in rounds[spec]) for key in rounds[spec][0]},
                    "train_matmul_share": statistics.median(shares[spec]),
                    "train_peak_rss_mib": memory[spec]["train"],
                    "forward_peak_rss_mib": memory[spec]["forward"],
                    "cpu_steal": steal,
                    "rounds": len(rounds[spec]),
                    "rss_repeats": args.rss_repeats,
                }
            )
    print_tables(machine, rows, pairs, args)
    if args.out is not None:
        args.out.write_text(json.dumps({"machine": machine, "rows": rows, "pairs": pairs}, indent=1))


def fault_cost(row: dict) -> str:
    """System ms per MiB of fresh pages in a training step ('-' below 16 MiB: too few to say)."""
    fresh = row["train_faulted_mib"]
    return f"{row['train_system_ms'] / fresh:.1f}" if fresh >= 16 else "-"


def print_tables(machine: dict, rows: list[dict], pairs: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\n{describe_machine(machine)}; fp32, batch 1; times: medians over every round of a model"
        f" ({args.rounds} in each pair's process; a model in two pairs pools both processes);"
        f" peak RSS: median of {args.rss_repeats} fresh process(es)\n"
    )
    print(
        "| model | size | train step ms | train peak RSS MiB | forward ms | forward peak RSS MiB"
        " | train system ms | train fresh pages MiB | system ms per fresh MiB | train matmul share |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['model']} | {row['size']} | {row['train_ms']:.0f} | {row['train_peak_rss_mib'] or 0:.0f} "
            f"| {row['forward_ms']:.0f} | {row['forward_peak_rss_mib'] or 0:.0f} "
            f"| {row['train_system_ms']:.0f} | {row['train_faulted_mib']:.0f} | {fault_cost(row)} "
            f"| {100 * row['train_matmul_share']:.0f}% |"
        )
    for size in args.sizes:
        steal = next((row["cpu_steal"] for row in rows if row["size"] == size), None)
        if steal is not None:
            print(f"size {size}: CPU steal (time given to other guests) {100 * steal:.1f}% during the timed rounds")
    print(
        "\nTime ratios: median [min-max] of the per-round ratios of the pair, alternated in one process."
        " Matmul floor: our step's matmul time alone over the other's whole step.\n"
    )
    print(
        "| ours / other | size | train time | train matmul floor | train peak RSS | forward time"
        " | forward peak RSS | CPU steal |"
    )
    print("|---|---|---|---|---|---|---|---|")

    def ratio(value: float | None) -> str:
        return f"{value:.2f}x" if value else "-"

    def percent(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    for pair in pairs:
        times = [pair[key] for key in ("train_time", "forward_time")]
        train, forward_time = (f"{t['median']:.2f}x [{t['min']:.2f}-{t['max']:.2f}]" for t in times)
        print(
            f"| {pair['ours']} / {pair['other']} | {pair['size']} | {train} | {ratio(pair['train_matmul_floor'])} "
            f"| {ratio(pair['train_peak_rss'])} | {forward_time} | {ratio(pair['forward_peak_rss'])} "
            f"| {percent(pair['cpu_steal'])} |"
        )


if __name__ == "__main__":
    main()
