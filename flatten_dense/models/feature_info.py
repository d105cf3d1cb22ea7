"""What a backbone's outputs are: channels and stride of each returned map (timm style)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["FeatureInfo"]


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and reductions of the maps a backbone returns, in output order.

    Also a sequence of timm's feature dicts (`info[k]`, iteration, `to_timm()`).
    """

    stage_channels: tuple[int, ...]
    stage_reductions: tuple[int, ...]
    out_indices: tuple[int, ...]

    def channels(self) -> list[int]:
        return [self.stage_channels[i] for i in self.out_indices]

    def reduction(self) -> list[int]:
        return [self.stage_reductions[i] for i in self.out_indices]

    def __len__(self) -> int:
        return len(self.out_indices)

    def __getitem__(self, position: int) -> dict[str, int | str]:
        """timm's format: the `position`-th output as {num_chs, reduction, module, index}."""
        index = self.out_indices[position]
        return {
            "num_chs": self.stage_channels[index],
            "reduction": self.stage_reductions[index],
            "module": f"stages.{index}",
            "index": index,
        }

    def __iter__(self) -> Iterator[dict[str, int | str]]:
        return (self[position] for position in range(len(self)))

    def to_timm(self) -> list[dict[str, int | str]]:
        """timm's list of dicts (`timm.models.FeatureInfo` accepts it), one per output."""
        return list(self)
