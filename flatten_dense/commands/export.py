"""`flatten-dense export CONFIG|MODEL --format onnx|pt2 --out FILE`: a deployable graph at any size.

MODEL is a zoo name (the backbone: a list of NCHW maps; `--weights` a release ImageNet file), CONFIG a
segmentation YAML (the segmentor: per-pixel logits at the input size; `--weights` a checkpoint of
its task, e.g. best.ckpt). Height and width are dynamic, in multiples of 32 between `--min-size` and
`--max-size` (raised to 256 for Swin, whose stage-4 map must be wider than its 7-window, and to 128
for CSWin). The graph is traced in eval
mode without autograd; the CPU fast paths (oneDNN linears, chunked MLP, position caches) step aside
while tracing, so it holds only standard aten ops. `pt2` is `torch.export.save`; `onnx` uses the
dynamo exporter (opset 18).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flatten_dense.core.config import ConfigError

__all__ = ["EXPORT_FORMATS", "export", "export_module", "load_export_target"]

EXPORT_FORMATS = ("onnx", "pt2")
STRIDE = 32
# onnxscript's graph optimiser is quadratic in the node count (its multi-output rewrite patterns scan
# the whole graph per node): CSWin-T's 17k-node graph ran over 17 minutes in it. Larger graphs are
# saved unoptimised; onnxruntime folds constants and fuses when it loads them.
ONNX_OPTIMIZE_MAX_NODES = 10_000


class _ListOutputs(nn.Module):
    """A backbone's list of maps as a tuple (what exporters name output by output)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.model(images)
        return tuple(out) if isinstance(out, (list, tuple)) else (out,)


def load_export_target(
    target: str, *, weights: str | Path | None = None, overrides: Sequence[str] = ()
) -> tuple[nn.Module, str]:
    """(module in eval mode, kind) for a zoo name (a backbone) or a config file (its network)."""
    from flatten_dense.models import create_backbone, list_models

    if target in list_models():
        return _ListOutputs(create_backbone(target, pretrained=weights)).eval(), "backbone"
    path = Path(target)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"export: {target!r} is neither a zoo model ({', '.join(list_models())}) nor a YAML config")
    if not path.is_file():
        raise ConfigError(f"export: config not found: {target}")
    from flatten_dense.commands.build import build_network, load_run

    run = load_run(path, overrides, create_run_dir=False)
    num_classes = run.section("model").get("num_classes") or 150
    network = build_network(run, num_classes=int(num_classes))
    if weights is not None:
        from flatten_dense.models.checkpoint import read_state_dict

        state = read_state_dict(weights)
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")} or state
        network.load_state_dict(state, strict=True)
    return _ListOutputs(network).eval(), type(network).__name__


def export_module(
    module: nn.Module,
    out: str | Path,
    *,
    fmt: str,
    example_size: tuple[int, int] = (256, 288),
    min_size: int = 64,
    max_size: int = 2048,
) -> Path:
    """Export `module` (images -> tuple of tensors) with dynamic H and W (multiples of 32)."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export: --format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if min_size % STRIDE or max_size % STRIDE or min_size > max_size:
        raise ConfigError(f"export: sizes must be multiples of {STRIDE} with min <= max, got {min_size}..{max_size}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(1, 3, *example_size)
    height = torch.export.Dim("h", min=min_size // STRIDE, max=max_size // STRIDE)
    width = torch.export.Dim("w", min=min_size // STRIDE, max=max_size // STRIDE)
    shapes: dict[str, Any] = {"images": {2: STRIDE * height, 3: STRIDE * width}}
    with torch.no_grad():
        if fmt == "pt2":
            program = torch.export.export(module, (example,), dynamic_shapes=shapes)
            torch.export.save(program, out)
        else:
            onnx_program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                dynamic_shapes=shapes,
                input_names=["images"],
                opset_version=18,
                optimize=False,
            )
            if sum(1 for _ in onnx_program.model.graph) <= ONNX_OPTIMIZE_MAX_NODES:
                onnx_program.optimize()
            onnx_program.save(str(out))
    return out


def export(
    target: str,
    *,
    fmt: str,
    out: str | Path,
    weights: str | Path | None = None,
    overrides: Sequence[str] = (),
    min_size: int = 64,
    max_size: int = 2048,
) -> dict:
    """The `flatten-dense export` command; returns (and prints) a one-line summary."""
    module, kind = load_export_target(target, weights=weights, overrides=overrides)
    start = time.perf_counter()
    low = max(min_size, _smallest_size(module))
    example = (low, low + STRIDE) if low + STRIDE <= max_size else (low, low)
    path = export_module(module, out, fmt=fmt, example_size=example, min_size=low, max_size=max_size)
    summary = {
        "target": target,
        "kind": kind,
        "format": fmt,
        "out": str(path),
        "sizes": f"H, W in {low}..{max_size}, multiples of {STRIDE}",
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(f"exported {target} ({kind}) as {fmt} to {path}: {summary['sizes']} ({summary['seconds']} s)")
    return summary


def _smallest_size(module: nn.Module) -> int:
    """The smallest H, W one graph covers: Swin's stage-4 map wider than its 7-window (a shift at every
    size), CSWin's stage-3 map at least one 7-wide stripe; PVT any multiple of 32."""
    from flatten_dense.models.flatten_cswin import FlattenCSWin
    from flatten_dense.models.flatten_swin import FlattenSwin

    kinds = {type(m) for m in module.modules()}
    if any(issubclass(k, FlattenSwin) for k in kinds):
        return 256
    if any(issubclass(k, FlattenCSWin) for k in kinds):
        return 128
    return STRIDE
