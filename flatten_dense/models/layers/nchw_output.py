"""Emitting a channels-last stage map as a contiguous NCHW output, with its norm applied on the way.

The stages compute tokens (B, H*W, C), i.e. channels-last maps; detection and segmentation heads get
contiguous NCHW. torch's CPU copy from channels-last to NCHW runs far below memory bandwidth on
large maps (64 x 256 x 256: 10.8 ms). Transposing a few thousand tokens at a time, while they are
still in cache from the norm, is 3-4x faster (2.7 ms) and never holds a full-size normed copy.
On CPU without torch.compile that is how every inference output is made; in CPU training without
autocast the fast layers (`fast=True`) do the same through the autograd function of
`autograd/layer_norm_nchw.py`, which walks the same blocks in backward. Everything else (GPUs,
compile, the plain layers in training, autocast in training) takes the plain path (one norm, one
copy): the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .autograd import layer_norm_to_nchw
from .autograd.layer_norm_nchw import token_blocks

__all__ = ["to_nchw"]


def _cpu_eager(feature: Tensor) -> bool:
    return feature.device.type == "cpu" and not torch.compiler.is_compiling()  # inductor writes its own


def _blocked_training(feature: Tensor, norm: nn.Module | None) -> bool:
    """Recording autograd on CPU without autocast, with a LayerNorm of the map's dtype to apply."""
    if type(norm) is not nn.LayerNorm or (norm.weight is not None and norm.weight.dtype != feature.dtype):
        return False  # a float32 norm on a half-precision map: the plain path's type promotion
    return torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu") and _cpu_eager(feature)


def to_nchw(feature: Tensor, norm: nn.Module | None = None, *, fast: bool = False) -> Tensor:
    """(B, C, H, W) map (any memory format) -> contiguous (B, C, H, W), `norm` applied over C first.

    `fast` (the model's fast layers) also blocks the norm and transpose in CPU training."""
    batch, channels, height, width = feature.shape
    tokens = feature.permute(0, 2, 3, 1)  # B H W C: a view of the tokens when `feature` is channels-last
    if fast and tokens.is_contiguous() and _blocked_training(feature, norm):
        return layer_norm_to_nchw(tokens.reshape(batch, height * width, channels), norm, (height, width))
    blocked = _cpu_eager(feature) and not (torch.is_grad_enabled() and feature.requires_grad)
    if not blocked or not tokens.is_contiguous():
        if norm is not None:
            return norm(tokens).permute(0, 3, 1, 2).contiguous()
        return feature.contiguous()
    tokens = tokens.reshape(batch, height * width, channels)  # B HW C
    out = feature.new_empty(batch, channels, height * width)  # B C HW
    for block in token_blocks(height * width, channels):
        chunk = tokens[:, block]
        out[:, :, block] = (chunk if norm is None else norm(chunk)).transpose(1, 2)
    return out.view(batch, channels, height, width)
