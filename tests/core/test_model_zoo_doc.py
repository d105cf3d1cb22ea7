"""docs/model_zoo.md has a row for every config in configs/ and every registered model, and no
row for anything that does not exist (so the table stays complete as configs and models come)."""

from __future__ import annotations

import re
from pathlib import Path

import flatten_dense as fd

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "docs" / "model_zoo.md"


def rows(text: str) -> set[str]:
    """The first column of every table row: | `name` | ..."""
    return set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.MULTILINE))


def zoo_names() -> set[str]:
    configs = {path.stem for path in (ROOT / "configs").rglob("*.yaml") if "_base_" not in path.parts}
    return configs | set(fd.list_models())


def test_every_config_and_model_has_a_row() -> None:
    missing = sorted(zoo_names() - rows(ZOO.read_text()))
    assert not missing, f"configs or models without a row in {ZOO.name}: {missing}"


def test_every_row_names_a_config_or_model() -> None:
    stale = sorted(rows(ZOO.read_text()) - zoo_names())
    assert not stale, f"{ZOO.name} has rows for configs or models that do not exist: {stale}"


def test_a_missing_row_fails_the_check() -> None:
    text = ZOO.read_text()
    for name in ("upernet_flatten_swin_t_ade20k_160k", "flatten_cswin_b_384"):
        assert name in zoo_names() - rows(text.replace(f"| `{name}` |", f"| {name} |"))


def test_the_paper_numbers_of_the_reproduced_rows() -> None:
    """The paper's box / mask AP and mIoU sit in the rows of the configs that reproduce them."""
    text = ZOO.read_text()
    expected = {
        "mask_rcnn_flatten_pvt_t_fpn_1x_coco": "38.2 / 37.0",
        "mask_rcnn_flatten_swin_t_fpn_3x_coco": "46.5 / 42.1",
        "cascade_mask_rcnn_flatten_swin_s_fpn_3x_coco": "52.2 / 45.4",
        "upernet_flatten_swin_t_ade20k_160k": "44.82 / 57.01",
        "flatten_swin_b_384": "85.0",
    }
    for name, figures in expected.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {figures}" in row, row
