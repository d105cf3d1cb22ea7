"""The installable package: the wheel carries every config, py.typed and the licence; packaged
configs are found by name, so the commands work outside the repository."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import flatten_dense
from flatten_dense.cli import main
from flatten_dense.core.paths import CONFIGS, resolve_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_configs_typing_marker_and_licence(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*command, str(REPO)], check=True, capture_output=True)
    [wheel] = tmp_path.glob("flatten_dense-*.whl")
    assert wheel.name.startswith(f"flatten_dense-{flatten_dense.__version__}-")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {
        f"flatten_dense/configs/{p.relative_to(REPO / 'configs').as_posix()}" for p in REPO.glob("configs/**/*.yaml")
    }
    assert configs and configs <= names
    assert "flatten_dense/py.typed" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_packaged_configs_are_found_by_name() -> None:
    expected = CONFIGS / "detection" / "mask_rcnn_flatten_pvt_t_fpn_1x_coco.yaml"
    for name in ("mask_rcnn_flatten_pvt_t_fpn_1x_coco", "detection/mask_rcnn_flatten_pvt_t_fpn_1x_coco.yaml"):
        assert resolve_config(name) == expected
    assert resolve_config("no_such_config") == Path("no_such_config")


def test_version_is_reported(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"flatten-dense {flatten_dense.__version__}"
