"""A tiny synthetic dataset in the ADEChallengeData2016 layout, for demos and tests.

Each class is a textured, coloured shape (ellipse, rectangle or triangle) on a noisy grey
background labelled 0 ("other", ignored after reduce_zero_label). A class is identifiable by both
its colour and its texture, so a small model learns it in minutes on a CPU even under the
training pipeline's hue and saturation jitter, and even on the few grayscale images. The files
mix the formats a real loader meets: JPEG and PNG images, some grayscale, palette and grayscale
label PNGs, and images of different sizes.
"""

from __future__ import annotations

import argparse
import colorsys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from flatten_dense.core.run_logging import progress

__all__ = ["make_synthetic_ade20k", "main"]

NUM_PATTERNS = 5


def _class_colours(num_classes: int) -> np.ndarray:
    """num_classes x 3 RGB, evenly spread in hue; neighbours in hue also differ in value (and in
    texture, see `_make_sample`), so the training pipeline's hue jitter (up to 36 degrees) does not
    merge classes."""
    colours = []
    for k in range(num_classes):
        hue = k / num_classes
        value = 0.95 if k % 2 == 0 else 0.6
        colours.append(colorsys.hsv_to_rgb(hue, 0.85, value))
    return np.asarray(colours, dtype=np.float32) * 255.0


def _pattern(kind: int, height: int, width: int, period: int) -> np.ndarray:
    """H x W modulation in [0, 1]: solid, horizontal/vertical/diagonal stripes or a checkerboard."""
    yy, xx = np.mgrid[0:height, 0:width]
    half = period // 2
    if kind == 0:
        return np.ones((height, width), dtype=np.float32)
    if kind == 1:
        stripes = (yy // half) % 2
    elif kind == 2:
        stripes = (xx // half) % 2
    elif kind == 3:
        stripes = ((yy // half) + (xx // half)) % 2
    else:
        stripes = ((xx + yy) // half) % 2
    return stripes.astype(np.float32)


def _draw_shape(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Boolean H x W mask of one random ellipse, rectangle or triangle, 30-60 % of the short side."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    size = rng.uniform(0.3, 0.6) * min(height, width)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    w, h = size * rng.uniform(0.7, 1.4), size * rng.uniform(0.7, 1.4)
    box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    kind = rng.integers(3)
    if kind == 0:
        draw.ellipse(box, fill=1)
    elif kind == 1:
        draw.rectangle(box, fill=1)
    else:
        draw.polygon([(cx, cy - h / 2), (cx - w / 2, cy + h / 2), (cx + w / 2, cy + h / 2)], fill=1)
    return np.asarray(canvas, dtype=bool)


def _make_sample(
    rng: np.random.Generator, height: int, width: int, colours: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(H x W x 3 uint8 image, H x W uint8 label with 0 = background, k + 1 = class k)."""
    num_classes = len(colours)
    background = rng.normal(110.0, 10.0, size=(1, 1, 3))  # a slightly tinted grey
    image = np.broadcast_to(background, (height, width, 3)).astype(np.float32).copy()
    image += rng.normal(0.0, 12.0, size=(height, width, 1))  # grey noise, no colour cue
    label = np.zeros((height, width), dtype=np.uint8)
    period = max(4, min(height, width) // 8)
    for k in rng.choice(num_classes, size=int(rng.integers(2, 5)), replace=True):
        shape = _draw_shape(rng, height, width)
        modulation = 0.45 + 0.55 * _pattern(int(k) % NUM_PATTERNS, height, width, period)
        texture = colours[k][None, None, :] * modulation[..., None]
        image[shape] = texture[shape]
        label[shape] = k + 1
    image += rng.normal(0.0, 6.0, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def _palette(colours: np.ndarray) -> list[int]:
    """768-entry PIL palette: index 0 black, index k + 1 class k's colour."""
    palette = [0, 0, 0] + [int(c) for colour in colours for c in colour]
    return palette + [0] * (768 - len(palette))


def make_synthetic_ade20k(
    root: str | Path,
    *,
    num_train: int = 64,
    num_val: int = 16,
    image_size: int | tuple[int, int] = 128,
    num_classes: int = 8,
    seed: int = 0,
) -> Path:
    """Write `root/images/{training,validation}`, `root/annotations/...` and `root/class_names.txt`.

    `image_size` is the nominal (h, w); each image's sides vary by +-20 %. Returns `root`.
    """
    if not 1 <= num_classes <= 254:
        raise ValueError(f"num_classes must be in 1..254, got {num_classes}")
    root = Path(root)
    base_h, base_w = (image_size, image_size) if isinstance(image_size, int) else image_size
    colours = _class_colours(num_classes)
    rng = np.random.default_rng(seed)
    for split, count in (("training", num_train), ("validation", num_val)):
        image_dir = root / "images" / split
        label_dir = root / "annotations" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        for i in progress(range(count), desc=f"synthetic {split}"):
            height = int(round(base_h * rng.uniform(0.8, 1.2)))
            width = int(round(base_w * rng.uniform(0.8, 1.2)))
            image, label = _make_sample(rng, height, width, colours)
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{i:08d}"
            pil_image = Image.fromarray(image, "RGB")
            if i % 6 == 5:
                pil_image = pil_image.convert("L")  # a few grayscale images
            if i % 4 == 1:
                pil_image.save(image_dir / f"{stem}.png")
            else:
                pil_image.save(image_dir / f"{stem}.jpg", quality=92)
            pil_label = Image.fromarray(label, "L")
            if i % 3 == 2:  # some palette labels, as annotation tools often write them
                pil_label = pil_label.convert("P")
                pil_label.putpalette(_palette(colours))
            pil_label.save(label_dir / f"{stem}.png")
    names = [f"class_{k}" for k in range(num_classes)]
    (root / "class_names.txt").write_text("\n".join(names) + "\n")
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic ADE20K-layout dataset.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--num-train", type=int, default=64)
    parser.add_argument("--num-val", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--num-classes", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = make_synthetic_ade20k(
        args.out_dir,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        num_classes=args.num_classes,
        seed=args.seed,
    )
    print(f"wrote synthetic ADE20K ({args.num_train} train, {args.num_val} val) to {root}")


if __name__ == "__main__":
    main()
