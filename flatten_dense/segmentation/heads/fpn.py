"""The feature pyramid both segmentation heads use (mmseg's FPN neck and UperNet's fusion).

laterals: 1x1 ConvModules to `channels`; top-down: each coarser lateral is upsampled to the next
finer one's size and added; outputs: a 3x3 ConvModule per level. The two heads differ only in
their settings:
- Semantic FPN (mmseg's `FPN` neck): plain convs with biases (no norm, no ReLU), xavier init,
  nearest upsampling.
- UperNet: conv-BN-ReLU, bilinear upsampling, and its top level comes from the pyramid pooling
  module already at `channels` wide, used as lateral and output as it is (`top_is_fused`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flatten_dense.segmentation.heads.conv_module import ConvModule

__all__ = ["FPN"]


class FPN(nn.Module):
    """features (finest first) -> one `channels`-wide map per level, at the same sizes."""

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        *,
        norm: str | None = None,
        act: bool = False,
        upsample_mode: str = "nearest",
        top_is_fused: bool = False,
    ) -> None:
        super().__init__()
        convolved = in_channels[:-1] if top_is_fused else in_channels
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1, norm=norm, act=act) for c in convolved)
        self.fpn_convs = nn.ModuleList(
            ConvModule(channels, channels, 3, padding=1, norm=norm, act=act) for _ in convolved
        )
        self.upsample_mode = upsample_mode
        self.top_is_fused = top_is_fused
        if norm is None:  # mmseg's FPN neck initialises its plain convs with xavier
            for module in self.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)

    def _upsample(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # size=, not scale_factor=2: odd input sizes give stride-s maps that are not exact halves
        align = False if self.upsample_mode == "bilinear" else None
        return F.interpolate(x, size=like.shape[-2:], mode=self.upsample_mode, align_corners=align)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        convolved = features[:-1] if self.top_is_fused else features
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, convolved)]
        if self.top_is_fused:
            laterals.append(features[-1])
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + self._upsample(laterals[i], laterals[i - 1])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)]
        if self.top_is_fused:
            outs.append(laterals[-1])
        return outs
