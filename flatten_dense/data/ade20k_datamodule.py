"""Lightning DataModule for ADE20K-layout datasets (real or synthetic).

Batches:
- train: `(images uint8 B x 3 x h x w, masks int64 B x h x w)`; every crop is padded to
  `crop_size`, so they stack.
- val/test: `([Image 3 x H_i x W_i, ...], [{"mask": Mask, "image_id": str}, ...])`; images are
  resized to `scale` but masks keep their original size (evaluation is at label resolution).
Samplers come from `flatten_dense.data.samplers` and shard by rank themselves, so the Trainer
must run with `use_distributed_sampler=False`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from flatten_dense.data.ade20k import ADE20KDataset, read_class_names
from flatten_dense.data.collate import collate_as_lists
from flatten_dense.data.samplers import eval_sampler, train_sampler
from flatten_dense.data.segmentation_transforms import build_segmentation_transforms

__all__ = ["ADE20KDataModule", "collate_stacked_segmentation"]


def collate_stacked_segmentation(batch: list[tuple[Any, dict[str, Any]]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(Image 3xhxw, {"mask": hxw}), ...] -> (B x 3 x h x w uint8, B x h x w int64) as plain tensors."""
    images = torch.stack([image.as_subclass(torch.Tensor) for image, _ in batch])
    masks = torch.stack([target["mask"].as_subclass(torch.Tensor) for _, target in batch])
    return images, masks


class ADE20KDataModule(L.LightningDataModule):
    """ADE20K train/val/test loaders with mmseg's pipelines; all sizes are parameters."""

    def __init__(
        self,
        *,
        root: str | Path,
        batch_size: int = 16,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        scale: tuple[int, int] = (2048, 512),
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
        pin_memory: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ADE20K root not found: {self.root}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.train_transforms = build_segmentation_transforms(
            "train",
            scale=tuple(scale),
            ratio_range=tuple(ratio_range),
            crop_size=crop_size if isinstance(crop_size, int) else tuple(crop_size),
            cat_max_ratio=cat_max_ratio,
            flip_prob=flip_prob,
            photometric=photometric,
        )
        self.eval_transforms = build_segmentation_transforms("eval", scale=tuple(scale))
        self.reduce_zero_label = reduce_zero_label
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.class_names: tuple[str, ...] = tuple(class_names) if class_names else read_class_names(self.root)
        self.pin_memory = pin_memory
        self.seed = seed
        self.datasets: dict[str, ADE20KDataset] = {}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _dataset(self, stage: str) -> ADE20KDataset:
        """Build the split lazily so that `fit` never touches the test split and vice versa."""
        if stage not in self.datasets:
            transforms = self.train_transforms if stage == "train" else self.eval_transforms
            self.datasets[stage] = ADE20KDataset(
                self.root, self.splits[stage], transforms=transforms, reduce_zero_label=self.reduce_zero_label
            )
        return self.datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        stages = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for name in stages.get(stage or "", ("train", "val", "test")):
            self._dataset(name)

    def _loader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.num_workers > 0,
        }

    def train_dataloader(self) -> DataLoader:
        dataset = self._dataset("train")
        sampler = train_sampler(dataset, seed=self.seed)
        # Dropping the last partial batch avoids a batch of 1 through BatchNorm on 1x1 pooled maps
        # (UperNet's PPM), unless that would leave no batch at all.
        drop_last = len(sampler) >= self.batch_size
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=collate_stacked_segmentation,
            **self._loader_kwargs(),
        )

    def _eval_loader(self, stage: str) -> DataLoader:
        dataset = self._dataset(stage)
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            sampler=eval_sampler(dataset),
            collate_fn=collate_as_lists,
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader("test")
