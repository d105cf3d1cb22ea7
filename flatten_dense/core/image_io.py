"""Reading and writing images with one clear error naming a missing or unreadable file.

Every PIL mode becomes uint8 RGB by scaling, never by clipping: 16-bit images ("I;16*", and
"I" holding 16-bit values) are divided by 257, float images ("F") in [0, 1] are multiplied by
255; a mode or value range with no clear 8-bit meaning is refused in one line naming the file.
`image_header` reads only the header (size and mode), for the start-up data checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["IMAGE_SUFFIXES", "image_header", "read_rgb_image", "to_rgb_array", "write_png"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# modes PIL converts to RGB without losing range (8 bits a channel, palettes, CMYK, YCbCr, ...)
EIGHT_BIT_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV", "La")
READABLE_MODES = (*EIGHT_BIT_MODES, *SIXTEEN_BIT_MODES, "I", "F")


def image_header(path: str | Path) -> tuple[int, int, str]:
    """(width, height, mode) from the file's header alone; ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            width, height, mode = img.width, img.height, img.mode
    except Exception as error:  # PIL raises many types for non-image files
        raise ValueError(f"cannot read image {path}: {' '.join(str(error).split())}") from None
    if mode not in READABLE_MODES:
        raise ValueError(f"cannot read image {path}: PIL mode {mode!r} has no RGB meaning here")
    return width, height, mode


def to_rgb_array(img: Image.Image, path: str | Path) -> np.ndarray:
    """A decoded PIL image -> uint8 H x W x 3, scaling 16-bit and float images to 0..255."""
    mode = img.mode
    if mode in EIGHT_BIT_MODES:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    values = np.asarray(img)
    if mode in SIXTEEN_BIT_MODES or (mode == "I" and values.min(initial=0) >= 0 and values.max(initial=0) <= 65535):
        gray = (values.astype(np.uint32) + 128) // 257  # 65535 -> 255, rounded
    elif mode == "F" and np.isfinite(values).all() and values.min(initial=0) >= 0 and values.max(initial=0) <= 1:
        gray = np.rint(values * 255.0)
    else:
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        raise ValueError(
            f"cannot read image {path}: PIL mode {mode!r} with values {low:g}..{high:g} has no 8-bit meaning "
            "(16-bit integers and floats in [0, 1] are scaled)"
        )
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)


def read_rgb_image(path: str | Path) -> torch.Tensor:
    """Decode any PIL-readable image (RGB, grayscale, RGBA, palette, 16-bit, float) to uint8 RGB (3, H, W)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # full decode: truncated files fail here
            array = to_rgb_array(img, path).copy()
    except ValueError as error:
        if str(error).startswith("cannot read image"):
            raise
        raise ValueError(f"cannot read image {path}: {' '.join(str(error).split())}") from None
    except Exception as error:  # PIL raises many types for truncated or non-image files
        raise ValueError(f"cannot read image {path}: {' '.join(str(error).split())}") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def write_png(image: torch.Tensor, path: str | Path) -> Path:
    """uint8 (3, H, W) -> a PNG file at `path` (its folder must exist); returns the path."""
    path = Path(path)
    array = image.detach().cpu().permute(1, 2, 0).contiguous().numpy()
    Image.fromarray(array).save(path, format="PNG")
    return path
