"""What a backbone's outputs are: channels and stride of each returned map (timm style)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FeatureInfo"]


@dataclass(frozen=True)
class FeatureInfo:
    """Channels and reductions of the maps a backbone returns, in output order."""

    stage_channels: tuple[int, ...]
    stage_reductions: tuple[int, ...]
    out_indices: tuple[int, ...]

    def channels(self) -> list[int]:
        return [self.stage_channels[i] for i in self.out_indices]

    def reduction(self) -> list[int]:
        return [self.stage_reductions[i] for i in self.out_indices]

    def __len__(self) -> int:
        return len(self.out_indices)
