"""Segmentation labels: index images, the ignore value and mmseg's reduce_zero_label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

__all__ = ["IGNORE_INDEX", "read_label", "reduce_zero_label"]

IGNORE_INDEX = 255  # pixels with this label count in no loss and no metric


def read_label(path: Path) -> torch.Tensor:
    """Decode an index PNG (palette or grayscale) to int64 HxW *without* applying the palette."""
    try:
        with PILImage.open(path) as img:
            if img.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L"):
                raise ValueError(f"mode {img.mode!r} is not an index image (expected P or L)")
            array = np.asarray(img).astype(np.int64)
    except Exception as exc:
        raise ValueError(f"cannot read label {path}: {exc}") from exc
    if array.ndim != 2:
        raise ValueError(f"cannot read label {path}: expected a single-channel image, got shape {array.shape}")
    return torch.from_numpy(array)  # H,W


def reduce_zero_label(label: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """mmseg's reduce_zero_label: 0 ("other") -> ignore, k -> k - 1, ignore stays ignore."""
    out = label - 1
    out[(label == 0) | (label == ignore_index)] = ignore_index
    return out
