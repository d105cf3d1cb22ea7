"""Segmentation labels: index images, the ignore value and mmseg's reduce_zero_label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage

__all__ = ["IGNORE_INDEX", "INDEX_MODES", "label_array", "read_label", "reduce_zero_label"]

IGNORE_INDEX = 255  # pixels with this label count in no loss and no metric


INDEX_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "I;16N")


def label_array(path: Path) -> np.ndarray:
    """Decode an index PNG (palette or grayscale) to an int64 H x W array *without* applying the palette.

    ValueError naming the file for a missing, unreadable or non-index image.
    """
    try:
        with PILImage.open(path) as img:
            if img.mode not in INDEX_MODES:
                raise ValueError(f"mode {img.mode!r} is not an index image (expected P or L)")
            array = np.asarray(img).astype(np.int64)
    except Exception as exc:
        raise ValueError(f"cannot read label {path}: {' '.join(str(exc).split())}") from None
    if array.ndim != 2:
        raise ValueError(f"cannot read label {path}: expected a single-channel image, got shape {array.shape}")
    return array


def read_label(path: Path) -> torch.Tensor:
    """`label_array` as an int64 H x W tensor."""
    return torch.from_numpy(label_array(path))  # H,W


def reduce_zero_label(label: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """mmseg's reduce_zero_label: 0 ("other") -> ignore, k -> k - 1, ignore stays ignore."""
    out = label - 1
    out[(label == 0) | (label == ignore_index)] = ignore_index
    return out
