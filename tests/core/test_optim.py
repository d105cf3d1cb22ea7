from __future__ import annotations

import pytest
import torch
from torch import nn

from flatten_dense.core.config import ConfigError
from flatten_dense.core.optim import (
    build_optimizer,
    build_scheduler,
    param_groups,
    warmup_multistep,
    warmup_poly,
)


class TinyAttention(nn.Module):
    def __init__(self, dim: int = 8, n: int = 4) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.positional_encoding = nn.Parameter(torch.zeros(1, n, dim))
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        self.relative_position_bias_table = nn.Parameter(torch.zeros(9, 2))
        self.dwc = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)


class TinyBackbone(nn.Module):
    """Shaped like the project's backbones: declares its no-decay names the timm way."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, 8, 4, stride=4)
        self.pos_embed1 = nn.Parameter(torch.zeros(1, 16, 8))
        self.attn = TinyAttention()
        self.norm = nn.LayerNorm(8)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed1", "positional_encoding", "scale"}

    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position_bias_table"}


class Detector(nn.Module):
    """The backbone nested as `detector.backbone.body`, next to a head."""

    def __init__(self) -> None:
        super().__init__()
        self.detector = nn.Module()
        self.detector.backbone = nn.Module()
        self.detector.backbone.body = TinyBackbone()
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8))


def names_of(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def split(model: nn.Module, groups: list[dict]) -> tuple[set[str], set[str]]:
    decay = set().union(*(names_of(model, g) for g in groups if g["weight_decay"] > 0))
    no_decay = set().union(*(names_of(model, g) for g in groups if g["weight_decay"] == 0))
    return decay, no_decay


def test_param_groups_nested_backbone() -> None:
    model = Detector()
    groups = param_groups(model, weight_decay=0.05)
    decay, no_decay = split(model, groups)
    b = "detector.backbone.body."
    assert decay == {
        b + "patch_embed.weight",
        b + "attn.qkv.weight",
        b + "attn.dwc.weight",
        "head.0.weight",
    }
    assert {
        b + "pos_embed1",
        b + "attn.positional_encoding",  # 3-D: caught by name, not by ndim
        b + "attn.scale",
        b + "attn.relative_position_bias_table",  # 2-D: caught by keyword
        b + "attn.qkv.bias",
        b + "norm.weight",
        b + "norm.bias",
        "head.1.weight",
        "head.0.bias",
    } <= no_decay
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


def test_param_groups_user_names_and_keywords_without_declaration() -> None:
    model = nn.Module()
    model.body = nn.Module()
    model.body.pos_embed = nn.Parameter(torch.zeros(1, 4, 4))
    model.body.table = nn.Parameter(torch.zeros(4, 4))
    model.body.fc = nn.Linear(4, 4)
    groups = param_groups(
        model, weight_decay=0.1, no_weight_decay_names={"pos_embed"}, extra_no_decay_keywords=("table",)
    )
    decay, no_decay = split(model, groups)
    assert decay == {"body.fc.weight"}
    assert no_decay == {"body.pos_embed", "body.table", "body.fc.bias"}


def test_frozen_parameters_are_excluded() -> None:
    model = Detector()
    model.detector.backbone.body.patch_embed.requires_grad_(False)
    decay, no_decay = split(model, param_groups(model, weight_decay=0.05))
    assert not any("patch_embed" in n for n in decay | no_decay)
    assert "detector.backbone.body.attn.qkv.weight" in decay


def test_backbone_lr_mult() -> None:
    model = Detector()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, backbone_lr_mult=0.1)
    for group in opt.param_groups:
        in_backbone = all(n.startswith("detector.backbone") for n in names_of(model, group))
        assert group["lr"] == pytest.approx(1e-4 if in_backbone else 1e-3)
    assert len(opt.param_groups) == 4


def test_build_optimizer_adamw_and_sgd() -> None:
    model = Detector()
    adamw = build_optimizer(model, name="adamw", lr=1e-4, weight_decay=0.05, betas=[0.9, 0.99])
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.9, 0.99)
    assert sorted(g["weight_decay"] for g in adamw.param_groups) == [0.0, 0.05]
    sgd = build_optimizer(model, name="SGD", lr=0.02, weight_decay=1e-4, momentum=0.8)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.8
    with pytest.raises(ConfigError, match="unknown optimizer 'adam'"):
        build_optimizer(model, name="adam", lr=1e-4)


def test_warmup_multistep_1x() -> None:
    spe = 100  # steps per epoch
    kw = dict(warmup_steps=500, warmup_ratio=0.001, milestones_steps=[8 * spe, 11 * spe])
    assert warmup_multistep(0, **kw) == pytest.approx(0.001)
    assert warmup_multistep(250, **kw) == pytest.approx(0.001 + 0.999 * 0.5)
    assert warmup_multistep(500, **kw) == 1.0
    assert warmup_multistep(8 * spe - 1, **kw) == 1.0
    assert warmup_multistep(8 * spe, **kw) == pytest.approx(0.1)
    assert warmup_multistep(11 * spe - 1, **kw) == pytest.approx(0.1)
    assert warmup_multistep(11 * spe, **kw) == pytest.approx(0.01)
    assert warmup_multistep(12 * spe - 1, **kw) == pytest.approx(0.01)


def test_warmup_poly() -> None:
    kw = dict(warmup_steps=10, warmup_ratio=1e-6, total_steps=100, power=1.0)
    assert warmup_poly(0, **kw) == pytest.approx(1e-6)
    assert warmup_poly(10, **kw) == pytest.approx(0.9)  # warm-up ends on the poly curve
    assert warmup_poly(50, **kw) == pytest.approx(0.5)
    assert warmup_poly(100, **kw) == 0.0
    assert warmup_poly(150, **kw) == 0.0
    floor = dict(kw, power=0.9, min_lr_ratio=0.01)
    assert warmup_poly(50, **floor) == pytest.approx(0.99 * 0.5**0.9 + 0.01)
    assert warmup_poly(100, **floor) == pytest.approx(0.01)
    values = [warmup_poly(s, **floor) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def run_lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    """The lr each optimisation step uses, stepping the scheduler as Lightning does (per step)."""
    optimizer = scheduler.optimizer
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_build_scheduler_multistep_changes_optimizer_lr() -> None:
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=1e-4, weight_decay=0.05)
    config = build_scheduler(opt, name="multistep", steps_per_epoch=3, warmup_steps=4, milestones=[8, 11])
    assert config["interval"] == "step"
    lrs = run_lrs(config["scheduler"], 12 * 3)
    assert lrs[0] == pytest.approx(1e-7)
    assert lrs[4] == pytest.approx(1e-4)
    assert lrs[8 * 3 - 1] == pytest.approx(1e-4) and lrs[8 * 3] == pytest.approx(1e-5)
    assert lrs[11 * 3 - 1] == pytest.approx(1e-5) and lrs[11 * 3] == pytest.approx(1e-6)
    # every group follows, with its own base lr
    assert all(g["lr"] == pytest.approx(1e-6) for g in opt.param_groups)


def test_build_scheduler_poly_and_state_dict() -> None:
    opt = build_optimizer(nn.Linear(2, 2), lr=6e-5, weight_decay=0.01)
    config = build_scheduler(opt, name="poly", max_steps=20, warmup_steps=5, power=1.0)
    lrs = run_lrs(config["scheduler"], 20)
    assert lrs[0] == pytest.approx(6e-5 * 1e-6)
    assert lrs[10] == pytest.approx(3e-5)
    assert opt.param_groups[0]["lr"] == 0.0  # reached the minimum at total_steps
    state = config["scheduler"].state_dict()
    assert state["last_epoch"] == 20
    by_epochs = build_scheduler(opt, name="poly", max_epochs=2, steps_per_epoch=10)
    assert by_epochs["scheduler"].lr_lambdas[0].keywords["total_steps"] == 20


def test_build_scheduler_errors() -> None:
    opt = build_optimizer(nn.Linear(2, 2), lr=1e-4)
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        build_scheduler(opt, name="multistep", warmup_steps=0)
    with pytest.raises(ConfigError, match="max_steps"):
        build_scheduler(opt, name="poly", max_steps=-1)
    with pytest.raises(ConfigError, match="unknown schedule 'cosine'"):
        build_scheduler(opt, name="cosine", steps_per_epoch=1)
