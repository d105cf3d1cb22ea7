"""Optimiser and learning-rate schedules of the mmdet/mmseg recipes the paper's baselines use.

Schedules are pure functions of the global optimisation step (easy to test and to reason
about), wrapped in `LambdaLR` so Lightning steps them every iteration (`interval: "step"`).
"""

from __future__ import annotations

import functools
from bisect import bisect_right
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from flatten_dense.core.config import ConfigError

__all__ = [
    "build_optimizer",
    "build_scheduler",
    "declared_no_weight_decay",
    "param_groups",
    "warmup_multistep",
    "warmup_poly",
]


def declared_no_weight_decay(model: nn.Module) -> tuple[set[str], set[str]]:
    """Names and keywords the model's submodules declare exempt from weight decay (timm style).

    Returns `(names, keywords)`: names from every `no_weight_decay()` both as given and prefixed
    with the submodule's path, and substrings from every `no_weight_decay_keywords()`.
    """
    names: set[str] = set()
    keywords: set[str] = set()
    for path, module in model.named_modules():
        if callable(getattr(module, "no_weight_decay", None)):
            for name in module.no_weight_decay():
                names.add(name)
                names.add(f"{path}.{name}" if path else name)
        if callable(getattr(module, "no_weight_decay_keywords", None)):
            keywords.update(module.no_weight_decay_keywords())
    return names, keywords


def _is_no_decay(name: str, param: nn.Parameter, names: set[str], keywords: Iterable[str]) -> bool:
    if param.ndim <= 1:  # norm weights, biases, per-channel scales
        return True
    last = name.rsplit(".", 1)[-1]
    if last in names or any(name == n or name.endswith("." + n) for n in names):
        return True
    return any(k in name for k in keywords)


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    no_weight_decay_names: Iterable[str] = (),
    extra_no_decay_keywords: Iterable[str] = (),
    backbone_lr_mult: float = 1.0,
    backbone_key: str = "backbone",
) -> list[dict]:
    """Split trainable parameters into decay and no-decay groups (frozen ones are left out).

    No decay for 1-D parameters, for names declared by any submodule's `no_weight_decay()`
    (matched by suffix, so a backbone nested as `detector.backbone.body` works), for
    `no_weight_decay_names`, and for names containing a keyword. With `backbone_lr_mult != 1`,
    parameters under a module path component named `backbone_key` form their own groups with
    `lr_mult` set; `build_optimizer` turns `lr_mult` into the group's learning rate.
    """
    declared, keywords = declared_no_weight_decay(model)
    names = declared | set(no_weight_decay_names)
    keywords = keywords | set(extra_no_decay_keywords)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not _is_no_decay(name, param, names, keywords)
        in_backbone = backbone_lr_mult != 1.0 and backbone_key in name.split(".")[:-1]
        groups.setdefault((decay, in_backbone), []).append(param)
    result = []
    for (decay, in_backbone), params in sorted(groups.items(), reverse=True):
        result.append(
            {
                "params": params,
                "weight_decay": weight_decay if decay else 0.0,
                "lr_mult": backbone_lr_mult if in_backbone else 1.0,
            }
        )
    return result


def build_optimizer(
    model: nn.Module,
    *,
    name: str = "adamw",
    lr: float,
    weight_decay: float = 0.0,
    betas: Sequence[float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.9,
    nesterov: bool = False,
    no_weight_decay_names: Sequence[str] = (),
    extra_no_decay_keywords: Sequence[str] = (),
    backbone_lr_mult: float = 1.0,
) -> torch.optim.Optimizer:
    """AdamW or SGD over `param_groups` (the `optimizer` section of a config, minus `model`)."""
    groups = param_groups(
        model,
        weight_decay=weight_decay,
        no_weight_decay_names=set(no_weight_decay_names),
        extra_no_decay_keywords=tuple(extra_no_decay_keywords),
        backbone_lr_mult=backbone_lr_mult,
    )
    if not groups:
        raise ConfigError("optimizer: the model has no trainable parameters")
    for group in groups:
        group["lr"] = lr * group["lr_mult"]
    key = name.lower()
    if key == "adamw":
        beta1, beta2 = (float(b) for b in betas)
        return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps)
    if key == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov)
    raise ConfigError(f"'optimizer.name': unknown optimizer '{name}' (choose adamw or sgd)")


