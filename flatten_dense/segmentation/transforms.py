"""mmseg's ADE20K train/test pipelines as torchvision-v2-style callables on (image, target).

Every transform takes and returns `(tv_tensors.Image uint8 3xHxW, {"mask": Mask HxW, ...})`, so
they compose with `torchvision.transforms.v2.Compose` and v2's own transforms (used for the flip).
The steps reimplemented here are those whose mmseg semantics torchvision does not have:
keep-ratio rescale to (long, short) bounds, the cat_max_ratio crop, mmseg's photometric
distortion (contrast is a plain multiply, saturation scales HSV's S), and bottom-right padding
with a separate label fill. Normalisation and the test-time resize are left to the segmentor.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from flatten_dense.segmentation.labels import IGNORE_INDEX

__all__ = [
    "PadToSize",
    "PhotoMetricDistortion",
    "RandomCropCatMax",
    "RandomRescale",
    "build_segmentation_transforms",
    "rescale_size",
]

Target = dict[str, Any]


def _pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """mmcv.imrescale's output (h, w): largest keep-ratio size with long <= max(scale), short <= min(scale)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # cv2 bilinear (mmcv's backend) does not antialias; match it.
    return F.resize(image, list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=False)


class RandomRescale:
    """mmseg Resize(img_scale, ratio_range, keep_ratio=True): scale * U(ratio_range), then rescale.

    Image bilinear, label nearest, both to the same size.
    """

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float]) -> None:
        self.scale = _pair(scale)
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))

    def __call__(self, image: tv_tensors.Image, target: Target) -> tuple[tv_tensors.Image, Target]:
        low, high = self.ratio_range
        ratio = low + float(torch.rand(())) * (high - low)
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        size = rescale_size(image.shape[-2], image.shape[-1], scale)
        target = dict(target, mask=F.resize(target["mask"], list(size)))  # Mask -> nearest
        return _resize_image(image, size), target


