"""Lightning DataModule for COCO-layout detection data (real COCO or `make_synthetic_coco`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flatten_dense.core.data_check import DataReport, apply_report
from flatten_dense.core.datamodule import DenseDataModule, Split
from flatten_dense.detection.coco import CocoDetection
from flatten_dense.detection.data_check import check_coco
from flatten_dense.detection.transforms import DetectionTransforms, build_detection_transforms

__all__ = ["CocoDataModule"]

TRAIN_PIPELINES = ("train", "train_multiscale")


class CocoDataModule(DenseDataModule):
    """Train/val/test COCO datasets with v2 transforms, list collation and rank-aware samplers.

    `num_classes`, `category_ids` and `class_names` can be read before `setup()` (a model is
    usually built first): they build the validation dataset once and `setup()` reuses it.
    `with_masks` is set by the run from the detector (Mask R-CNN and Cascade need masks).
    Each split is checked when first built (`check`, before the first step); `skip_bad_samples`
    leaves bad samples out instead of stopping at the first one.
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
        skip_bad_samples: bool = False,
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
        self.skip_bad_samples = skip_bad_samples
        self._raw: dict[Split, CocoDetection] = {}
        self.reports: dict[Split, DataReport] = {}
        self.check_threads: int | None = None  # None: a few (core.data_check.check_threads)
        # built now so a bad pipeline setting fails before any data is read
        self.train_transforms: DetectionTransforms = build_detection_transforms(
            train_pipeline, min_size=sizes, max_size=train_max_size, flip_prob=flip_prob
        )
        self.eval_transforms: DetectionTransforms = build_detection_transforms("eval")

    def _raw_dataset(self, split: Split) -> CocoDetection:
        """The split's dataset as read from its files, before the check (one per annotation file)."""
        if split not in self._raw:
            same = next((s for s, d in self._raw.items() if self.splits[s] == self.splits[split]), None)
            if same is not None and split != "train" and same != "train":
                self._raw[split] = self._raw[same]  # val and test read the same file
            else:
                transforms = self.train_transforms if split == "train" else self.eval_transforms
                self._raw[split] = CocoDetection(
                    self.root,
                    self.splits[split],
                    transforms=transforms,
                    with_masks=self.with_masks,
                    ground_truth=self.ground_truth,
                )
        return self._raw[split]

    def check(self, split: Split) -> DataReport:
        """Check every sample of a split (files, sizes, categories, masks); cached."""
        if split not in self.reports:
            raw = self._raw_dataset(split)
            same = next((s for s, r in self.reports.items() if self._raw.get(s) is raw), None)
            self.reports[split] = (
                DataReport(**{**vars(self.reports[same]), "split": split})
                if same is not None
                else check_coco(raw, split=split, threads=self.check_threads)
            )
        return self.reports[split]

    def build_dataset(self, split: Split) -> CocoDetection:
        dataset = self._raw_dataset(split)
        reference = self._raw_dataset("val")
        if dataset.category_ids != reference.category_ids:
            raise ValueError(
                f"categories differ between {dataset.annotation_file} and {reference.annotation_file}: "
                f"{dataset.category_ids} vs {reference.category_ids}"
            )
        return apply_report(dataset, self.check(split), skip_bad_samples=self.skip_bad_samples)

    # --- category information (the validation file is the reference: it is what metrics use) ---
    @property
    def reference_dataset(self) -> CocoDetection:
        return self._raw_dataset("val")

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
