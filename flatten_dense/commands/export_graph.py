"""One module (images -> tuple of tensors) as a graph with dynamic H and W: torch.export or ONNX.

The shared step of `flatten-dense export`: backbones and segmentors go through it whole, detectors
for their backbone + FPN (`export_detection.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from flatten_dense.core.config import ConfigError

__all__ = ["EXPORT_FORMATS", "ONNX_OPTIMIZE_MAX_NODES", "STRIDE", "export_module"]

EXPORT_FORMATS = ("onnx", "pt2")
STRIDE = 32
# onnxscript's graph optimiser is quadratic in the node count (its multi-output rewrite patterns scan
# the whole graph per node): CSWin-T's 17k-node graph ran over 17 minutes in it. Larger graphs are
# saved unoptimised; onnxruntime folds constants and fuses when it loads them.
ONNX_OPTIMIZE_MAX_NODES = 10_000


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
