"""Collate functions for variable-size images (module level so spawned workers can pickle them)."""

from __future__ import annotations

from typing import Any

__all__ = ["collate_as_lists"]


def collate_as_lists(batch: list[tuple[Any, ...]]) -> tuple[list[Any], ...]:
    """Turn [(image, target), ...] into ([image, ...], [target, ...]) without stacking.

    Images of a detection or segmentation batch differ in size, so `default_collate` cannot
    stack them; models batch (and pad) them themselves.
    """
    return tuple(list(items) for items in zip(*batch))
