"""A tiny, real COCO-format dataset of coloured shapes, for demos and tests without downloads.

Each category has one shape and one colour (non-contiguous ids 3, 7, 12, like COCO's gaps), drawn
big (20-60% of the image side) and without overlap on a noisy, textured background, so a small
detector trained for minutes on CPU learns it. It exercises what real COCO has: polygon masks,
compressed RLE masks, crowd regions as uncompressed RLE, images without annotations and
grayscale images.

    python -m flatten_dense.detection.synthetic OUT_DIR [--num-train N] [--num-val N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from faster_coco_eval.core import mask as mask_utils
from PIL import Image, ImageDraw

from flatten_dense.core.run_logging import progress

__all__ = ["CATEGORIES", "make_synthetic_coco", "main"]

# id, name, shape, RGB colour: one shape and one distinct colour per category
CATEGORIES: list[dict[str, Any]] = [
    {"id": 3, "name": "red_circle", "shape": "circle", "color": (220, 40, 40)},
    {"id": 7, "name": "green_square", "shape": "square", "color": (40, 200, 60)},
    {"id": 12, "name": "blue_triangle", "shape": "triangle", "color": (50, 90, 235)},
]

# Which images get special treatment (by index within a split); deterministic and always present.
_EMPTY_EVERY = 12  # index % 12 == 5 -> no annotations
_GRAY_EVERY = 10  # index % 10 == 3 -> saved as mode "L"
_CROWD_EVERY = 8  # index % 8 == 1 -> one crowd region
_RLE_EVERY = 5  # every 5th instance stores its mask as compressed RLE, others as polygons


def _shape_polygon(shape: str, cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape with bounding size ~`size` centred on (cx, cy)."""
    r = size / 2
    if shape == "circle":
        n = 48
        return [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)) for k in range(n)]
    if shape == "square":
        # slightly rotated; scaled so the rotated square still fits in `size`
        s = r / (abs(math.cos(angle)) + abs(math.sin(angle)))
        corners = [(-s, -s), (s, -s), (s, s), (-s, s)]
    else:  # triangle pointing up, base at the bottom
        corners = [(0.0, -r), (r, r), (-r, r)]
        angle = 0.0
    c, si = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * si, cy + x * si + y * c) for x, y in corners]


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Muted gradient + stripes + pixel noise: texture the detector must learn to ignore."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = (rng.uniform(80, 150) + rng.uniform(-15, 15, size=3)).astype(np.float32)  # greyish tint
    gradient = rng.uniform(-30, 30, size=3).astype(np.float32)
    period = rng.uniform(8, 24)
    theta = rng.uniform(0, math.pi)
    stripes = 12 * np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    img = base + gradient * (xx / width)[..., None] + stripes[..., None]  # H x W x 3
    img += rng.normal(0, 12, size=img.shape)
    return img


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO uncompressed RLE: column-major run lengths, starting with a run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def _place(rng: np.random.Generator, taken: list[list[float]], size: float, height: int, width: int, margin: float):
    """A centre for a square box of `size` that keeps `margin` px from other boxes, or None."""
    for _ in range(50):
        cx = rng.uniform(size / 2 + 1, width - size / 2 - 1)
        cy = rng.uniform(size / 2 + 1, height - size / 2 - 1)
        box = [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]
        if all(
            box[2] + margin <= t[0] or t[2] + margin <= box[0] or box[3] + margin <= t[1] or t[3] + margin <= box[1]
            for t in taken
        ):
            return cx, cy, box
    return None


