from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import pytest
from omegaconf import OmegaConf

from flatten_dense.core.config import (
    ConfigError,
    check_kwargs,
    default_run_dir,
    kwargs_problems,
    load_config,
    raise_problems,
    resolve_run_dir,
    to_container,
    top_level_problems,
)


def check_trainer_kwargs(kwargs) -> None:
    check_kwargs(L.Trainer, kwargs, where="trainer")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """configs/_base_/{model,schedule}.yaml <- configs/det/base_det.yaml <- configs/det/run.yaml"""
    write(
        tmp_path / "configs/_base_/model.yaml",
        "model:\n  backbone:\n    name: flatten_swin_t\n    drop_path_rate: 0.2\n  num_classes: 80\n",
    )
    write(
        tmp_path / "configs/_base_/schedule.yaml",
        "optimizer:\n  name: adamw\n  lr: 1e-4\n  weight_decay: 0.05\ntrainer:\n  max_epochs: 12\n",
    )
    write(
        tmp_path / "configs/det/base_det.yaml",
        "_base_: [../_base_/model.yaml, ../_base_/schedule.yaml]\nmodel:\n  num_classes: 91\n",
    )
    write(
        tmp_path / "configs/det/run.yaml",
        "_base_: base_det.yaml\ntrainer:\n  max_epochs: 36\nseed: 0\n",
    )
    return tmp_path / "configs"


def test_nested_bases_merge_in_order_file_last(tree: Path) -> None:
    cfg = load_config(tree / "det/run.yaml")
    assert "_base_" not in cfg
    assert cfg.model.backbone.name == "flatten_swin_t"  # from two levels up
    assert cfg.model.num_classes == 91  # middle file beats its base
    assert cfg.trainer.max_epochs == 36  # the file itself beats everything
    assert cfg.optimizer.lr == pytest.approx(1e-4)  # YAML 1e-4 is a float, not a string
    assert cfg.seed == 0


def test_later_base_wins_over_earlier(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "x: 1\ny: 1\n")
    write(tmp_path / "b.yaml", "y: 2\n")
    cfg = load_config(write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\n"))
    assert (cfg.x, cfg.y) == (1, 2)


def test_delete_replaces_inherited_mapping(tree: Path) -> None:
    path = write(
        tree / "det/pvt.yaml",
        "_base_: base_det.yaml\nmodel:\n  backbone:\n    _delete_: true\n    name: flatten_pvt_t\n",
    )
    cfg = load_config(path)
    assert to_container(cfg.model.backbone) == {"name": "flatten_pvt_t"}
    assert cfg.model.num_classes == 91


def test_overrides_win(tree: Path) -> None:
    cfg = load_config(
        tree / "det/run.yaml",
        ["model.backbone.name=flatten_pvt_t", "trainer.max_epochs=2", "optimizer.lr=0.01"],
    )
    assert cfg.model.backbone.name == "flatten_pvt_t"
    assert cfg.trainer.max_epochs == 2
    assert cfg.optimizer.lr == 0.01


def test_unknown_override_key_is_an_error_with_suggestion(tree: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(tree / "det/run.yaml", ["model.backbone.drop_path=0.3"])
    msg = str(e.value)
    assert "model.backbone.drop_path" in msg and "did you mean 'drop_path_rate'" in msg
    assert "run.yaml" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="unknown key 'modle.x'"):
        load_config(tree / "det/run.yaml", ["modle.x=1"])


def cfg_with(cfg, item: str):
    """Set a key directly, bypassing load_config's override check."""
    key, value = item.split("=")
    OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"v={value}"])["v"], force_add=True)
    return cfg


def test_plus_prefix_and_open_sections_add_keys(tree: Path) -> None:
    cfg = load_config(tree / "det/run.yaml", ["+model.backbone.out_indices=[1,2,3]", "trainer.precision=16-mixed"])
    assert list(cfg.model.backbone.out_indices) == [1, 2, 3]
    assert cfg.trainer.precision == "16-mixed"  # trainer is open: checked by check_trainer_kwargs
    with pytest.raises(ConfigError, match="unknown key 'trainer.max_epoch'.*did you mean 'max_epochs'"):
        check_trainer_kwargs(cfg_with(cfg, "trainer.max_epoch=3").trainer)


def test_override_without_equals_is_an_error(tree: Path) -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(tree / "det/run.yaml", ["trainer.max_epochs"])


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    path = write(tmp_path / "child.yaml", "_base_: gone.yaml\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "child.yaml" in str(e.value) and "gone.yaml" in str(e.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.yaml", "model:\n  name: x\n  dims: [1, 2\ntrainer: {}\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:4: YAML syntax error") and "\n" not in msg


def test_base_cycle_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="circular _base_ chain"):
        load_config(tmp_path / "a.yaml")


def test_top_level_must_be_a_mapping_and_base_must_be_paths(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="'_base_' must be a path"):
        load_config(write(tmp_path / "b.yaml", "_base_: {a: 1}\n"))


def test_bad_interpolation_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "i.yaml", "data:\n  n: 3\nmodel:\n  num_classes: ${data.num}\n")
    with pytest.raises(ConfigError, match="model.num_classes"):
        load_config(path)


