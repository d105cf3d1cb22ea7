"""Semantic FPN (Kirillov et al., as used by PVT for ADE20K): an FPN neck plus mmseg's FPNHead.

FPN (`heads/fpn.py`): 1x1 lateral convs to `fpn_channels`, nearest top-down addition, 3x3 output convs.
Head: per level, (conv3x3-norm-ReLU + 2x bilinear upsample) repeated until stride 4, summed,
then dropout and a 1x1 classifier. Logits come out at the stride of the first level (4).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flatten_dense.segmentation.heads.conv_module import ConvModule, SegClassifier
from flatten_dense.segmentation.heads.fpn import FPN

__all__ = ["SemanticFPNHead"]


class SemanticFPNHead(nn.Module):
    """features (strides 4, 8, 16, 32) -> logits B x num_classes x H/4 x W/4."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        fpn_channels: int = 256,
        channels: int = 128,
        feature_strides: Sequence[int] = (4, 8, 16, 32),
        norm: str | None = "GN",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(feature_strides):
            raise ValueError(f"{len(in_channels)} input levels but {len(feature_strides)} strides")
        self.fpn = FPN(in_channels, fpn_channels)
        self.scale_heads = nn.ModuleList()
        for stride in feature_strides:
            num_ups = int(round(math.log2(stride / feature_strides[0])))
            layers: list[nn.Module] = []
            for k in range(max(1, num_ups)):
                layers.append(ConvModule(fpn_channels if k == 0 else channels, channels, 3, padding=1, norm=norm))
                if num_ups > 0:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.classifier = SegClassifier(channels, num_classes, dropout=dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        fpn_outs = self.fpn(features)
        out = self.scale_heads[0](fpn_outs[0])  # B, channels, H/4, W/4
        for head, x in zip(self.scale_heads[1:], fpn_outs[1:]):
            out = out + F.interpolate(head(x), size=out.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(out)
