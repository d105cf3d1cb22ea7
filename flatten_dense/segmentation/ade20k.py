"""ADE20K (ADEChallengeData2016 layout) as a map-style dataset of (image, {mask, image_id}).

Layout under `root`: `images/{split}/*.jpg|png` and `annotations/{split}/*.png`, matched by
file stem. Labels are index PNGs (palette "P" or grayscale "L"); 0 means "other" and is ignored
when `reduce_zero_label` is on (mmseg's convention for ADE20K), which also shifts 1..150 to 0..149.
With `labels=False` (a test-server split, e.g. ADE20K's release_test) only the images are read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from flatten_dense.core.image_io import read_rgb_image
from flatten_dense.segmentation.labels import IGNORE_INDEX, read_label, reduce_zero_label

__all__ = ["ADE20K_CLASSES", "ADE20KDataset", "read_class_names"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CLASS_NAMES_FILE = "class_names.txt"

# mmseg's ADE20KDataset.CLASSES (label i after reduce_zero_label is ADE20K_CLASSES[i]).
# fmt: off
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed ", "windowpane",
    "grass", "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant",
    "curtain", "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror",
    "rug", "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
# fmt: on
ADE20K_CLASSES = tuple(name.strip() for name in ADE20K_CLASSES)
assert len(ADE20K_CLASSES) == 150


def read_class_names(root: Path) -> tuple[str, ...]:
    """Class names from `root/class_names.txt` (one a line) when present, else ADE20K's 150."""
    path = Path(root) / CLASS_NAMES_FILE
    if path.is_file():
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        if not names:
            raise ValueError(f"{path} lists no class names")
        return names
    return ADE20K_CLASSES


class ADE20KDataset(Dataset):
    """ADE20K split: returns (tv_tensors.Image uint8 3xHxW, {"mask": Mask int64 HxW, "image_id": stem}).

    `transforms(image, target) -> (image, target)` is applied last (torchvision v2 style).
    `num_classes` (default: the class names' count) bounds the label values (255 is ignored).
    `labels=False`: images only, no `annotations/{split}` folder needed; targets hold no "mask".
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        *,
        transforms: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        reduce_zero_label: bool = True,
        num_classes: int | None = None,
        labels: bool = True,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        self.reduce_zero_label = reduce_zero_label
        self.labels = labels
        image_dir = self.root / "images" / split
        label_dir = self.root / "annotations" / split
        for directory in (image_dir, label_dir) if labels else (image_dir,):
            if not directory.is_dir():
                raise FileNotFoundError(f"ADE20K directory not found: {directory}")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise FileNotFoundError(f"no .jpg/.png images in {image_dir}")
        stems = [p.stem for p in images]
        if len(set(stems)) != len(stems):
            dup = next(s for s in stems if stems.count(s) > 1)
            raise ValueError(f"two images in {image_dir} share the stem {dup!r}")
        self.samples: list[tuple[Path, Path | None]] = [(p, None) for p in images]
        if labels:
            found = {p.stem: p for p in label_dir.iterdir() if p.suffix.lower() == ".png"}
            missing = [p for p in images if p.stem not in found]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} image(s) in {image_dir} have no label in {label_dir}, "
                    f"e.g. {missing[0].name} (expected {missing[0].stem}.png)"
                )
            self.samples = [(p, found[p.stem]) for p in images]
        self.class_names = read_class_names(self.root)
        self.num_classes = len(self.class_names) if num_classes is None else num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def sample_files(self, index: int) -> tuple[Path, ...]:
        """The files a sample reads, image first (what a skipped sample is named by)."""
        image_path, label_path = self.samples[index]
        return (image_path,) if label_path is None else (image_path, label_path)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict[str, Any]]:
        image_path, label_path = self.samples[index]
        image = tv_tensors.Image(read_rgb_image(image_path))  # 3,H,W uint8
        target: dict[str, Any] = {"image_id": image_path.stem}
        if label_path is not None:
            target["mask"] = tv_tensors.Mask(self._read_label(label_path, image_path, tuple(image.shape[-2:])))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def _read_label(self, label_path: Path, image_path: Path, size: tuple[int, int]) -> torch.Tensor:
        """The label of an image of `size` (H, W) as class indices (reduced when `reduce_zero_label`)."""
        label = read_label(label_path)  # H,W int64
        if size != tuple(label.shape):
            raise ValueError(
                f"size mismatch: image {image_path} is {size} (HxW) but label {label_path} is {tuple(label.shape)}"
            )
        highest = self.num_classes if self.reduce_zero_label else self.num_classes - 1
        if bool(((label > highest) & (label != IGNORE_INDEX)).any()):  # would be a device-side assert on a GPU
            raise ValueError(
                f"label {label_path} holds values above {highest} (other than {IGNORE_INDEX}) "
                f"for {self.num_classes} classes, e.g. {int(label[(label > highest) & (label != IGNORE_INDEX)][0])}"
            )
        return reduce_zero_label(label) if self.reduce_zero_label else label
