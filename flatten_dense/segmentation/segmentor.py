"""Encoder-decoder segmentor: backbone -> decode head (+ auxiliary FCN head during training).

The segmentor owns normalisation (ImageNet mean/std on float input in [0, 1]) and, like
torchvision's `GeneralizedRCNNTransform` for detectors, its test-time resize: `predict` resizes
images to `test_scale` and the scores back to the images' own size, so evaluation data arrive at
their file size and the two resizes cannot disagree. Heads predict at stride 4; logits are
upsampled bilinearly to the input size (forward) or to the label size (loss), as mmseg does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from flatten_dense.segmentation.heads.fcn_head import FCNHead
from flatten_dense.segmentation.heads.semantic_fpn import SemanticFPNHead
from flatten_dense.segmentation.heads.upernet import UPerHead
from flatten_dense.segmentation.inference import EvaluationSettings, predict_with_settings
from flatten_dense.segmentation.labels import IGNORE_INDEX
from flatten_dense.segmentation.transforms import rescale_size

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EncoderDecoder", "build_segmentor", "segmentation_loss"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Cross-entropy of logits (B,K,h,w, resized here to the labels' H,W) averaged over non-ignored
    pixels; 0 (not NaN) when a batch has no valid pixel, e.g. a crop that is all "other"."""
    logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits.float(), labels.long(), ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp_min(1)


class EncoderDecoder(nn.Module):
    """images B,3,H,W (float in [0, 1]) -> logits B,K,H,W; `loss` for training; `predict` for testing.

    test_scale: (long, short) bounds of the keep-ratio resize `predict` applies (mmseg's test
    `img_scale`); None predicts at the image's own size.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: nn.Module,
        aux_head: nn.Module | None = None,
        *,
        aux_weight: float = 0.4,
        ignore_index: int = IGNORE_INDEX,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        test_scale: tuple[int, int] | None = (2048, 512),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        self.aux_head = aux_head
        self.aux_weight = aux_weight
        self.ignore_index = ignore_index
        self.test_scale = tuple(test_scale) if test_scale is not None else None
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if not images.is_floating_point():
            raise TypeError(f"the segmentor takes float images in [0, 1], got {images.dtype}")
        return (images - self.mean) / self.std

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        features = list(self.backbone(self.normalize(images)))
        if len(features) != 4:
            raise ValueError(f"backbone returned {len(features)} feature maps; segmentation needs 4 (strides 4-32)")
        return features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.decode_head(self.extract_features(images))  # B,K,H/4,W/4
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, settings: EvaluationSettings | None = None) -> torch.Tensor:
        """images B,3,H,W at their own size -> scores B,K,H,W (argmax gives the class)."""
        height, width = images.shape[-2:]
        if self.test_scale is not None:
            size = rescale_size(height, width, self.test_scale)
            # bilinear without antialias, as mmcv's cv2 resize
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        scores = predict_with_settings(self, images, settings or EvaluationSettings())
        return F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """labels B,H,W int (ignore_index ignored) -> {"loss", "loss_decode"[, "loss_aux"]}.

        "loss_aux" is reported unweighted; "loss" includes it times `aux_weight`.
        """
        features = self.extract_features(images)
        losses = {"loss_decode": segmentation_loss(self.decode_head(features), labels, ignore_index=self.ignore_index)}
        total = losses["loss_decode"]
        if self.aux_head is not None:
            losses["loss_aux"] = segmentation_loss(self.aux_head(features), labels, ignore_index=self.ignore_index)
            total = total + self.aux_weight * losses["loss_aux"]
        losses["loss"] = total
        return losses


def build_segmentor(
    *,
    decode_head: str,
    backbone: str | nn.Module,
    num_classes: int,
    backbone_kwargs: dict[str, Any] | None = None,
    aux_head: bool = False,
    norm: str | None = None,
    channels: int | None = None,
    fpn_channels: int = 256,
    dropout: float = 0.1,
    aux_in_index: int = 2,
    aux_channels: int = 256,
    aux_weight: float = 0.4,
    ignore_index: int = IGNORE_INDEX,
    test_scale: tuple[int, int] | None = (2048, 512),
) -> EncoderDecoder:
    """Backbone (a module, or a name for `flatten_dense.models.create_backbone`) + head by name.

    `norm` None picks each head's reference norm: GN for "semantic_fpn" (the PVT/Panoptic FPN
    head), BN for "upernet" and the FCN auxiliary head (convert to SyncBN for multi-GPU runs).
    `channels` None picks the reference width: 128 (Semantic FPN branches), 512 (UperNet).
    `fpn_channels` is Semantic FPN's neck width (256 in the reference; smaller for CPU demos).
    `test_scale` is the (long, short) keep-ratio bound test images are resized to (None: no resize).
    """
    if isinstance(backbone, str):
        from flatten_dense.models import create_backbone  # lazy: optional at import time

        backbone = create_backbone(backbone, **(backbone_kwargs or {}))
    elif backbone_kwargs:
        raise ValueError("backbone_kwargs only apply when the backbone is given by name")
    feature_info = getattr(backbone, "feature_info", None)
    if feature_info is None or not hasattr(feature_info, "channels"):
        raise TypeError(f"backbone {type(backbone).__name__} has no feature_info.channels()")
    in_channels = list(feature_info.channels())
    if len(in_channels) != 4:
        raise ValueError(f"segmentation needs 4 backbone levels (out_indices=(0, 1, 2, 3)), got {in_channels}")
    if decode_head == "semantic_fpn":
        head: nn.Module = SemanticFPNHead(
            in_channels,
            num_classes,
            fpn_channels=fpn_channels,
            channels=channels or 128,
            norm=norm or "GN",
            dropout=dropout,
        )
    elif decode_head == "upernet":
        head = UPerHead(in_channels, num_classes, channels=channels or 512, norm=norm or "BN", dropout=dropout)
    else:
        raise ValueError(f"unknown decode_head {decode_head!r}; expected 'semantic_fpn' or 'upernet'")
    aux = None
    if aux_head:
        aux = FCNHead(
            in_channels[aux_in_index],
            num_classes,
            in_index=aux_in_index,
            channels=aux_channels,
            norm=norm or "BN",
            dropout=dropout,
        )
    return EncoderDecoder(backbone, head, aux, aux_weight=aux_weight, ignore_index=ignore_index, test_scale=test_scale)
