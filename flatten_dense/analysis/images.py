"""The picture the analysis looks at: a file, a photograph an installed package ships, or our own.

With no file given, scikit-image's bundled astronaut photograph is used when scikit-image is
installed (the `analysis` extra; the file ships inside the package, nothing is downloaded),
else a picture drawn here (shapes on a gradient), so the analysis always runs offline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from flatten_dense.core.image_io import read_rgb_image

__all__ = ["analysis_image", "drawn_picture"]


def drawn_picture(size: int = 256) -> np.ndarray:
    """A deterministic uint8 RGB picture: a sky-to-ground gradient, a sun, a house and a tree."""
    rows = np.linspace(0.0, 1.0, size)[:, None, None]
    sky = np.array([110, 160, 230]) * (1 - rows) + np.array([200, 220, 240]) * rows
    ground = np.array([90, 150, 70]) * (1 - rows) + np.array([50, 100, 40]) * rows
    pixels = np.where(rows < 0.62, sky, ground) * np.ones((1, size, 1))
    image = Image.fromarray(pixels.astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    s = size / 256
    draw.ellipse([190 * s, 20 * s, 235 * s, 65 * s], fill=(250, 210, 60))
    draw.rectangle([40 * s, 110 * s, 130 * s, 185 * s], fill=(200, 80, 60))
    draw.polygon([(30 * s, 112 * s), (85 * s, 70 * s), (140 * s, 112 * s)], fill=(120, 50, 40))
    draw.rectangle([75 * s, 145 * s, 95 * s, 185 * s], fill=(70, 40, 30))
    draw.rectangle([175 * s, 120 * s, 188 * s, 190 * s], fill=(100, 70, 40))
    draw.ellipse([150 * s, 70 * s, 213 * s, 140 * s], fill=(40, 120, 50))
    return np.asarray(image)


def _bundled_photograph() -> tuple[np.ndarray, str] | None:
    try:
        from skimage import data
    except ImportError:
        return None
    return np.asarray(data.astronaut()), "scikit-image astronaut"


def analysis_image(path: str | Path | None = None, *, size: int = 224) -> tuple[Tensor, str]:
    """(float image 3 x size x size in [0, 1], where it came from): centre-cropped square, resized."""
    if path is not None:
        image, source = read_rgb_image(path), str(path)
    else:
        found = _bundled_photograph()
        pixels, source = found if found is not None else (drawn_picture(), "drawn by flatten-dense")
        image = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    image = image.float() / 255.0
    side = min(image.shape[1:])
    top, left = (image.shape[1] - side) // 2, (image.shape[2] - side) // 2
    square = image[:, top : top + side, left : left + side]
    resized = F.interpolate(square[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].clamp(0, 1), source
