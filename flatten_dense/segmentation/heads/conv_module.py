"""Blocks every head shares: conv-norm-ReLU (mmcv's ConvModule), the norm factory, the classifier."""

from __future__ import annotations

from torch import nn

__all__ = ["ConvModule", "SegClassifier", "build_norm"]


def build_norm(norm: str | None, channels: int, *, num_groups: int = 32) -> nn.Module:
    """ "BN" -> BatchNorm2d (convert with nn.SyncBatchNorm.convert_sync_batchnorm for DDP),
    "GN" -> GroupNorm(num_groups), None/"none" -> Identity."""
    if norm is None or norm.lower() == "none":
        return nn.Identity()
    if norm.upper() in ("BN", "SYNCBN"):
        return nn.BatchNorm2d(channels)
    if norm.upper() == "GN":
        if channels % num_groups:
            raise ValueError(f"GroupNorm needs channels ({channels}) divisible by num_groups ({num_groups})")
        return nn.GroupNorm(num_groups, channels)
    raise ValueError(f"unknown norm {norm!r}; expected 'BN', 'GN' or None")


class ConvModule(nn.Sequential):
    """conv (no bias when normalised, as mmcv's bias='auto') -> norm -> ReLU (optional)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        padding: int = 0,
        norm: str | None = "BN",
        act: bool = True,
    ) -> None:
        has_norm = norm is not None and norm.lower() != "none"
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=not has_norm),
            build_norm(norm, out_channels),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SegClassifier(nn.Sequential):
    """mmseg's `cls_seg`: Dropout2d then a 1x1 conv to class logits (weights N(0, 0.01), bias 0)."""

    def __init__(self, in_channels: int, num_classes: int, *, dropout: float = 0.1) -> None:
        conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        super().__init__(nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(), conv)
