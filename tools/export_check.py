"""Export check: ONNX (dynamo) export time, onnxruntime vs eager at two sizes, and latency at 1024.

    python tools/export_check.py flatten_pvt_t flatten_swin_t --threads 2 --out runs/export_check.json

Per model: the time of `export_module(..., fmt="onnx")` with dynamic H, W; the max abs difference of
onnxruntime's outputs to eager torch at two sizes (one of them tiling Swin's windows exactly, one
padding them); the median of `--repeats` interleaved runs at `--latency-size` of onnxruntime and of
eager torch, both on `--threads` threads. Prints one JSON line per model and the machine it ran on
(`flatten-dense benchmark`'s machine info, the load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

import flatten_dense as fd
from flatten_dense.benchmark.cli import machine_info
from flatten_dense.commands.export import _ListOutputs, _smallest_size, export_module

SIZES = {"flatten_swin_t": ((256, 288), (448, 320)), "flatten_cswin_t": ((128, 160), (224, 128))}
DEFAULT_SIZES = ((64, 96), (128, 64))


def check(name: str, threads: int, latency_size: int, repeats: int, workdir: Path, reuse: bool = False) -> dict:
    import onnxruntime as ort

    model = _ListOutputs(fd.create_backbone(name)).eval()
    sizes = SIZES.get(name, DEFAULT_SIZES)
    low = _smallest_size(model)
    path, export_s = workdir / f"{name}.onnx", None
    if not (reuse and path.is_file()):
        start = time.perf_counter()
        export_module(model, path, fmt="onnx", example_size=sizes[0], min_size=max(64, low))
        export_s = round(time.perf_counter() - start, 1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    differences = {}
    for size in sizes:
        image = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = model(image)
        got = session.run(None, {"images": image.numpy()})
        differences[f"{size[0]}x{size[1]}"] = max(
            float((torch.from_numpy(g) - e).abs().max()) for e, g in zip(expected, got, strict=True)
        )
    image = torch.randn(1, 3, latency_size, latency_size)
    feed = {"images": image.numpy()}
    with torch.no_grad():
        model(image)  # warm-up (caches, allocator)
        session.run(None, feed)
        ort_times, torch_times = [], []
        for _ in range(repeats):  # interleaved, so load changes hit both alike
            t = time.perf_counter()
            session.run(None, feed)
            ort_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            model(image)
            torch_times.append(time.perf_counter() - t)
    return {
        "model": name,
        "onnx_export_s": export_s,  # None: an earlier export reused (--reuse)
        "max_abs_diff": differences,
        "latency_size": latency_size,
        "onnxruntime_median_s": round(statistics.median(ort_times), 3),
        "eager_torch_median_s": round(statistics.median(torch_times), 3),
        "repeats": repeats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--onnx-dir", type=Path, help="keep the .onnx files here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="with --onnx-dir: measure files exported earlier")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    machine = {
        **machine_info("cpu"),
        "onnxruntime_threads": args.threads,
        "onnxruntime": ort.__version__,
        "load_average_before": os.getloadavg(),
    }
    print(json.dumps(machine), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.onnx_dir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            rows.append(check(name, args.threads, args.latency_size, args.repeats, workdir, args.reuse))
            print(json.dumps(rows[-1]), flush=True)
    machine["load_average_after"] = os.getloadavg()
    print(json.dumps({"load_average_after": machine["load_average_after"]}), flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
