"""What can be benchmarked: registered backbones, their softmax counterparts, and config models.

A target is named by a string so that a fresh worker process can rebuild it:
    "flatten_pvt_t"                  a registered FLatten backbone (all four outputs)
    "softmax:flatten_pvt_t"          our PVT with softmax spatial-reduction attention (SSSS, sr 8,4,2,1)
    "plain:flatten_pvt_t"            the same backbone with its plain layers (fast_layers=False)
    "recompute:flatten_pvt_t"        the backbone with recompute_attention=True (selective checkpointing)
    "torchvision:swin_t"             torchvision's Swin backbone part (`features` + `norm`, weights=None)
    "config:PATH[|key=value|...]"   a detector or segmentor built by `commands.build.build_network`
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Target", "build_target", "softmax_counterpart", "display_name", "config_target"]

PVT_SOFTMAX_SR_RATIOS = (8, 4, 2, 1)


SYNTHETIC_OBJECTS_PER_IMAGE = 8  # boxes per image in a detector's synthetic training targets


@dataclass
class Target:
    """A built model and how to feed it: a batch tensor, or a list of images (torchvision detectors).

    Detectors train on synthetic targets (`make_targets`): random boxes with labels, and filled-box
    masks when the model has a mask head, so a training step costs what a real one does.
    """

    model: nn.Module
    list_input: bool = False
    num_classes: int = 0  # detectors: foreground classes (labels are 1..num_classes)

    def make_input(self, batch: int, size: tuple[int, int], device: torch.device) -> Tensor | list[Tensor]:
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(batch, 3, *size, generator=generator).to(device)
        return list(images) if self.list_input else images

    def make_targets(self, batch: int, size: tuple[int, int], device: torch.device) -> list[dict[str, Tensor]] | None:
        """Training targets for a detector (None for backbones and segmentors, which train on a plain loss)."""
        if not self.list_input:
            return None
        generator = torch.Generator().manual_seed(1)
        height, width = size
        with_masks = bool(getattr(getattr(self.model, "roi_heads", None), "has_mask", lambda: False)())
        targets = []
        for _ in range(batch):
            corners = torch.rand(SYNTHETIC_OBJECTS_PER_IMAGE, 2, 2, generator=generator) * torch.tensor([width, height])
            top_left, bottom_right = corners.min(dim=1).values, corners.max(dim=1).values + 8.0  # N 2: at least 8 px
            boxes = torch.cat(
                [top_left, bottom_right.minimum(torch.tensor([width, height]))], dim=1
            )  # N 4 (x1 y1 x2 y2)
            labels = torch.randint(1, self.num_classes + 1, (len(boxes),), generator=generator)
            target = {"boxes": boxes.to(device), "labels": labels.to(device)}
            if with_masks:
                ys, xs = torch.arange(height)[:, None], torch.arange(width)[None, :]
                masks = [
                    (ys >= y1) & (ys < y2) & (xs >= x1) & (xs < x2) for x1, y1, x2, y2 in boxes.round().long().tolist()
                ]
                target["masks"] = torch.stack(masks).to(torch.uint8).to(device)  # N H W
            targets.append(target)
        return targets


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
    if spec.startswith("plain:"):
        return spec.split(":", 1)[1] + "@plain_layers"
    if spec.startswith("recompute:"):
        return spec.split(":", 1)[1] + "@recompute"
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
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    from flatten_dense.commands.build import build_network, load_run

    path, *overrides = spec.split(":", 1)[1].split("|")
    run = load_run(path, overrides, create_run_dir=False)
    num_classes = run.cfg.get("model", {}).get("num_classes")
    if num_classes is None:
        raise ValueError(f"{path}: model.num_classes is not set (pass --override model.num_classes=N)")
    model = build_network(run, num_classes=int(num_classes))
    # torchvision's detectors take lists of images and need targets to train
    if isinstance(getattr(model, "transform", None), GeneralizedRCNNTransform):
        return Target(model, list_input=True, num_classes=int(num_classes))
    return Target(model)


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
    if spec.startswith("plain:"):
        return Target(fd.create_backbone(spec.split(":", 1)[1], fast_layers=False))
    if spec.startswith("recompute:"):
        return Target(fd.create_backbone(spec.split(":", 1)[1], recompute_attention=True))
    return Target(fd.create_backbone(spec))
