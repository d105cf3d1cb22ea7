"""Lightning DataModule for COCO-layout detection data (real COCO or `make_synthetic_coco`).

Samplers are built inside the `*_dataloader()` methods from `samplers.py`, which shard by rank
themselves (evaluation never pads), so run the Trainer with `use_distributed_sampler=False`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from flatten_dense.data.coco import CocoDetection
from flatten_dense.data.collate import collate_as_lists
from flatten_dense.data.detection_transforms import DetectionTransforms, build_detection_transforms
from flatten_dense.data.samplers import eval_sampler, train_sampler

__all__ = ["CocoDataModule"]

TRAIN_PIPELINES = ("train", "train_multiscale")


class CocoDataModule(L.LightningDataModule):
    """Train/val/test COCO datasets with v2 transforms, list collation and rank-aware samplers.

    `num_classes`, `category_ids` and `class_names` can be read before `setup()` (a model is
    usually built first): they build the validation dataset once and `setup()` reuses it.
    """

    def __init__(
        self,
        *,
        root: str | Path,
        batch_size: int = 2,
        num_workers: int = 2,
        train_pipeline: str = "train",
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        flip_prob: float = 0.5,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        with_masks: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"COCO data.root directory not found: {self.root}")
        if train_pipeline not in TRAIN_PIPELINES:
            raise ValueError(f"unknown train_pipeline {train_pipeline!r}; choose one of {', '.join(TRAIN_PIPELINES)}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size} and {num_workers}")
        # OmegaConf gives ListConfig, users may give range: keep a plain int or list of ints
        min_size = int(min_size) if isinstance(min_size, int) else [int(s) for s in min_size]
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_split = train_split
        self.val_split = val_split
        self.test_split = test_split
        self.with_masks = with_masks
        self.seed = seed
        # built now so a bad pipeline setting fails before any data is read
        self.train_transforms: DetectionTransforms = build_detection_transforms(
            train_pipeline, min_size=min_size, max_size=max_size, flip_prob=flip_prob
        )
        self.eval_transforms: DetectionTransforms = build_detection_transforms("eval")
        self._datasets: dict[tuple[str, str], CocoDetection] = {}

    def _dataset(self, split: str, kind: str) -> CocoDetection:
        """Build a split's dataset once and cache it (reading a COCO annotation file is slow)."""
        key = (split, kind)
        if key not in self._datasets:
            transforms = self.train_transforms if kind == "train" else self.eval_transforms
            self._datasets[key] = CocoDetection(
                self.root, split, transforms=transforms, with_masks=self.with_masks
            )
        return self._datasets[key]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            train = self._dataset(self.train_split, "train")
            val = self._dataset(self.val_split, "eval")
            if train.category_ids != val.category_ids:
                raise ValueError(
                    f"categories differ between {train.annotation_file} and {val.annotation_file}: "
                    f"{train.category_ids} vs {val.category_ids}"
                )
        if stage == "validate":
            self._dataset(self.val_split, "eval")
        if stage in (None, "test", "predict"):
            self._dataset(self.test_split, "eval")

    # --- category information (the validation file is the reference: it is what metrics use) ---
    @property
    def reference_dataset(self) -> CocoDetection:
        return self._dataset(self.val_split, "eval")

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

    # --- loaders ---
    def _loader(self, dataset: CocoDetection, sampler) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate_as_lists,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.train_split, "train")
        return self._loader(dataset, train_sampler(dataset, seed=self.seed))

    def val_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.val_split, "eval")
        return self._loader(dataset, eval_sampler(dataset))

    def test_dataloader(self) -> DataLoader:
        dataset = self._dataset(self.test_split, "eval")
        return self._loader(dataset, eval_sampler(dataset))

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
