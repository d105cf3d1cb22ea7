#!/usr/bin/env python
# Usage: python tools/train_step_check.py SIZE [ROUNDS]  (run from the repository root)
"""Lean training-step check: peak RSS (VmHWM) growth of one step in a fresh process per model, then
interleaved step times of all models in one process. fp32, batch 1, glibc allocator defaults."""

import json
import subprocess
import sys
import time

import torch

from flatten_dense.benchmark.targets import build_target

SPECS = ["flatten_pvt_t", "plain:flatten_pvt_t", "softmax:flatten_pvt_t", "flatten_swin_t", "torchvision:swin_t"]
CHILD = r"""
import sys, torch, gc
torch.set_num_threads(2)
from flatten_dense.benchmark.targets import build_target
def hwm():
    for l in open("/proc/self/status"):
        if l.startswith("VmHWM"): return int(l.split()[1]) * 1024
def rss():
    for l in open("/proc/self/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) * 1024
spec, size = sys.argv[1], int(sys.argv[2])
m = build_target(spec).model.train()
x = torch.randn(1, 3, size, size)
def step(inp):
    out = m(inp); out = out if isinstance(out, (list, tuple)) else [out]
    sum(o.float().mean() for o in out).backward(); m.zero_grad(set_to_none=True)
step(torch.randn(1, 3, 64, 64)); gc.collect()
start = rss()
with open("/proc/self/clear_refs", "w") as f: f.write("5")  # reset VmHWM to the current RSS
step(x)
print("RESULT", (hwm() - start) / 2**20)
"""
size = int(sys.argv[1])
mem = {}
for spec in SPECS:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, spec, str(size)], capture_output=True, text=True, cwd="/work/main"
    )
    line = [text for text in out.stdout.splitlines() if text.startswith("RESULT")]
    mem[spec] = float(line[0].split()[1]) if line else None
    print(spec, "train peak RSS growth MiB", mem[spec], out.stderr[-300:] if not line else "", flush=True)
torch.set_num_threads(2)
models = {s: build_target(s).model.train() for s in SPECS}
x = torch.randn(1, 3, size, size)


def step(m):
    out = m(x)
    out = out if isinstance(out, (list, tuple)) else [out]
    sum(o.float().mean() for o in out).backward()
    m.zero_grad(set_to_none=True)


times = {s: [] for s in SPECS}
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
for r in range(rounds + 1):
    for s, m in models.items():
        t = time.perf_counter()
        step(m)
        dt = time.perf_counter() - t
        if r:
            times[s].append(dt)
        print(f"round {r} {s} {dt * 1e3:.0f} ms", flush=True)
print(json.dumps({"size": size, "mem": mem, "times": times}))
