"""COCO instance detection/segmentation dataset returning torchvision v2 `tv_tensors`.

Why our own class rather than `torchvision.datasets.CocoDetection` + `wrap_dataset_for_transforms_v2`:
we need contiguous labels 1..K for non-contiguous category ids (and the way back for reports),
crowd annotations kept for evaluation, degenerate boxes dropped once with a log line, and errors
that name the broken file instead of a traceback from deep inside PIL or the COCO mask code.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO
from faster_coco_eval.core import mask as mask_utils
from torch.utils.data import Dataset
from torchvision import tv_tensors

from flatten_dense.core.image_io import read_rgb_image

__all__ = ["CocoDetection", "annotation_path", "image_dir", "segmentation_problem"]

logger = logging.getLogger(__name__)

Target = dict[str, Any]
NUMBER_TYPES = {int, float}  # what JSON numbers parse to
Transforms = Callable[[tv_tensors.Image, Target], tuple[Any, Target]]


def annotation_path(root: str | Path, split: str) -> Path:
    """`root/annotations/instances_{split}2017.json` (the standard COCO layout)."""
    return Path(root) / "annotations" / f"instances_{split}2017.json"


def image_dir(root: str | Path, split: str) -> Path:
    """`root/{split}2017/`."""
    return Path(root) / f"{split}2017"


COCO_LISTS = ("images", "annotations", "categories")


def _read_json(path: Path, lists: tuple[str, ...] = COCO_LISTS) -> dict[str, Any]:
    """Parse a COCO annotation file holding `lists`; a missing file or bad JSON is one clear error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"COCO annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed COCO annotation file {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"malformed COCO annotation file {path}: top level is not a JSON object")
    for key in lists:
        if not isinstance(data.get(key), list):
            # an image-info file (COCO test-dev's) has no annotations: it serves predictions only
            hint = " (an image-info file: `test --format-only` predicts it)" if key == "annotations" else ""
            raise ValueError(f"malformed COCO annotation file {path}: missing list '{key}'{hint}")
    return data


def _check_entries(data: dict[str, Any], path: Path) -> None:
    """Check the fields we rely on, so a malformed file fails here and not in `__getitem__`."""

    def bad(what: str) -> ValueError:
        return ValueError(f"malformed COCO annotation file {path}: {what}")

    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or "name" not in cat:
            raise bad(f"categories[{i}] needs an integer 'id' and a 'name'")
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not all(k in img for k in ("id", "file_name", "height", "width")):
            raise bad(f"images[{i}] needs 'id', 'file_name', 'height' and 'width'")
    cat_ids = {c["id"] for c in data["categories"]}
    img_ids = {img["id"] for img in data["images"]}
    if len(cat_ids) != len(data["categories"]):
        raise bad("duplicate category ids")
    if len(img_ids) != len(data["images"]):
        raise bad("duplicate image ids")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise bad(f"annotations[{i}] is not an object")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise bad(f"annotation {ann.get('id', f'[{i}]')} needs 'bbox' as [x, y, width, height]")
        if ann.get("image_id") not in img_ids:
            raise bad(f"annotation {ann.get('id', f'[{i}]')} refers to unknown image_id {ann.get('image_id')!r}")
    # unknown category ids are a per-sample problem of the start-up check (detection/data_check.py)


def _load_image(path: Path) -> tv_tensors.Image:
    """Read an image as uint8 RGB CHW; grayscale, palette and RGBA become RGB."""
    if not path.is_file():
        raise FileNotFoundError(f"COCO image file not found: {path}")
    return tv_tensors.Image(read_rgb_image(path))


def segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """What is wrong with an annotation's `segmentation` for an image of height x width, or None."""
    if segmentation is None or (isinstance(segmentation, list) and not segmentation):
        return None  # no mask: the box stands in for it
    if isinstance(segmentation, list):
        for k, polygon in enumerate(segmentation):
            if not isinstance(polygon, list) or not set(map(type, polygon)) <= NUMBER_TYPES:
                return f"polygon {k} is not a list of numbers"
            if len(polygon) < 6 or len(polygon) % 2:
                return f"polygon {k} has {len(polygon)} numbers; a polygon needs an even count of at least 6 (3 points)"
        return None
    if not isinstance(segmentation, dict) or "counts" not in segmentation:
        return f"segmentation is neither polygons nor an RLE (got {type(segmentation).__name__})"
    size = segmentation.get("size")
    if not isinstance(size, list) or list(size) != [height, width]:
        return f"RLE size {size} is not the image's [{height}, {width}]"
    counts = segmentation["counts"]
    if isinstance(counts, list):  # uncompressed
        if not all(isinstance(c, int) and c >= 0 for c in counts) or sum(counts) != height * width:
            return f"uncompressed RLE counts do not add up to {height} x {width} pixels"
        return None
    if not isinstance(counts, (str, bytes)):
        return f"RLE counts is a {type(counts).__name__}, not a string or a list"
    try:
        rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
        if int(mask_utils.area(rle)) > height * width or mask_utils.decode(rle).shape[:2] != (height, width):
            return "compressed RLE does not decode to the image size"
    except Exception as error:  # the COCO mask code raises bare Exceptions on bad strings
        return f"compressed RLE does not decode ({' '.join(str(error).split())})"
    return None


def _decode_mask(segmentation: Any, bbox: list[float], height: int, width: int) -> np.ndarray:
    """Decode polygons, uncompressed RLE or compressed RLE to an H x W uint8 mask.

    An annotation without a segmentation falls back to its filled box, so masks and boxes keep
    the same count.
    """
    if isinstance(segmentation, list) and len(segmentation) > 0:  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)  # uncompressed RLE
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = segmentation  # compressed RLE (counts as str or bytes)
    else:
        x, y, w, h = bbox
        mask = np.zeros((height, width), dtype=np.uint8)
        mask[int(y) : int(np.ceil(y + h)), int(x) : int(np.ceil(x + w))] = 1
        return mask
    return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