def test_top_level_problems(tree: Path) -> None:
    sections = ("task", "seed", "model", "data", "optimizer", "trainer")
    assert top_level_problems(load_config(tree / "det/run.yaml"), allowed=sections) == []
    [problem] = top_level_problems({"model": {}, "optimiser": {}}, allowed=sections)
    assert "unknown top-level section 'optimiser'" in problem and "'optimizer'" in problem
    assert top_level_problems({"extra": 1}, allowed=("extra",)) == []


def test_all_problems_of_a_section_are_reported_together() -> None:
    problems = kwargs_problems(builder, {"name": "x", "dept": 3, "drop_path_rate": "high", "wat": 1}, where="model")
    assert len(problems) == 3
    with pytest.raises(ConfigError) as error:
        raise_problems(problems, source="run.yaml")
    message = str(error.value)
    assert "\n" not in message and message.startswith("run.yaml: 3 problems: ")
    assert "'model.dept'" in message and "'model.drop_path_rate' must be float" in message and "'model.wat'" in message


def builder(
    *,
    name: str,
    depth: int = 2,
    drop_path_rate: float = 0.1,
    pretrained: str | None = None,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    shape: tuple[int, int] = (1, 1),
    norm: Literal["bn", "gn"] = "bn",
    flags: dict[str, bool] | None = None,
    use_checkpoint: bool = False,
    head: object = None,
) -> None:
    """A stand-in for a model builder whose keyword arguments come from a config section."""


def test_check_kwargs_accepts_valid_section() -> None:
    section = OmegaConf.create(
        {
            "name": "flatten_swin_t",
            "depth": 4,
            "drop_path_rate": 0,  # int is fine for float
            "pretrained": None,
            "out_indices": [1, 2, 3],  # ListConfig is fine for Sequence
            "shape": [512, 512],
            "norm": "gn",
            "flags": {"a": True},
            "head": {"anything": 1},  # annotations that name other classes are not judged
        }
    )
    check_kwargs(builder, section, where="model.backbone")


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("depth", "4", "must be int, got str"),
        ("depth", 2.5, "must be int, got float"),
        ("depth", True, "must be int, got bool"),
        ("drop_path_rate", "x", "must be float"),
        ("pretrained", 3, "must be str or None"),
        ("out_indices", "0,1", "must be Sequence[int]"),
        ("out_indices", [0, "a"], "must be Sequence[int]"),
        ("shape", [1, 2, 3], "must be tuple[int, int]"),
        ("norm", "ln", "must be one of 'bn', 'gn'"),
        ("flags", {"a": 1}, "must be dict[str, bool]"),
        ("use_checkpoint", "yes", "must be bool"),
    ],
)
def test_check_kwargs_type_errors(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        check_kwargs(builder, {"name": "x", key: value}, where="model.backbone")
    assert f"'model.backbone.{key}' {expected}" in str(e.value)


def test_check_kwargs_unknown_key_suggests() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown key 'model.backbone.drop_path' \(did you mean 'drop_path_rate'\?\)"
    ):
        check_kwargs(builder, {"drop_path": 0.1}, where="model.backbone")
    with pytest.raises(ConfigError, match=r"^cfg.yaml: unknown key 'model.backbone.zzz'$"):
        check_kwargs(builder, {"zzz": 0.1}, where="model.backbone", source="cfg.yaml")


def test_check_kwargs_allows_any_key_with_var_keyword() -> None:
    def fn(*, a: int = 0, **extra: object) -> None: ...

    check_kwargs(fn, {"a": 1, "whatever": "x"}, where="s")
    with pytest.raises(ConfigError, match="'s.a' must be int"):
        check_kwargs(fn, {"a": "1"}, where="s")


def test_check_kwargs_on_class_uses_init() -> None:
    class Head:
        def __init__(self, in_channels: int, *, dropout: float = 0.1) -> None: ...

    check_kwargs(Head, {"in_channels": 3, "dropout": 0.0}, where="model.head")
    with pytest.raises(ConfigError, match="did you mean 'in_channels'"):
        check_kwargs(Head, {"in_channel": 3}, where="model.head")


def test_check_trainer_kwargs() -> None:
    check_trainer_kwargs(
        OmegaConf.create(
            {
                "max_epochs": 12,
                "precision": "16-mixed",
                "devices": [0, 1],
                "accelerator": "cpu",
                "gradient_clip_val": 1,
                "limit_val_batches": 0.5,
                "default_root_dir": "runs/x",
                "logger": False,
            }
        )
    )
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.max_epoch' \(did you mean 'max_epochs'\?\)"):
        check_trainer_kwargs({"max_epoch": 12})
    with pytest.raises(ConfigError, match="'trainer.max_epochs' must be int or None, got str"):
        check_trainer_kwargs({"max_epochs": "twelve"})
    with pytest.raises(ConfigError, match="'trainer.precision' must be one of"):
        check_trainer_kwargs({"precision": "fp16"})


def test_to_container_resolves_interpolations() -> None:
    cfg = OmegaConf.create({"data": {"n": 3}, "model": {"num_classes": "${data.n}"}})
    out = to_container(cfg.model)
    assert out == {"num_classes": 3} and isinstance(out, dict)
    assert to_container(None) == {}


def test_run_dir(tree: Path) -> None:
    path = tree / "det/run.yaml"
    assert default_run_dir(path) == Path("runs/run")
    assert resolve_run_dir(load_config(path), config_path=path) == Path("runs/run")
    cfg = load_config(path, ["trainer.default_root_dir=/tmp/out"])
    assert resolve_run_dir(cfg, config_path=path) == Path("/tmp/out")
