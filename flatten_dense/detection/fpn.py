"""A FLatten backbone followed by torchvision's FeaturePyramidNetwork.

torchvision's `BackboneWithFPN` expects plain children run in order (IntermediateLayerGetter);
our backbones return their maps themselves, so this small module wires them to the FPN and
exposes `out_channels`, which is all torchvision's detectors ask of a backbone.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock

__all__ = ["BackboneWithFPN"]


class BackboneWithFPN(nn.Module):
    """body(images) -> maps; fpn(maps) -> OrderedDict of `out_channels`-wide maps named '0', '1', ...

    The names match torchvision's defaults (`MultiScaleRoIAlign(['0', '1', '2', '3'])`); an extra
    block (max-pool 'pool', or P6/P7 'p6', 'p7') appends coarser levels.
    """

    def __init__(self, body: nn.Module, *, out_channels: int = 256, extra_blocks: ExtraFPNBlock | None = None) -> None:
        super().__init__()
        self.body = body
        self.fpn = FeaturePyramidNetwork(body.feature_info.channels(), out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:  # (B, 3, H, W) -> levels
        maps = self.body(images)
        return self.fpn(OrderedDict((str(i), feature) for i, feature in enumerate(maps)))