def _linear_warmup(step: int, *, warmup_steps: int, warmup_ratio: float) -> float:
    """mmcv's linear warm-up factor: `warmup_ratio` at step 0, rising to 1 at `warmup_steps`."""
    if step >= warmup_steps:
        return 1.0
    return warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps


def warmup_multistep(
    step: int,
    *,
    warmup_steps: int,
    warmup_ratio: float = 0.001,
    milestones_steps: Sequence[int],
    gamma: float = 0.1,
) -> float:
    """LR factor of mmdet's step schedule: x `gamma` from each milestone step on, warm-up first."""
    decay = gamma ** bisect_right(sorted(milestones_steps), step)
    return decay * _linear_warmup(step, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio)


def warmup_poly(
    step: int,
    *,
    warmup_steps: int,
    warmup_ratio: float = 1e-6,
    total_steps: int,
    power: float = 0.9,
    min_lr_ratio: float = 0.0,
) -> float:
    """LR factor of mmseg's poly schedule over `total_steps`, with warm-up applied on top of it.

    `(1 - min_lr_ratio) * (1 - step / total_steps) ** power + min_lr_ratio`, held at
    `min_lr_ratio` after `total_steps`; mmseg's Swin UperNet uses power 1.0, most others 0.9.
    """
    progress = min(step, total_steps) / total_steps
    poly = (1.0 - min_lr_ratio) * (1.0 - progress) ** power + min_lr_ratio
    return poly * _linear_warmup(step, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    steps_per_epoch: int | None = None,
    max_epochs: int | None = None,
    max_steps: int | None = None,
    warmup_steps: int = 0,
    milestones: Sequence[int] = (8, 11),
    gamma: float = 0.1,
    power: float = 0.9,
    warmup_ratio: float | None = None,
    min_lr_ratio: float = 0.0,
) -> dict:
    """Lightning's scheduler config (`interval: "step"`) for "multistep" or "poly".

    `steps_per_epoch` counts optimiser steps (batches / gradient accumulation). Multistep
    milestones are in epochs (mmdet 1x: 8, 11 of 12; 3x: 27, 33 of 36). Poly runs over
    `max_steps` when given (> 0), else `max_epochs * steps_per_epoch`. `warmup_ratio` defaults
    to mmdet's 0.001 for multistep and mmseg's 1e-6 for poly.
    """
    if warmup_steps < 0:
        raise ConfigError(f"'scheduler.warmup_steps' must be >= 0, got {warmup_steps}")
    key = name.lower()
    if key == "multistep":
        if not steps_per_epoch or steps_per_epoch <= 0:
            raise ConfigError("scheduler: multistep needs steps_per_epoch > 0 (epoch milestones)")
        fn = functools.partial(
            warmup_multistep,
            warmup_steps=warmup_steps,
            warmup_ratio=0.001 if warmup_ratio is None else warmup_ratio,
            milestones_steps=[int(m) * steps_per_epoch for m in milestones],
            gamma=gamma,
        )
    elif key == "poly":
        if max_steps is not None and max_steps > 0:
            total = max_steps
        elif max_epochs and steps_per_epoch:
            total = max_epochs * steps_per_epoch
        else:
            raise ConfigError("scheduler: poly needs max_steps, or max_epochs and steps_per_epoch")
        fn = functools.partial(
            warmup_poly,
            warmup_steps=warmup_steps,
            warmup_ratio=1e-6 if warmup_ratio is None else warmup_ratio,
            total_steps=total,
            power=power,
            min_lr_ratio=min_lr_ratio,
        )
    else:
        raise ConfigError(f"'scheduler.name': unknown schedule '{name}' (choose multistep or poly)")
    return {
        "scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, fn),
        "interval": "step",
        "frequency": 1,
    }
