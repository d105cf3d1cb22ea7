#!/usr/bin/env python
"""Do the oneDNN fused linears of CPU inference pay on this processor? An alternated A/B.

    python tools/fused_linear_check.py --sizes 512 1024 --rounds 12 [--models NAME ...] [--out FILE.json]

Issue 15 keeps a CPU-inference fusion only where it measurably pays on more than one processor.
In a CPU fp32 inference forward, `fused_linear.py` runs every linear as oneDNN's `_linear_pointwise`
with its GELU or residual add in the GEMM's epilogue, and `split_linear` makes each q/k/v piece a
GEMM of its own (contiguous outputs). With the op switched off (`fused_linear.onednn_linears_off()`)
the same forward takes the aten path: `F.linear`, then GELU or the add as separate ops, and one wide
GEMM split into strided views; the same numbers. Every model and size of one invocation runs in
this one process: the model is built once per (model, size) and times eval forwards under
`torch.no_grad`, on and off in alternating order (on-off, off-on, ...) after one warm-up call each;
the ratio is the median of the per-round ratios, with their range. fp32, batch 1, glibc allocator
defaults (no tuning), the thread count of --threads. Registered FLatten backbones only: other specs
(torchvision, plain layers) run no fused linear, so their ratio would mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from flatten_dense.benchmark.cli import describe_machine, machine_info  # noqa: E402
from flatten_dense.benchmark.targets import build_target  # noqa: E402
from flatten_dense.models import list_models  # noqa: E402
from flatten_dense.models.layers import fused_linear  # noqa: E402

MIN_SIZE = 32  # the smallest input every registered backbone takes (a stride-4 stem, then three stride-2 stages)


def timed_forward(model: torch.nn.Module, x: torch.Tensor, *, onednn: bool) -> float:
    """Seconds of one eval forward with the oneDNN linears on or off."""
    with contextlib.nullcontext() if onednn else fused_linear.onednn_linears_off(), torch.no_grad():
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


def measure(name: str, size: int, rounds: int) -> dict:
    """The alternated A/B of one model at one size: medians in ms and the on/off ratio."""
    model = build_target(name).model.eval()
    x = torch.randn(1, 3, size, size)
    timed_forward(model, x, onednn=True)
    timed_forward(model, x, onednn=False)
    times: dict[bool, list[float]] = {True: [], False: []}
    ratios = []
    for round_index in range(rounds):
        order = (True, False) if round_index % 2 == 0 else (False, True)
        seconds = {onednn: timed_forward(model, x, onednn=onednn) for onednn in order}
        for onednn, value in seconds.items():
            times[onednn].append(value)
        ratios.append(seconds[True] / seconds[False])
    return {
        "model": name,
        "size": size,
        "rounds": rounds,
        "onednn_ms": 1000 * statistics.median(times[True]),
        "aten_ms": 1000 * statistics.median(times[False]),
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse bad input before minutes of measuring, in one line naming the culprit."""
    registered = set(list_models())
    unknown = [name for name in args.models if name not in registered]
    if unknown:
        parser.error(f"not a registered backbone: {', '.join(unknown)} (see flatten_dense.list_models())")
    small = [str(size) for size in args.sizes if size < MIN_SIZE]
    if small:
        parser.error(f"--sizes must be at least {MIN_SIZE}: got {', '.join(small)}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.out is not None and not args.out.parent.is_dir():
        parser.error(f"--out: folder {args.out.parent} does not exist")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["flatten_swin_t", "flatten_pvt_t"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the machine and rows as JSON")
    args = parser.parse_args()
    check_arguments(parser, args)
    if not fused_linear.has_onednn_linear():
        sys.exit("this torch has no oneDNN linear (torch.ops.mkldnn._linear_pointwise): nothing to compare")
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info("cpu", tuned_allocator=False)
    print(describe_machine(machine))
    print("| model | size | oneDNN fused ms | F.linear + ops ms | fused / unfused (range) |")
    print("|---|---|---|---|---|")
    rows = []
    for name in args.models:
        for size in args.sizes:
            row = measure(name, size, args.rounds)
            rows.append(row)
            low, high = row["ratio_range"]
            print(
                f"| {name} | {size} | {row['onednn_ms']:.0f} | {row['aten_ms']:.0f} | "
                f"{row['ratio']:.2f}x ({low:.2f}-{high:.2f}) |",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
