"""What can be benchmarked: registered backbones, their softmax counterparts, and config models.

A target is named by a string so that a fresh worker process can rebuild it:
    "flatten_pvt_t"                  a registered FLatten backbone (all four outputs)
    "softmax:flatten_pvt_t"          our PVT with softmax spatial-reduction attention (SSSS, sr 8,4,2,1)
    "torchvision:swin_t"             torchvision's Swin backbone part (`features` + `norm`, weights=None)
    "config:PATH[|key=value|...]"   a detector or segmentor built by `model_builder.build_model`
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Target", "build_target", "softmax_counterpart", "display_name", "config_target"]

PVT_SOFTMAX_SR_RATIOS = (8, 4, 2, 1)


@dataclass
class Target:
    """A built model and how to feed it: a batch tensor, or a list of images (torchvision detectors)."""

    model: nn.Module
    list_input: bool = False
    trainable: bool = True  # detectors need targets to train; the benchmark times them in eval only

    def make_input(self, batch: int, size: tuple[int, int], device: torch.device) -> Tensor | list[Tensor]:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(batch, 3, *size, generator=generator).to(device)
        return list(images) if self.list_input else images


def softmax_counterpart(name: str) -> str | None:
    """The softmax model that a FLatten backbone is compared against, or None."""
    if name.startswith("flatten_swin_"):
        return f"torchvision:swin_{name.rsplit('_', 1)[-1]}"
    if name.startswith("flatten_pvt_"):
        return f"softmax:{name}"
    return None


def display_name(spec: str) -> str:
    """A short row label for a target string."""
    if spec.startswith("softmax:"):
        return spec.split(":", 1)[1].replace("flatten_", "") + "_softmax"
    if spec.startswith("torchvision:"):
        return "tv_" + spec.split(":", 1)[1]
    if spec.startswith("config:"):
        return spec.split(":", 1)[1].split("|", 1)[0].rsplit("/", 1)[-1].removesuffix(".yaml")
    return spec


def config_target(path: str, overrides: list[str]) -> str:
    return "|".join([f"config:{path}", *overrides])


def _torchvision_swin(variant: str) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, f"swin_{variant}", None)
    if builder is None:
        raise ValueError(f"torchvision has no swin_{variant}")
    model = builder(weights=None)
    return nn.Sequential(model.features, model.norm)  # the backbone part: NHWC map of the last stage


def _config_model(spec: str) -> Target:
    path, *overrides = spec.split(":", 1)[1].split("|")
    try:
        from flatten_dense.model_builder import build_model
    except ImportError as error:
        raise RuntimeError(
            f"--config needs flatten_dense.model_builder.build_model, which is not available ({error})"
        ) from None
    from flatten_dense.config import load_config

    cfg = load_config(path, overrides)
    model = build_model(cfg)
    is_detector = cfg.get("task") == "detection"
    return Target(model, list_input=is_detector, trainable=not is_detector)


def build_target(spec: str) -> Target:
    """Build the model a target string names (random weights: speed does not depend on them)."""
    import flatten_dense as fd

    if spec.startswith("config:"):
        return _config_model(spec)
    if spec.startswith("torchvision:"):
        return Target(_torchvision_swin(spec.split(":", 1)[1].removeprefix("swin_")))
    if spec.startswith("softmax:"):
        name = spec.split(":", 1)[1]
        if not name.startswith("flatten_pvt_"):
            raise ValueError(f"no softmax variant of {name} in this project (Swin compares with torchvision)")
        return Target(fd.create_backbone(name, attn_types="SSSS", sr_ratios=PVT_SOFTMAX_SR_RATIOS))
    return Target(fd.create_backbone(spec))
