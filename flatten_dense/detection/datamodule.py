"""Lightning DataModule for COCO-layout detection data (real COCO or `make_synthetic_coco`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flatten_dense.core.datamodule import DenseDataModule, Split
from flatten_dense.detection.coco import CocoDetection
from flatten_dense.detection.transforms import DetectionTransforms, build_detection_transforms

__all__ = ["CocoDataModule"]

TRAIN_PIPELINES = ("train", "train_multiscale")


class CocoDataModule(DenseDataModule):
    """Train/val/test COCO datasets with v2 transforms, list collation and rank-aware samplers.

    `num_classes`, `category_ids` and `class_names` can be read before `setup()` (a model is
    usually built first): they build the validation dataset once and `setup()` reuses it.
    `with_masks` is set by the run from the detector (Mask R-CNN and Cascade need masks).
    """

    def __init__(
        self,
        *,
        root: str | Path,
        batch_size: int = 2,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        train_pipeline: str = "train",
        train_min_size: int | Sequence[int] = 800,
        train_max_size: int = 1333,
        flip_prob: float = 0.5,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        with_masks: bool = True,
        pin_memory: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            root=root,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size or batch_size,  # None: the training batch size
            num_workers=num_workers,
            pin_memory=pin_memory,
            seed=seed,
        )
        if train_pipeline not in TRAIN_PIPELINES:
            raise ValueError(f"unknown train_pipeline {train_pipeline!r}; choose one of {', '.join(TRAIN_PIPELINES)}")
        # OmegaConf gives ListConfig, users may give range: keep a plain int or list of ints
        sizes = int(train_min_size) if isinstance(train_min_size, int) else [int(s) for s in train_min_size]
        self.splits: dict[Split, str] = {"train": train_split, "val": val_split, "test": test_split}
        self.with_masks = with_masks
        # built now so a bad pipeline setting fails before any data is read
        self.train_transforms: DetectionTransforms = build_detection_transforms(
            train_pipeline, min_size=sizes, max_size=train_max_size, flip_prob=flip_prob
        )
        self.eval_transforms: DetectionTransforms = build_detection_transforms("eval")

    def build_dataset(self, split: Split) -> CocoDetection:
        transforms = self.train_transforms if split == "train" else self.eval_transforms
        dataset = CocoDetection(self.root, self.splits[split], transforms=transforms, with_masks=self.with_masks)
        reference = self.reference_dataset if split != "val" else dataset
        if dataset.category_ids != reference.category_ids:
            raise ValueError(
                f"categories differ between {dataset.annotation_file} and {reference.annotation_file}: "
                f"{dataset.category_ids} vs {reference.category_ids}"
            )
        return dataset

    # --- category information (the validation file is the reference: it is what metrics use) ---
    @property
    def reference_dataset(self) -> CocoDetection:
        return self.dataset("val")

    @property
    def num_classes(self) -> int:
        """K: object categories, labels 1..K (a torchvision detector wants K + 1 with background)."""
        return self.reference_dataset.num_classes

    @property
    def category_ids(self) -> list[int]:
        return self.reference_dataset.category_ids

    @property
    def class_names(self) -> list[str]:
        return self.reference_dataset.class_names

    @property
    def label_to_category_id(self) -> dict[int, int]:
        return self.reference_dataset.label_to_category_id
