"""Where the shipped configs are, in a checkout and in an installed wheel alike.

The repository keeps `configs/` at its top; `flatten_dense/configs` links to it and a wheel
carries a copy, so a config may be named by path or by its packaged name.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CONFIGS", "resolve_config"]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def resolve_config(config: str | os.PathLike) -> Path:
    """A config file by path, else a packaged config by name (`mask_rcnn_flatten_pvt_t_fpn_1x_coco`,
    `detection/mask_rcnn_flatten_pvt_t_fpn_1x_coco.yaml`); the path as given when neither exists
    (loading it then names the missing file)."""
    path = Path(config)
    if path.is_file():
        return path
    name = path.as_posix().removesuffix(".yaml")
    for candidate in (CONFIGS / f"{name}.yaml", *sorted(CONFIGS.glob(f"*/{name}.yaml"))):
        if candidate.is_file():
            return candidate
    return path
