"""Record what one focused linear attention layer and its block receive while the model runs."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flatten_dense.models.layers import FocusedLinearAttention

__all__ = ["LayerInput", "capture_layer_input", "default_layer", "linear_attention_layers"]


@dataclass
class LayerInput:
    """The layer's normalised input tokens `x` (1, N, C) on `grid`, and its block's input."""

    name: str
    layer: FocusedLinearAttention
    block: nn.Module
    x: Tensor
    block_x: Tensor
    grid: tuple[int, int]


def linear_attention_layers(model: nn.Module) -> dict[str, FocusedLinearAttention]:
    return {name: m for name, m in model.named_modules() if isinstance(m, FocusedLinearAttention)}


def _run(model: nn.Module, image: Tensor, hooks: list) -> None:
    try:
        with torch.no_grad():
            model(image[None])
    finally:
        for hook in hooks:
            hook.remove()


def _grids(model: nn.Module, image: Tensor) -> dict[str, tuple[int, int]]:
    seen: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, layer in linear_attention_layers(model).items():

        def record(module, args, kwargs, name=name):
            seen.setdefault(name, tuple(int(v) for v in args[1]))

        hooks.append(layer.register_forward_pre_hook(record, with_kwargs=True))
    _run(model, image, hooks)
    return seen


def default_layer(model: nn.Module, image: Tensor, *, min_side: int = 14) -> str:
    """The deepest focused linear attention layer whose token grid is at least `min_side` a side."""
    grids = _grids(model, image)
    if not grids:
        raise ValueError(f"{type(model).__name__} has no focused linear attention layer")
    large = [name for name, grid in grids.items() if min(grid) >= min_side]
    return (large or list(grids))[-1]


def capture_layer_input(model: nn.Module, image: Tensor, name: str | None = None) -> LayerInput:
    """Run `model` on `image` (3 x H x W) and keep layer `name`'s first input (a window: the first)."""
    layers = linear_attention_layers(model)
    name = default_layer(model, image) if name is None else name
    if name not in layers:
        raise ValueError(f"no focused linear attention layer {name!r}; the model has: {', '.join(layers)}")
    block = model.get_submodule(name.rsplit(".", 1)[0])
    seen: dict[str, tuple] = {}

    def layer_hook(module, args, kwargs):
        seen.setdefault("layer", (args[0][:1].detach().clone(), tuple(int(v) for v in args[1])))

    def block_hook(module, args, kwargs):
        seen.setdefault("block", args[0][:1].detach().clone())

    hooks = [
        layers[name].register_forward_pre_hook(layer_hook, with_kwargs=True),
        block.register_forward_pre_hook(block_hook, with_kwargs=True),
    ]
    _run(model, image, hooks)
    x, grid = seen["layer"]
    return LayerInput(name=name, layer=layers[name], block=block, x=x, block_x=seen["block"], grid=grid)
