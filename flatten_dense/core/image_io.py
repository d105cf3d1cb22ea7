"""Reading and writing images with one clear error naming a missing or unreadable file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "read_rgb_image", "write_png"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_rgb_image(path: str | Path) -> torch.Tensor:
    """Decode any PIL-readable image (RGB, grayscale, RGBA, palette) to uint8 RGB (3, H, W)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()  # full decode: truncated files fail here
    except Exception as error:  # PIL raises many types for truncated or non-image files
        raise ValueError(f"cannot read image {path}: {error}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def write_png(image: torch.Tensor, path: str | Path) -> Path:
    """uint8 (3, H, W) -> a PNG file at `path` (its folder must exist); returns the path."""
    path = Path(path)
    array = image.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(array).save(path, format="PNG")
    return path
