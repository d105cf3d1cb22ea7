"""`flatten-dense export CONFIG|MODEL --format onnx|pt2 --out FILE`: a deployable graph at any size.

MODEL is a zoo name (the backbone: a list of NCHW maps; `--weights` a release ImageNet file), CONFIG a
segmentation YAML (the segmentor: per-pixel logits at the input size; `--weights` a checkpoint of
its task, e.g. best.ckpt) or a detection YAML (`export_detection`: ONNX is the whole torchvision
detector, image -> boxes, labels, scores (, masks); pt2 only its feature extractor, backbone + FPN,
because torch.export cannot trace torchvision's NMS). Height and width are dynamic, in multiples of
32 between `--min-size` and `--max-size` (raised to 256 for Swin, whose stage-4 map must be wider
than its 7-window, and to 128 for CSWin). The graph is traced in eval mode without autograd; the
CPU fast paths (oneDNN linears, chunked MLP, position caches) step aside while tracing, so it holds
only standard aten ops. `pt2` is `torch.export.save`; `onnx` uses the dynamo exporter (opset 18).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from flatten_dense.commands.export_graph import EXPORT_FORMATS, STRIDE, export_module
from flatten_dense.core.config import ConfigError

__all__ = ["EXPORT_FORMATS", "export", "export_module", "load_export_target"]


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
    """(module in eval mode, kind) for a zoo name (a backbone) or a config file (its network).

    A segmentor comes wrapped (images -> tuple of logits); a detector bare, kind "detector:<class>"
    (its export takes another path, see `export_detection`).
    """
    from flatten_dense.models import create_backbone, list_models

    if target in list_models():
        return _ListOutputs(create_backbone(target, pretrained=weights)).eval(), "backbone"
    path = Path(target)
    if path.suffix not in (".yaml", ".yml"):
        raise ConfigError(f"export: {target!r} is neither a zoo model ({', '.join(list_models())}) nor a YAML config")
    if not path.is_file():
        raise ConfigError(f"export: config not found: {target}")
    from flatten_dense.commands.build import build_network, load_run, task_from_checkpoint

    run = load_run(path, overrides, create_run_dir=False)
    if run.task_name == "detection":
        kind = f"detector:{run.section('model').get('detector')}"
        if weights is not None:  # class count and names come from the checkpoint
            return task_from_checkpoint(run, weights).model.eval(), kind
        num_classes = run.section("model").get("num_classes") or 80  # COCO's, when the data would decide
        return build_network(run, num_classes=int(num_classes)).eval(), kind
    num_classes = run.section("model").get("num_classes") or 150
    network = build_network(run, num_classes=int(num_classes))
    if weights is not None:
        from flatten_dense.models.checkpoint import read_state_dict

        state = read_state_dict(weights)
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")} or state
        network.load_state_dict(state, strict=True)
    return _ListOutputs(network).eval(), type(network).__name__


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
    """The `flatten-dense export` command; returns (and prints) a one-line summary.

    A detection config exports the whole detector as ONNX (image -> boxes, labels, scores, masks)
    and, as pt2, its feature extractor only: torch.export cannot trace torchvision's NMS.
    """
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export: --format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    module, kind = load_export_target(target, weights=weights, overrides=overrides)
    start = time.perf_counter()
    if kind.startswith("detector:"):
        path, what, sizes = _export_detector(module, target, Path(out), fmt=fmt, min_size=min_size, max_size=max_size)
        kind = kind.split(":", 1)[1] + what
    else:
        low = max(min_size, _smallest_size(module))
        example = (low, low + STRIDE) if low + STRIDE <= max_size else (low, low)
        path = export_module(module, out, fmt=fmt, example_size=example, min_size=low, max_size=max_size)
        sizes = f"H, W in {low}..{max_size}, multiples of {STRIDE}"
    summary = {
        "target": target,
        "kind": kind,
        "format": fmt,
        "out": str(path),
        "sizes": sizes,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(f"exported {target} ({kind}) as {fmt} to {path}: {summary['sizes']} ({summary['seconds']} s)")
    return summary


def _export_detector(
    detector: nn.Module, target: str, out: Path, *, fmt: str, min_size: int, max_size: int
) -> tuple[Path, str, str]:
    """(file, what was exported, its sizes) for a torchvision detector; failures as one line."""
    from flatten_dense.commands.export_detection import (
        FeatureExtractor,
        coarsest_stride,
        export_detector_onnx,
        feature_names,
    )

    low = max(min_size, _smallest_size(detector))
    if low > max_size:
        raise ConfigError(f"export: {target}: --max-size {max_size} is below this backbone's smallest size {low}")
    out.parent.mkdir(parents=True, exist_ok=True)
    transform = detector.transform
    resize = f"resized inside to shorter side {transform.min_size[0]}, longer <= {transform.max_size}"
    try:
        if fmt == "onnx":
            _require_onnx(target)
            side = max(low, transform.min_size[0])  # the traced example; the graph takes any size
            outputs = export_detector_onnx(
                detector, out, example=(side, side + STRIDE), backbone_sizes=(low, max(max_size, low))
            )
            return out, "", f"image (3, H, W) in [0, 1], any H x W ({resize}) -> {', '.join(outputs)}"
        names = feature_names(detector, (low, low))
        # torch.export assumes a map wider than 1 where the example's is: the coarsest FPN map (P6
        # max-pool, stride 64, or P7, stride 128) must be at least 2 wide at the smallest size.
        low = max(low, coarsest_stride(detector) + STRIDE)
        if low > max_size:
            raise ConfigError(
                f"export: {target}: --max-size {max_size} is below the feature extractor's smallest size {low}"
            )
        export_module(
            FeatureExtractor(detector.backbone).eval(),
            out,
            fmt="pt2",
            example_size=(low, low + STRIDE) if low + STRIDE <= max_size else (low, low),
            min_size=low,
            max_size=max_size,
        )
    except ConfigError:
        raise
    except Exception as error:  # a tracer's multi-page message: its first line names the cause
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConfigError(f"export: {target}: the detector did not export as {fmt}: {reason}") from error
    return (
        out,
        " feature extractor: backbone + FPN, since torch.export cannot trace torchvision's NMS;"
        " --format onnx exports the whole detector",
        f"normalised (1, 3, H, W), H, W in {low}..{max_size}, multiples of {STRIDE} -> FPN maps {', '.join(names)}",
    )


def _require_onnx(target: str) -> None:
    """One line instead of an ImportError deep in the exporter."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"export: {target}: ONNX export needs {', '.join(missing)}: pip install 'flatten-dense[onnx]'"
        )


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
