"""One measurement: a model at one input size and batch size -> params, FLOPs, latency, peak memory.

Peak memory. CUDA: `torch.cuda.max_memory_allocated` growth over the memory held before the first
forward (allocator bytes, not the caching pool). CPU: growth of the process's resident set high-water
mark over the RSS just before the first forward. On Linux the mark is reset there
(`/proc/self/clear_refs`) and read as VmHWM: `ru_maxrss` keeps the RSS of the process a worker was
forked from (Linux carries it across fork and exec), so a worker of a large parent read the
parent's size. Elsewhere `ru_maxrss` is used, meaningful only in a process that has not run
anything bigger before; the benchmark runs every measurement in a fresh worker (see `worker.py`).
Inference is measured first, so `peak_mem_mb` is the inference peak (read before the FLOP count:
under its dispatch mode the fused oneDNN linears fall back to unfused aten ops, a larger peak);
`train_peak_mem_mb` is read after the training steps.
On CPU `tensor_peak_mb` (`train_tensor_peak_mb`) adds the peak of live tensor memory in one forward
(training step), from `tensor_memory.py`: deterministic, free of the C library's retention and
fragmentation that the RSS figure includes.
A forward pass on a tiny 64 x 64 input runs before the start point, so loading libraries and
thread pools is not counted as activation memory.
"""

from __future__ import annotations

import contextlib
import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import psutil
import torch
from torch import Tensor, nn

from flatten_dense.core.cpu_allocator import tune_cpu_allocator

from .flops import count_flops
from .targets import build_target
from .tensor_memory import peak_tensor_bytes

__all__ = ["MeasureOptions", "measure", "output_loss"]


@dataclass
class MeasureOptions:
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 3  # untimed calls, the first included: steady state, not first-touch page faults
    amp: str | None = None  # "bf16" or "fp16": autocast
    compile: bool = False
    channels_last: bool = False
    train: bool = True
    tuned_allocator: bool = True  # glibc keeps freed memory (flatten_dense.core.cpu_allocator), as the tools run


def peak_rss_bytes() -> int:
    """The resident-set high-water mark in bytes: VmHWM where /proc has it (reset by `reset_peak_rss`)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def reset_peak_rss() -> None:
    """VmHWM := VmRSS on Linux, so the peak is this measurement's and not an earlier one's."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass  # no /proc (macOS) or not permitted: ru_maxrss since the process started


def output_loss(output: object) -> Tensor:
    """A scalar touching every output (tensor, list, tuple or dict), for the backward pass."""
    if isinstance(output, Tensor):
        return output.float().mean()
    if isinstance(output, dict):
        output = list(output.values())
    return sum(output_loss(item) for item in output)


def _median_seconds(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def _autocast(device: torch.device, amp: str | None):
    if amp is None:
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def _memory_start(device: torch.device) -> int:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    reset_peak_rss()
    return psutil.Process().memory_info().rss


def _memory_peak_growth(device: torch.device, start: int) -> float:
    """MiB above `start` at the peak so far."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_rss_bytes()
    return max(0, peak - start) / 2**20


def measure(spec: str, size: tuple[int, int], batch: int, options: MeasureOptions) -> dict:
    """Measure one target; returns a flat JSON-able dict (latencies in ms, memory in MiB)."""
    device = torch.device(options.device)
    if options.tuned_allocator:
        tune_cpu_allocator()
    target = build_target(spec)
    model = target.model.to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    images = target.make_input(batch, size, device)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
        if isinstance(images, Tensor):
            images = images.contiguous(memory_format=torch.channels_last)
    runner: nn.Module = torch.compile(model) if options.compile else model
    autocast = _autocast(device, options.amp)

    def forward() -> object:
        with torch.inference_mode(), autocast:
            return runner(images)

    result: dict = dict(params=params, size=list(size), batch=batch, **asdict(options))
    if not options.compile:
        # Load kernels and thread pools on a tiny input first, so they do not count as activations.
        with torch.inference_mode(), autocast:
            model(target.make_input(1, (64, 64), device))
    memory_start = _memory_start(device)
    start = time.perf_counter()
    forward()  # first call: compiles when --compile, fills position-encoding caches
    result["first_call_ms"] = (time.perf_counter() - start) * 1e3
    times = _median_seconds(forward, options.repeats, max(0, options.warmup - 1), device)
    result["latency_ms"] = statistics.median(times) * 1e3
    result["latency_all_ms"] = [t * 1e3 for t in times]
    # Before the FLOP count: under its dispatch mode the fused oneDNN linears fall back to unfused
    # aten ops, whose larger peak (Swin-T at 1024: +50-90 MiB) is not the forward's.
    result["peak_mem_mb"] = _memory_peak_growth(device, memory_start)
    with torch.inference_mode(), autocast:
        result["flops"] = count_flops(lambda: model(images))
    if device.type == "cpu":  # CUDA's peak_mem_mb is already the allocator's tensor peak
        with torch.inference_mode(), autocast:
            result["tensor_peak_mb"] = peak_tensor_bytes(lambda: runner(images)) / 2**20
    result["flops_per_second"] = result["flops"] / statistics.median(times)
    result["images_per_second"] = batch / statistics.median(times)
    if options.train:
        inputs = (images,) if (targets := target.make_targets(batch, size, device)) is None else (images, targets)
        result.update(_measure_train(model, runner, inputs, options, device, autocast))
        result["train_images_per_second"] = batch * 1e3 / result["train_latency_ms"]
        result["train_peak_mem_mb"] = _memory_peak_growth(device, memory_start)
    return result


def _measure_train(
    model: nn.Module, runner: nn.Module, inputs: tuple, options: MeasureOptions, device, autocast
) -> dict:
    """Forward + backward (no optimiser step: its cost does not depend on the input size).

    `inputs` is (images,) for backbones and segmentors, whose loss is the mean of every output, and
    (images, targets) for detectors, whose loss is the sum of the losses they return.
    """
    model.train()

    def step(module: nn.Module = runner) -> None:
        with autocast:
            loss = output_loss(module(*inputs))
        loss.backward()
        model.zero_grad(set_to_none=True)

    step()  # compiles the training graph when --compile
    flops = count_flops(lambda: step(model))
    times = _median_seconds(step, options.repeats, max(0, options.warmup - 1), device)
    median = statistics.median(times)
    result = {"train_latency_ms": median * 1e3, "train_flops": flops, "train_flops_per_second": flops / median}
    if device.type == "cpu":  # saved activations included: the memory a training step needs
        result["train_tensor_peak_mb"] = peak_tensor_bytes(step) / 2**20
    model.eval()
    return result