class CocoDetection(Dataset):
    """COCO-format instance dataset: `(image, target)` with tv_tensors ready for v2 transforms.

    target: boxes (BoundingBoxes XYXY, N x 4, clamped to the image), labels (int64 N, 1..K;
    0 is background), masks (Mask uint8 N x H x W, only when `with_masks`), iscrowd (int64 N),
    area (float32 N, the annotation's `area`), image_id (int, the file's id).
    Crowd annotations are kept (training filters them, evaluation needs them); images without
    annotations are kept too. `ground_truth=False` (format-only runs) reads the file's images and
    categories alone, so an image-info file without annotations (COCO test-dev's) serves as well.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        transforms: Transforms | None = None,
        with_masks: bool = True,
        ground_truth: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"COCO root directory not found: {self.root}")
        self.split = split
        self.annotation_file = annotation_path(root, split)
        self.image_dir = image_dir(root, split)
        self.transforms = transforms
        self.with_masks = with_masks
        self.ground_truth = ground_truth

        data = _read_json(self.annotation_file, lists=COCO_LISTS if ground_truth else ("images", "categories"))
        if not ground_truth:
            data = {**data, "annotations": []}  # predictions need none; test-dev's file holds none
        _check_entries(data, self.annotation_file)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image directory not found: {self.image_dir}")
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # the COCO index prints progress
            self.coco.createIndex()

        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_ids: list[int] = [c["id"] for c in categories]
        self.class_names: list[str] = [str(c["name"]) for c in categories]
        self.label_to_category_id: dict[int, int] = {i + 1: c for i, c in enumerate(self.category_ids)}
        self.category_id_to_label: dict[int, int] = {c: i + 1 for i, c in enumerate(self.category_ids)}

        self.ids: list[int] = sorted(self.coco.imgs)
        self._annotations: dict[int, list[dict[str, Any]]] = {}
        dropped = 0
        for image_id in self.ids:
            info = self.coco.imgs[image_id]
            kept = []
            for ann in self.coco.imgToAnns.get(image_id, []):
                box = self._clamped_xyxy(ann["bbox"], info["height"], info["width"])
                if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                    dropped += 1
                    continue
                kept.append(ann)
            self._annotations[image_id] = kept
        if dropped:
            logger.warning(
                "%s: dropped %d annotation(s) with degenerate boxes (width or height < 1 px)",
                self.annotation_file,
                dropped,
            )

    def sample_files(self, index: int) -> tuple[Path]:
        """The file a sample reads (what a skipped sample is named by)."""
        return (self.image_dir / str(self.coco.imgs[self.ids[index]]["file_name"]),)

    def annotations_of(self, image_id: int) -> list[dict[str, Any]]:
        """The annotations this dataset uses for an image (degenerate boxes left out)."""
        return self._annotations[image_id]

    @property
    def num_classes(self) -> int:
        """K, the number of object categories (labels are 1..K)."""
        return len(self.category_ids)

    @staticmethod
    def _clamped_xyxy(bbox: list[float], height: int, width: int) -> list[float]:
        """COCO [x, y, w, h] -> [x1, y1, x2, y2] clamped to the image.

        Clamping here matters: `v2.SanitizeBoundingBoxes` drops any box poking out of the image.
        """
        x, y, w, h = (float(v) for v in bbox)
        x1, x2 = min(max(x, 0.0), width), min(max(x + w, 0.0), width)
        y1, y2 = min(max(y, 0.0), height), min(max(y + h, 0.0), height)
        return [x1, y1, x2, y2]

    def labels_to_category_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """Contiguous labels (1..K) -> the file's category ids, e.g. for COCO-format results."""
        lookup = torch.tensor([0, *self.category_ids], dtype=torch.int64, device=labels.device)
        return lookup[labels.long()]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info["file_name"]
        image = _load_image(path)
        height, width = image.shape[-2:]
        if (height, width) != (info["height"], info["width"]):
            raise ValueError(
                f"image {path} is {width}x{height} but {self.annotation_file} says {info['width']}x{info['height']}"
            )
        anns = self._annotations[image_id]
        boxes = [self._clamped_xyxy(a["bbox"], height, width) for a in anns]
        target: Target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),  # N x 4
                format=tv_tensors.BoundingBoxFormat.XYXY,
                canvas_size=(height, width),
            ),
            "labels": torch.tensor([self._label(a, path) for a in anns], dtype=torch.int64),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
            "area": torch.tensor(
                [float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns], dtype=torch.float32
            ),
            "image_id": int(image_id),
        }
        if self.with_masks:
            masks = [self._mask(a, path, height, width) for a in anns]
            stacked = np.stack(masks) if masks else np.zeros((0, height, width), dtype=np.uint8)  # N x H x W
            target["masks"] = tv_tensors.Mask(torch.from_numpy(stacked))
        if self.transforms is not None:
            return self.transforms(image, target)
        return image, target

    def _label(self, ann: dict[str, Any], path: Path) -> int:
        if ann["category_id"] not in self.category_id_to_label:
            raise ValueError(
                f"{self.annotation_file}: annotation {ann.get('id')} of image {path} has unknown "
                f"category_id {ann['category_id']!r}"
            )
        return self.category_id_to_label[ann["category_id"]]

    def _mask(self, ann: dict[str, Any], path: Path, height: int, width: int) -> np.ndarray:
        segmentation = ann.get("segmentation")
        problem = segmentation_problem(segmentation, height, width)
        if problem is not None:
            raise ValueError(f"{self.annotation_file}: annotation {ann.get('id')} of image {path}: {problem}")
        try:
            return _decode_mask(segmentation, ann["bbox"], height, width)
        except Exception as e:  # the COCO mask code raises bare Exceptions ("input type is not supported.")
            raise ValueError(
                f"{self.annotation_file}: cannot decode segmentation of annotation {ann.get('id')} of image {path}: {e}"
            ) from None
