"""Export of a detection config: the whole torchvision detector as ONNX, its feature extractor as pt2.

ONNX: torchvision's detectors export through the TorchScript-based exporter (`dynamo=False`, the way
torchvision documents and tests it): it traces the transform (normalise, resize, pad), RPN / heads,
NMS, RoIAlign and mask pasting with the sizes as tensors. Our backbones cannot be traced that way:
their eager code reads sizes as Python ints (position tables resized to the grid, padding tests,
blocked NCHW copies), so a trace would pin the graph to the example's size. So the backbone + FPN
(the part `torch.export` handles at dynamic H, W) goes through the dynamo exporter, the rest
through the TorchScript exporter, with the backbone as one placeholder node that is then replaced
by the dynamo graph: one ONNX file, image (3, H, W) in [0, 1] -> boxes, labels, scores (, masks).

pt2: `torch.export` stops inside torchvision (`batched_nms` tests the data-dependent box count), so
`--format pt2` writes the detector's feature extractor, `model.backbone`: a normalised, padded
(1, 3, H, W) batch, H and W multiples of 32, -> the FPN maps (names in the summary).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "DETECTION_OUTPUTS",
    "DetectorOutputs",
    "FeatureExtractor",
    "coarsest_stride",
    "export_detector_onnx",
    "feature_names",
    "output_names",
]

DETECTION_OUTPUTS = ("boxes", "labels", "scores", "masks")
OPSET = 18  # both exporters write it; the TorchScript one needs >= 11 for torchvision's ops
PLACEHOLDER_DOMAIN = "flatten_dense.export"


class DetectorOutputs(nn.Module):
    """A torchvision detector on one (3, H, W) image -> its detections as a tuple (boxes, labels, ...)."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.names = output_names(detector)

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        detections = self.detector([image])[0]
        return tuple(detections[name] for name in self.names)


class FeatureExtractor(nn.Module):
    """`detector.backbone` (backbone + FPN) with its OrderedDict of maps as a tuple."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.backbone(images).values())


def output_names(detector: nn.Module) -> tuple[str, ...]:
    """The detection keys the detector returns: masks only for the Mask R-CNN family."""
    roi_heads = getattr(detector, "roi_heads", None)
    with_masks = roi_heads is not None and getattr(roi_heads, "has_mask", lambda: False)()
    return DETECTION_OUTPUTS if with_masks else DETECTION_OUTPUTS[:3]


def feature_names(detector: nn.Module, size: tuple[int, int]) -> tuple[str, ...]:
    """The FPN map names ('0', ..., 'pool' or 'p6', 'p7'), from one eager call."""
    with torch.no_grad():
        return tuple(detector.backbone(torch.zeros(1, 3, *size)).keys())


def coarsest_stride(detector: nn.Module, probe: int = 512) -> int:
    """The stride of the coarsest FPN map (64 for max-pool P6, 128 for P7), from one eager call."""
    with torch.no_grad():
        maps = detector.backbone(torch.zeros(1, 3, probe, probe))
    return probe // next(reversed(maps.values())).shape[-1]


class _Placeholder(nn.Module):
    """Stands for `backbone` while tracing: eager it runs it; in the ONNX graph it is one node with
    one output per FPN map, which `_splice` replaces by the backbone's dynamo graph."""

    def __init__(self, backbone: nn.Module, names: tuple[str, ...]) -> None:
        super().__init__()
        self.inner = backbone
        self.names = names
        self.out_channels = backbone.out_channels
        self.call = _placeholder_function(backbone, len(names))

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(zip(self.names, self.call.apply(images), strict=True))


def _placeholder_function(backbone: nn.Module, count: int) -> type[torch.autograd.Function]:
    class Backbone(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, images: Tensor) -> tuple[Tensor, ...]:
            # Not traced: the node stands for it (a trace would pin the backbone's sizes).
            state = torch._C._get_tracing_state()
            torch._C._set_tracing_state(None)
            try:
                return tuple(backbone(images).values())
            finally:
                torch._C._set_tracing_state(state)

        @staticmethod
        def symbolic(g: Any, images: Any) -> Any:
            return g.op(f"{PLACEHOLDER_DOMAIN}::Backbone", images, outputs=count)

    return Backbone


