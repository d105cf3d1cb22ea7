"""FCN auxiliary head (mmseg's FCNHead with num_convs=1, concat_input=False) on one level.

It adds a deep-supervision loss on stage 3 during training (weighted 0.4 by the segmentor) and
is unused at inference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from flatten_dense.segmentation.heads.conv_module import ConvModule, SegClassifier

__all__ = ["FCNHead"]


class FCNHead(nn.Module):
    """features[in_index] (B x in_channels x h x w) -> logits B x num_classes x h x w."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        in_index: int = 2,
        channels: int = 256,
        num_convs: int = 1,
        norm: str | None = "BN",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_index = in_index
        self.convs = nn.Sequential(
            *(
                ConvModule(in_channels if i == 0 else channels, channels, 3, padding=1, norm=norm)
                for i in range(num_convs)
            )
        )
        self.classifier = SegClassifier(channels, num_classes, dropout=dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.classifier(self.convs(features[self.in_index]))
