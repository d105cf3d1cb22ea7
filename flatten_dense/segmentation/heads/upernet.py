"""UperNet decode head (mmseg's UPerHead): PPM on the last level, FPN fusion of all levels.

PPM: adaptive average pools at `pool_scales`, 1x1 ConvModules, upsampled and concatenated with
the input, fused by a 3x3 ConvModule. FPN (`heads/fpn.py`): 1x1 laterals, bilinear top-down addition, 3x3
ConvModules, all levels upsampled to stride 4, concatenated, fused by a 3x3 ConvModule, classified.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flatten_dense.segmentation.heads.conv_module import ConvModule, SegClassifier
from flatten_dense.segmentation.heads.fpn import FPN

__all__ = ["PPM", "UPerHead"]


def _resize(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PPM(nn.Module):
    """Pyramid pooling: one pooled-and-projected map per scale, each upsampled to the input size."""

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int], *, norm: str | None) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvModule(in_channels, channels, 1, norm=norm))
            for scale in pool_scales
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [_resize(stage(x), x.shape[-2:]) for stage in self.stages]


class UPerHead(nn.Module):
    """features (strides 4, 8, 16, 32) -> logits B x num_classes x H/4 x W/4."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        *,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        norm: str | None = "BN",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.ppm = PPM(in_channels[-1], channels, pool_scales, norm=norm)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3, padding=1, norm=norm)
        self.fpn = FPN(in_channels, channels, norm=norm, act=True, upsample_mode="bilinear", top_is_fused=True)
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1, norm=norm)
        self.classifier = SegClassifier(channels, num_classes, dropout=dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        top = features[-1]
        fused_top = self.bottleneck(torch.cat([top, *self.ppm(top)], dim=1))
        outs = self.fpn([*features[:-1], fused_top])
        size = outs[0].shape[-2:]  # stride 4
        fused = self.fpn_bottleneck(torch.cat([outs[0]] + [_resize(x, size) for x in outs[1:]], dim=1))
        return self.classifier(fused)
