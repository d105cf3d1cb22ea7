"""`flatten-dense benchmark` / `tools/benchmark.py`: speed and memory of backbones and config models.

Every measurement runs in a fresh worker process (peak memory per measurement); the machine's
dense matmul throughput is measured before and after the models in the same run, and each row
reports its FLOP/s as a fraction of the higher of the two. See docs/benchmarks.md for the method and figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from flatten_dense.core.cpu_allocator import tune_cpu_allocator
from flatten_dense.core.run_logging import progress

from .flops import matmul_flops_per_second
from .measure import MeasureOptions
from .report import compare_ratios, format_ratios, format_table, median_rows, plot_scaling
from .runner import run_measurement
from .targets import config_target, display_name, softmax_counterpart

__all__ = ["main", "build_parser", "describe_machine", "machine_info"]


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    raise argparse.ArgumentTypeError(f"size must be N or HxW, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flatten-dense benchmark", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", nargs="*", default=None, help="registered backbones (default flatten_pvt_t flatten_swin_t)"
    )
    parser.add_argument(
        "--config", default=None, help="a detector/segmentor config YAML (built as every command builds it)"
    )
    parser.add_argument("--override", nargs="*", default=[], help="key=value overrides for --config")
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(512, 512)], help="input sizes: N (square) or HxW")
    parser.add_argument("--batch", nargs="+", type=int, default=[1], help="batch sizes")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed runs before timing, the first call included (on CPU the first two still page-fault fresh memory)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="autocast dtype")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--compare-compile",
        action="store_true",
        help="also measure each model under torch.compile and report the speed-up",
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--no-train", action="store_true", help="skip the forward+backward measurement")
    parser.add_argument("--compare", action="store_true", help="add the softmax counterparts and report ratios")
    parser.add_argument(
        "--compare-plain",
        action="store_true",
        help="also measure each FLatten model with its plain layers (fast_layers=False) and report ratios",
    )
    parser.add_argument("--baseline-root", default=None, help="also measure the FLatten models of an older source tree")
    parser.add_argument(
        "--no-allocator-tuning",
        action="store_true",
        help="keep glibc's malloc defaults (see flatten_dense/cpu_allocator.py)",
    )
    parser.add_argument(
        "--baseline-default-allocator",
        action="store_true",
        help="measure the --baseline-root models with glibc's defaults",
    )
    parser.add_argument(
        "--in-process", action="store_true", help="no worker processes (faster; CPU memory less meaningful)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--matmul-sizes", nargs="+", type=int, default=[1024, 2048, 4096], help="square GEMMs for the peak"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure the whole interleaved sweep this many times; the table shows each row's median",
    )
    parser.add_argument("--out", default=None, help="write all results as JSON here")
    parser.add_argument("--plot", default=None, help="write a latency/memory vs pixels PNG here")
    return parser


# The CPU flags that decide which GEMM and elementwise kernels oneDNN and torch pick.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def _cpu_model_and_flags() -> tuple[str, list[str]]:
    cpu, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == (platform.processor() or platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                present = set(line.split(":", 1)[1].split())
                flags = [flag for flag in KERNEL_FLAGS if flag in present]
    except OSError:
        pass
    return cpu, flags


def machine_info(device: str, *, tuned_allocator: bool = False) -> dict:
    """CPU model and kernel flags (or GPU), cores, threads, allocator, torch version: what a reader
    needs to compare figures between machines. The allocator setting applies to every row alike."""
    cpu, flags = _cpu_model_and_flags()
    info = {
        "cpu": cpu,
        "cpu_flags": flags,
        "allocator": "glibc malloc tuned (mmap/trim thresholds raised)" if tuned_allocator else "glibc defaults",
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def describe_machine(info: dict) -> str:
    """One line: where the figures were measured."""
    where = info.get("gpu") or f"{info['cpu']} [{' '.join(info['cpu_flags']) or 'no AVX2'}]"
    return (
        f"{where}, {info['usable_cores']} cores, {info['torch_threads']} threads, allocator: {info['allocator']}"
        f", torch {info['torch']}"
    )


@dataclass(frozen=True)
class Target:
    """One row of the run: a model spec, measured from this tree or a baseline tree, eager or compiled."""

    spec: str
    root: str | None = None  # baseline source tree
    compiled: bool | None = None  # None: as --compile says

    @property
    def label(self) -> str:
        return display_name(self.spec) + ("@baseline" if self.root else "") + ("@compiled" if self.compiled else "")


def _targets(args: argparse.Namespace) -> tuple[list[Target], list[tuple[str, str]]]:
    """The rows to measure, and the (label, compared-with label) pairs to report ratios for."""
    models = args.models if args.models is not None else ([] if args.config else ["flatten_pvt_t", "flatten_swin_t"])
    targets: list[Target] = []
    pairs: list[tuple[str, str]] = []
    for name in models:
        targets.append(Target(name, compiled=False if args.compare_compile else None))
        if args.compare_compile:
            targets.append(Target(name, compiled=True))
            pairs.append((targets[-1].label, name))
        if args.compare_plain and name.startswith("flatten_"):
            targets.append(Target(f"plain:{name}"))
            pairs.append((name, targets[-1].label))
        if args.baseline_root:
            targets.append(Target(name, root=args.baseline_root))
            pairs.append((name, targets[-1].label))
        counterpart = softmax_counterpart(name) if args.compare else None
        if counterpart:
            targets.append(Target(counterpart))
            pairs.append((name, targets[-1].label))
    if args.config:
        targets.append(Target(config_target(args.config, args.override)))
    return targets, pairs


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # workers inherit it
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.baseline_root and args.in_process:
        print("error: --baseline-root needs worker processes (drop --in-process)", file=sys.stderr)
        return 2
    tuned = False
    if not args.no_allocator_tuning:
        tuned = tune_cpu_allocator()  # in this process too: the matmul peak is measured under the same allocator
    info = machine_info(args.device, tuned_allocator=tuned)
    # Under --amp the yardstick is a matmul in the autocast dtype: what the models' GEMMs run in.
    peak_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp, torch.float32)
    dtype_name = str(peak_dtype).removeprefix("torch.")
    peak = matmul_flops_per_second(args.device, dtype=peak_dtype, sizes=tuple(args.matmul_sizes))
    print(f"# {describe_machine(info)}")
    print(f"# dense {dtype_name} matmul: {peak['flops_per_second'] / 1e9:.1f} GFLOP/s (n={peak['size']})", flush=True)
    options = MeasureOptions(
        device=args.device,
        repeats=args.repeats,
        warmup=args.warmup,
        amp=args.amp,
        compile=args.compile,
        channels_last=args.channels_last,
        train=not args.no_train,
        tuned_allocator=not args.no_allocator_tuning,
    )
    baseline_options = replace(options, tuned_allocator=False) if args.baseline_default_allocator else options
    targets, pairs = _targets(args)
    rows = []
    # Sizes outermost: the models being compared are measured minutes, not an hour, apart.
    # Rows interleaved (every model once per size, then again in the next round), so the load of a
    # shared machine falls on all of them alike.
    runs = [
        (size, batch, target)
        for size in args.sizes
        for _ in range(args.rounds)
        for batch in args.batch
        for target in targets
    ]
    for size, batch, target in progress(runs, desc="benchmark", every_n_seconds=0):  # bar or ETA lines
        target_options = baseline_options if target.root else options
        if target.compiled is not None:
            target_options = replace(target_options, compile=target.compiled)
        row = run_measurement(
            target.spec,
            size,
            batch,
            target_options,
            subprocess_per_run=not args.in_process,
            source_root=target.root,
        )
        label = target.label
        row.update(model=label, spec=target.spec, size=list(size), batch=batch)
        rows.append(row)
        status = row.get("error") or f"{row['latency_ms']:.1f} ms, {row['peak_mem_mb']:.0f} MiB"
        print(f"  {label} {size[0]}x{size[1]} b{batch}: {status}", flush=True)
    # The yardstick is the best of the matmul peaks measured before and after the models (a shared
    # machine's throughput drifts during a long run; the higher figure is the stricter one).
    peak_end = matmul_flops_per_second(args.device, dtype=peak_dtype, sizes=tuple(args.matmul_sizes))
    gflops = peak_end["flops_per_second"] / 1e9
    print(f"# dense {dtype_name} matmul after the models: {gflops:.1f} GFLOP/s (n={peak_end['size']})")
    peak = dict(max(peak, peak_end, key=lambda p: p["flops_per_second"]), start=peak, end=peak_end)
    for row in rows:
        if "flops_per_second" in row:
            row["matmul_fraction"] = row["flops_per_second"] / peak["flops_per_second"]
    measured = rows
    rows = median_rows(rows)
    ratios = compare_ratios(rows, pairs)
    print()
    print(f"# {describe_machine(info)}" + (f"; median of {args.rounds} interleaved rounds" if args.rounds > 1 else ""))
    print(format_table(rows))
    if ratios:
        print()
        print(format_ratios(ratios))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        document = {
            "machine": info,
            "matmul_peak": dict(peak, dtype=dtype_name),
            "options": options.__dict__,
            "argv": argv or sys.argv[1:],
        }
        document.update(results=rows, ratios=ratios)
        if args.rounds > 1:
            document["rounds"] = measured
        Path(args.out).write_text(json.dumps(document, indent=2))
    if args.plot:
        plot_scaling(
            rows, args.plot, title=f"{info['cpu']}, {info['usable_cores']} cores, torch {info['torch']}, {args.device}"
        )
    return 1 if any("error" in row for row in rows) else 0