def _make_image(
    rng: np.random.Generator, index: int, image_id: int, next_ann_id: int, height: int, width: int
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Draw one image and return it with its annotations."""
    canvas = _background(rng, height, width)
    anns: list[dict[str, Any]] = []
    taken: list[list[float]] = []
    side = min(height, width)

    def add(mask: np.ndarray, category_id: int, segmentation: Any, iscrowd: int) -> None:
        rle = mask_utils.encode(np.asfortranarray(mask))
        anns.append(
            {
                "id": next_ann_id + len(anns),
                "image_id": image_id,
                "category_id": category_id,
                "segmentation": segmentation,
                "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],  # x, y, w, h of the mask
                "iscrowd": iscrowd,
            }
        )

    def paint(mask: np.ndarray, color: tuple[int, int, int]) -> None:
        shade = np.asarray(color, dtype=np.float32) + rng.normal(0, 8, size=(int(mask.sum()), 3))
        canvas[mask.astype(bool)] = shade

    if index % _EMPTY_EVERY != 5:
        for _ in range(int(rng.integers(1, 5))):  # 1-4 instances
            size = rng.uniform(0.2, 0.6) * side
            spot = _place(rng, taken, size, height, width, margin=4)
            if spot is None:
                continue
            cx, cy, box = spot
            taken.append(box)
            cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            vertices = _shape_polygon(cat["shape"], cx, cy, size, rng.uniform(-0.4, 0.4))
            polygon = [round(v, 2) for xy in vertices for v in xy]  # x1, y1, x2, y2, ...
            # rasterise with COCO's mask code, so pixels, polygon, RLE and area agree exactly
            rle = mask_utils.merge(mask_utils.frPyObjects([polygon], height, width))
            mask = np.ascontiguousarray(mask_utils.decode(rle))  # H x W uint8
            paint(mask, cat["color"])
            if (next_ann_id + len(anns)) % _RLE_EVERY == 0:
                segmentation: Any = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
            else:
                segmentation = [polygon]
            add(mask, cat["id"], segmentation, iscrowd=0)

        if index % _CROWD_EVERY == 1:  # a cluster of small blobs of one category, marked crowd
            region = 0.3 * side
            spot = _place(rng, taken, region, height, width, margin=4)
            if spot is not None:
                cx, cy, box = spot
                taken.append(box)
                cat = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
                layer = Image.new("L", (width, height), 0)
                draw = ImageDraw.Draw(layer)
                for _ in range(int(rng.integers(5, 9))):
                    r = rng.uniform(2, 4)
                    bx, by = rng.uniform(box[0] + r, box[2] - r), rng.uniform(box[1] + r, box[3] - r)
                    draw.ellipse([bx - r, by - r, bx + r, by + r], fill=1)
                mask = np.asarray(layer, dtype=np.uint8)
                paint(mask, cat["color"])
                add(mask, cat["id"], _uncompressed_rle(mask), iscrowd=1)

    pixels = np.clip(canvas, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    if index % _GRAY_EVERY == 3:
        image = image.convert("L")
    return image, anns


def _write_split(
    root: Path, split: str, count: int, *, seed: int, height: int, width: int, first_image_id: int, first_ann_id: int
) -> int:
    """Write `{split}2017/*.png` and its annotation file; return the next free annotation id."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])  # splits independent
    images_dir = root / f"{split}2017"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = first_ann_id
    for index in progress(range(count), desc=f"synthetic {split}2017"):
        image_id = first_image_id + index
        image, anns = _make_image(rng, index, image_id, ann_id, height, width)
        file_name = f"{image_id:012d}.png"
        image.save(images_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        annotations.extend(anns)
        ann_id += len(anns)
    categories = [{"id": c["id"], "name": c["name"], "supercategory": "shape"} for c in CATEGORIES]
    data = {
        "info": {"description": f"flatten-dense synthetic shapes ({split}, seed {seed})"},
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    with open(root / "annotations" / f"instances_{split}2017.json", "w", encoding="utf-8") as f:
        json.dump(data, f)
    return ann_id


def make_synthetic_coco(
    root: str | Path,
    *,
    num_train: int = 96,
    num_val: int = 24,
    image_size: tuple[int, int] = (160, 224),
    seed: int = 0,
) -> Path:
    """Write a COCO-layout dataset under `root` and return `root`.

    image_size is (height, width). The same arguments give the same files, byte for byte.
    """
    height, width = int(image_size[0]), int(image_size[1])
    if height < 32 or width < 32:
        raise ValueError(f"image_size must be at least 32 x 32, got {image_size}")
    root = Path(root)
    size = {"seed": seed, "height": height, "width": width}
    next_ann = _write_split(root, "train", num_train, **size, first_image_id=1, first_ann_id=1)
    # image and annotation ids are unique across splits, as in COCO
    _write_split(root, "val", num_val, **size, first_image_id=num_train + 1, first_ann_id=next_ann)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write a synthetic COCO-format dataset of coloured shapes.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--num-train", type=int, default=96)
    parser.add_argument("--num-val", type=int, default=24)
    parser.add_argument("--height", type=int, default=160)
    parser.add_argument("--width", type=int, default=224)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = make_synthetic_coco(
        args.out_dir,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=(args.height, args.width),
        seed=args.seed,
    )
    print(root)


if __name__ == "__main__":
    main()