class RandomCropCatMax:
    """mmseg RandomCrop: a random `crop_size` (h, w) window whose most frequent class covers
    less than `cat_max_ratio` of the non-ignored pixels; up to 10 retries, then the last try is kept.

    An image smaller than the crop is cropped to its own size on that side (PadToSize pads it).
    """

    def __init__(
        self, crop_size: tuple[int, int], *, cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX
    ) -> None:
        self.crop_size = _pair(crop_size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _random_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a window clipped to the image."""
        crop_h, crop_w = self.crop_size
        top = int(torch.randint(max(height - crop_h, 0) + 1, ()))
        left = int(torch.randint(max(width - crop_w, 0) + 1, ()))
        return top, left, min(crop_h, height - top), min(crop_w, width - left)

    def _acceptable(self, mask: torch.Tensor, box: tuple[int, int, int, int]) -> bool:
        top, left, h, w = box
        window = mask[top : top + h, left : left + w]
        counts = torch.bincount(window[window != self.ignore_index].flatten())
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def __call__(self, image: tv_tensors.Image, target: Target) -> tuple[tv_tensors.Image, Target]:
        height, width = image.shape[-2:]
        mask = target["mask"]
        box = self._random_box(height, width)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                if self._acceptable(mask.as_subclass(torch.Tensor), box):
                    break
                box = self._random_box(height, width)
        top, left, h, w = box
        target = dict(target, mask=F.crop(mask, top, left, h, w))
        return F.crop(image, top, left, h, w), target


class PhotoMetricDistortion:
    """mmseg PhotoMetricDistortion on uint8 RGB: each step applied with probability 0.5.

    brightness: + U(-delta, delta); contrast: * U(range) (before or after the colour steps, 50/50);
    saturation: HSV S * U(range); hue: H + randint(-hue_delta, hue_delta) in OpenCV's 0..180 units.
    Values are clipped and truncated to uint8 after every step, as mmseg's `convert` does.
    """

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    @staticmethod
    def _coin() -> bool:
        return bool(torch.randint(2, ()))

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return low + float(torch.rand(())) * (high - low)

    def __call__(self, image: tv_tensors.Image, target: Target) -> tuple[tv_tensors.Image, Target]:
        img = image.as_subclass(torch.Tensor).float()  # 3,H,W in [0, 255]
        if self._coin():  # brightness
            img = (img + self._uniform(-self.brightness_delta, self.brightness_delta)).clamp(0, 255).floor()
        contrast_first = self._coin()
        if contrast_first:
            img = self._contrast(img)
        if self._coin():  # saturation
            h, s, v = _rgb_to_hsv(img)
            s = (s * self._uniform(*self.saturation_range)).clamp(0, 1)
            img = _hsv_to_rgb(h, s, v).clamp(0, 255).floor()
        if self._coin():  # hue
            h, s, v = _rgb_to_hsv(img)
            shift = int(torch.randint(-self.hue_delta, self.hue_delta + 1, ())) / 180.0
            img = _hsv_to_rgb(torch.remainder(h + shift, 1.0), s, v).clamp(0, 255).floor()
        if not contrast_first:
            img = self._contrast(img)
        return tv_tensors.wrap(img.to(torch.uint8), like=image), target

    def _contrast(self, img: torch.Tensor) -> torch.Tensor:
        if self._coin():
            img = (img * self._uniform(*self.contrast_range)).clamp(0, 255).floor()
        return img


def _rgb_to_hsv(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """3,H,W RGB -> (hue in [0, 1), saturation in [0, 1], value in the input's range)."""
    r, g, b = img.unbind(0)
    maxc = img.amax(0)
    minc = img.amin(0)
    delta = maxc - minc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = torch.where(delta > 0, delta, torch.ones_like(delta))
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inverse of `_rgb_to_hsv`: H,W channels -> 3,H,W."""
    sector = torch.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = sector.long() % 6
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    # RGB of each of the six hue sectors
    r = torch.stack([v, q, p, p, t, v])
    g = torch.stack([t, v, v, q, p, p])
    b = torch.stack([p, p, t, v, v, q])
    index = sector.unsqueeze(0)
    return torch.cat([c.gather(0, index) for c in (r, g, b)], dim=0)


class PadToSize:
    """Pad bottom/right up to `size` (h, w): image with `fill`, label with `mask_fill` (ignored)."""

    def __init__(self, size: tuple[int, int], *, fill: int = 0, mask_fill: int = IGNORE_INDEX) -> None:
        self.size = _pair(size)
        self.fill = fill
        self.mask_fill = mask_fill

    def __call__(self, image: tv_tensors.Image, target: Target) -> tuple[tv_tensors.Image, Target]:
        pad_h = max(self.size[0] - image.shape[-2], 0)
        pad_w = max(self.size[1] - image.shape[-1], 0)
        if pad_h == 0 and pad_w == 0:
            return image, target
        padding = [0, 0, pad_w, pad_h]  # left, top, right, bottom
        target = dict(target, mask=F.pad(target["mask"], padding, fill=self.mask_fill))
        return F.pad(image, padding, fill=self.fill), target


def build_segmentation_transforms(
    kind: str,
    *,
    scale: tuple[int, int] = (2048, 512),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    crop_size: int | tuple[int, int] = (512, 512),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    ignore_index: int = IGNORE_INDEX,
) -> v2.Compose:
    """mmseg's ADE20K pipeline, ending with images as float in [0, 1].

    "train": rescale, cat-max crop, flip, photometric, pad. "eval": conversion only; images and
    labels keep their size, since the segmentor resizes to its test scale and back.
    `scale` is (long edge, short edge) bounds; `crop_size` is (h, w).
    """
    to_float = v2.ToDtype(torch.float32, scale=True)  # images only: masks keep their dtype
    if kind == "eval":
        return v2.Compose([to_float])
    if kind != "train":
        raise ValueError(f"kind must be 'train' or 'eval', got {kind!r}")
    if not 0 < ratio_range[0] <= ratio_range[1] or not math.isfinite(ratio_range[1]):
        raise ValueError(f"ratio_range must be 0 < low <= high, got {ratio_range}")
    steps: list[Any] = [
        RandomRescale(scale, ratio_range),
        RandomCropCatMax(crop_size, cat_max_ratio=cat_max_ratio, ignore_index=ignore_index),
        v2.RandomHorizontalFlip(flip_prob),
    ]
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps += [PadToSize(crop_size, fill=0, mask_fill=ignore_index), to_float]
    return v2.Compose(steps)
