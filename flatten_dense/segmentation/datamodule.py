"""Lightning DataModule for ADE20K-layout datasets (real or synthetic).

Batches (images float in [0, 1], as for detection):
- train: `(images B x 3 x h x w, masks int64 B x h x w)`; every crop is padded to `crop_size`,
  so they stack.
- val/test: `([image 3 x H_i x W_i, ...], [{"mask": Mask, "image_id": str}, ...])` at the files'
  own sizes; the segmentor resizes to its test scale and back (`EncoderDecoder.predict`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flatten_dense.core.data_check import DataReport, apply_report
from flatten_dense.core.datamodule import DenseDataModule, Split
from flatten_dense.segmentation.ade20k import ADE20KDataset, read_class_names
from flatten_dense.segmentation.data_check import check_ade20k
from flatten_dense.segmentation.transforms import build_segmentation_transforms

__all__ = ["ADE20KDataModule", "collate_stacked_segmentation"]


def collate_stacked_segmentation(batch: list[tuple[Any, dict[str, Any]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(Image 3xhxw, {"mask": hxw}), ...] -> (B x 3 x h x w float, B x h x w int64) as plain tensors."""
    images = torch.stack([image.as_subclass(torch.Tensor) for image, _ in batch])
    masks = torch.stack([target["mask"].as_subclass(torch.Tensor) for _, target in batch])
    return images, masks


class ADE20KDataModule(DenseDataModule):
    """ADE20K train/val/test loaders with mmseg's training pipeline; all sizes are parameters.

    Each split is checked when first built (`check`, before the first step: images open, labels
    fit them and hold class indices); `skip_bad_samples` leaves bad samples out instead of stopping.
    """

    train_collate = staticmethod(collate_stacked_segmentation)
    # a batch of 1 through BatchNorm on UperNet's 1x1 pooled maps fails: drop a last partial batch
    drop_last_train = True

    def __init__(
        self,
        *,
        root: str | Path,
        batch_size: int = 16,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        train_scale: tuple[int, int] = (2048, 512),
        ratio_range: tuple[float, float] = (0.5, 2.0),
        crop_size: int | tuple[int, int] = (512, 512),
        cat_max_ratio: float = 0.75,
        flip_prob: float = 0.5,
        photometric: bool = True,
        reduce_zero_label: bool = True,
        train_split: str = "training",
        val_split: str = "validation",
        test_split: str = "validation",
        class_names: list[str] | tuple[str, ...] | None = None,
        skip_bad_samples: bool = False,
        pin_memory: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(
            root=root,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            seed=seed,
        )
        self.train_transforms = build_segmentation_transforms(
            "train",
            scale=tuple(train_scale),
            ratio_range=tuple(ratio_range),
            crop_size=crop_size if isinstance(crop_size, int) else tuple(crop_size),
            cat_max_ratio=cat_max_ratio,
            flip_prob=flip_prob,
            photometric=photometric,
        )
        self.eval_transforms = build_segmentation_transforms("eval")
        self.reduce_zero_label = reduce_zero_label
        self.splits: dict[Split, str] = {"train": train_split, "val": val_split, "test": test_split}
        self.class_names: tuple[str, ...] = tuple(class_names) if class_names else read_class_names(self.root)
        self.skip_bad_samples = skip_bad_samples
        self._raw: dict[Split, ADE20KDataset] = {}
        self.reports: dict[Split, DataReport] = {}
        self.check_threads: int | None = None  # None: a few (core.data_check.check_threads)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _raw_dataset(self, split: Split) -> ADE20KDataset:
        """The split's dataset as found on disk, before the check."""
        if split not in self._raw:
            transforms = self.train_transforms if split == "train" else self.eval_transforms
            self._raw[split] = ADE20KDataset(
                self.root,
                self.splits[split],
                transforms=transforms,
                reduce_zero_label=self.reduce_zero_label,
                num_classes=self.num_classes,
                labels=self.ground_truth,
            )
        return self._raw[split]

    def check(self, split: Split) -> DataReport:
        """Check every sample of a split (image headers, label sizes and values); cached, shared by
        splits reading the same folder."""
        if split not in self.reports:
            same = next((s for s in self.reports if s != "train" and self.splits[s] == self.splits[split]), None)
            if same is not None and split != "train":
                self.reports[split] = DataReport(**{**vars(self.reports[same]), "split": split})
            else:
                self.reports[split] = check_ade20k(
                    self._raw_dataset(split), split=split, num_classes=self.num_classes, threads=self.check_threads
                )
        return self.reports[split]

    def build_dataset(self, split: Split) -> ADE20KDataset:
        return apply_report(self._raw_dataset(split), self.check(split), skip_bad_samples=self.skip_bad_samples)