def export_detector_onnx(
    detector: nn.Module,
    out: Path,
    *,
    example: tuple[int, int],
    backbone_sizes: tuple[int, int],
) -> tuple[str, ...]:
    """Write the whole detector as one ONNX graph with dynamic H, W; returns its output names.

    `example` is the image the TorchScript exporter traces; `backbone_sizes` (min, max) bound the
    padded batch the backbone's dynamo graph is exported for.
    """
    import onnx

    from flatten_dense.commands.export_graph import export_module

    names = feature_names(detector, (backbone_sizes[0], backbone_sizes[0]))
    outputs = output_names(detector)
    scratch = out.with_name(out.name + ".backbone.onnx")
    try:
        export_module(
            FeatureExtractor(detector.backbone),
            scratch,
            fmt="onnx",
            example_size=(backbone_sizes[0], min(backbone_sizes[0] + 32, backbone_sizes[1])),
            min_size=backbone_sizes[0],
            max_size=backbone_sizes[1],
        )
        backbone_model = onnx.load(str(scratch))
    finally:
        for path in (scratch, scratch.with_name(scratch.name + ".data")):
            path.unlink(missing_ok=True)
    original = detector.backbone
    detector.backbone = _Placeholder(original, names)
    try:
        wrapped = DetectorOutputs(detector).eval()
        image = torch.rand(3, *example)
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript-based exporter is deprecated, but it is the one torchvision's detectors trace with
            warnings.filterwarnings(
                "ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning
            )
            torch.onnx.export(
                wrapped,
                (image,),
                str(out),
                dynamo=False,
                opset_version=OPSET,
                input_names=["image"],
                output_names=list(outputs),
                dynamic_axes={
                    "image": {1: "height", 2: "width"},
                    **{name: {0: "detections"} for name in outputs},
                    **({"masks": {0: "detections", 2: "height", 3: "width"}} if "masks" in outputs else {}),
                },
            )
    finally:
        detector.backbone = original
    model = _splice(onnx.load(str(out)), backbone_model)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return outputs


def _splice(model: Any, backbone: Any) -> Any:
    """`model` with its placeholder node replaced by the nodes of `backbone` (values renamed apart)."""
    from onnx import helper

    graph = model.graph
    index, node = next((i, n) for i, n in enumerate(graph.node) if n.domain == PLACEHOLDER_DOMAIN)
    inner = backbone.graph
    rename = {inner.input[0].name: node.input[0]}
    rename.update({o.name: name for o, name in zip(inner.output, node.output, strict=True)})

    def renamed(value: str) -> str:
        return value if not value else rename.get(value, f"backbone/{value}")

    nodes = []
    for inner_node in inner.node:
        copy = type(inner_node)()
        copy.CopyFrom(inner_node)
        copy.name = f"backbone/{inner_node.name}"
        copy.input[:] = [renamed(v) for v in inner_node.input]
        copy.output[:] = [renamed(v) for v in inner_node.output]
        nodes.append(copy)
    initializers = []
    for tensor in inner.initializer:
        copy = type(tensor)()
        copy.CopyFrom(tensor)
        copy.name = renamed(tensor.name)
        initializers.append(copy)
    kept = list(graph.node)
    graph.ClearField("node")
    graph.node.extend([*kept[:index], *nodes, *kept[index + 1 :]])
    graph.initializer.extend(initializers)
    graph.value_info.extend(
        helper.make_value_info(renamed(v.name), v.type) for v in inner.value_info if v.name not in rename
    )
    model.functions.extend(backbone.functions)
    imports = {(o.domain, o.version) for o in model.opset_import if o.domain != PLACEHOLDER_DOMAIN}
    imports |= {(o.domain, o.version) for o in backbone.opset_import}
    domains = [d for d, _ in imports]
    if len(domains) != len(set(domains)):
        raise ValueError(f"the two ONNX graphs import different versions of one opset: {sorted(imports)}")
    model.ClearField("opset_import")
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(imports))
    model.ir_version = max(model.ir_version, backbone.ir_version)
    return model
