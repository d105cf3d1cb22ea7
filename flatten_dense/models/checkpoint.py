"""Loading released (or our own) checkpoints into classifiers and backbones.

The released files are `torch.save`d dicts with the state dict under "model" (other entries are
ignored); bare state dicts, "state_dict" entries (Lightning) and "module." prefixes are accepted.
A filter maps the file onto the model: recomputable buffers are dropped, backbones drop the
classification head and final norm, learned tables of another grid size are resized. Anything
else that does not fit is reported in one error naming every missing, unexpected and mis-shaped key.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers.position_encoding import resize_position_table, square_grid
from .safe_load import safe_torch_load

__all__ = [
    "CheckpointMismatchError",
    "filter_state_dict",
    "load_pretrained",
    "load_weights",
    "mismatch_report",
    "read_state_dict",
]

log = logging.getLogger(__name__)

RECOMPUTED_BUFFERS = ("relative_position_index", "attn_mask")
EMA_ENTRY = "state_dict_ema"  # timm's ModelEma copy, as the authors' main_ema.py saves it
MAX_NAMES_SHOWN = 12


class CheckpointMismatchError(ValueError):
    """A checkpoint whose keys or shapes do not fit the model."""


def read_state_dict(path: str | Path, *, use_ema: bool = False) -> dict[str, Tensor]:
    """Read a checkpoint file and return its model state dict (tensors only, prefixes stripped).

    A release file holds the weights under "model"; files trained with an EMA copy (FLatten-CSWin)
    also hold "state_dict_ema", which `use_ema` picks instead. The choice is logged.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # weights_only, with inert stand-ins for the release files' yacs config; never weights_only=False
    payload = safe_torch_load(path)
    if not isinstance(payload, dict):
        raise ValueError(f"checkpoint {path} holds a {type(payload).__name__}, not a state dict")  # noqa: TRY004
    payload = _weights_entry(payload, path, use_ema)
    state = {key: value for key, value in payload.items() if isinstance(value, Tensor)}
    if not state:
        raise ValueError(f"checkpoint {path} holds no tensors")
    for prefix in ("module.", "backbone."):
        if all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


def _weights_entry(payload: dict, path: Path, use_ema: bool) -> dict:
    """The dict of weights inside a checkpoint's payload: its EMA copy, "model", "state_dict" or itself."""
    has_ema = isinstance(payload.get(EMA_ENTRY), dict)
    if use_ema:
        if not has_ema:
            raise ValueError(f"checkpoint {path} holds no EMA weights ({EMA_ENTRY!r}); load it without use_ema")
        log.info("%s: loading the EMA weights (%r)", path.name, EMA_ENTRY)
        return payload[EMA_ENTRY]
    for entry in ("model", "state_dict"):
        if isinstance(payload.get(entry), dict):
            extra = f"; it also holds EMA weights ({EMA_ENTRY!r}), which use_ema=True loads" if has_ema else ""
            log.info("%s: loading the %r weights%s", path.name, entry, extra)
            return payload[entry]
    return payload


def _resize_table(name: str, value: Tensor, shape: torch.Size) -> Tensor | None:
    """Resize a learned table to `shape` when it is a position table on a square grid, else None."""
    leaf = name.rsplit(".", 1)[-1]
    square = value.ndim == len(shape) == 3 and all(math.isqrt(n) ** 2 == n for n in (value.shape[1], shape[1]))
    if (leaf == "positional_encoding" or leaf.startswith("pos_embed")) and square and value.shape[-1] == shape[-1]:
        return resize_position_table(value, square_grid(value.shape[1]), square_grid(shape[1]))
    if leaf == "relative_position_bias_table" and value.shape[1] == shape[1]:
        src, dst = math.isqrt(value.shape[0]), math.isqrt(shape[0])
        grid = value.T.reshape(1, -1, src, src)
        return F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False).reshape(-1, dst * dst).T
    return None


def filter_state_dict(state: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """Map a checkpoint's state dict onto `model`. Returns (filtered state, notes on what changed)."""
    target = model.state_dict()
    is_classifier = getattr(model, "is_classifier", True)
    notes: list[str] = []
    filtered: dict[str, Tensor] = {}
    for name, value in state.items():
        if name.rsplit(".", 1)[-1] in RECOMPUTED_BUFFERS:
            continue  # deterministic buffers; the model computes them for the actual grid
        if not is_classifier and (name.startswith("head.") or name.startswith("norm.")):
            continue  # classification head and its final norm are not part of a backbone
        if name in target and target[name].shape != value.shape:
            resized = _resize_table(name, value, target[name].shape)
            if resized is not None:
                notes.append(f"resized {name} {tuple(value.shape)} -> {tuple(resized.shape)}")
                value = resized
            elif name.startswith("head."):
                notes.append(f"dropped {name} {tuple(value.shape)}: the model has {tuple(target[name].shape)} classes")
                continue
        filtered[name] = value
    return filtered, notes


def mismatch_report(
    model: nn.Module, state: dict[str, Tensor], new_prefixes: tuple[str, ...]
) -> tuple[list[str], list[str], list[str]]:
    """Missing, unexpected and mis-shaped keys; names under `new_prefixes` may be missing (newly initialised)."""
    target = model.state_dict()
    missing = sorted(name for name in target if name not in state and not name.startswith(new_prefixes))
    unexpected = sorted(name for name in state if name not in target)
    mismatched = sorted(
        f"{name} {tuple(value.shape)} vs model {tuple(target[name].shape)}"
        for name, value in state.items()
        if name in target and target[name].shape != value.shape
    )
    return missing, unexpected, mismatched


def _listing(label: str, names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMES_SHOWN])
    more = f" (+{len(names) - MAX_NAMES_SHOWN} more)" if len(names) > MAX_NAMES_SHOWN else ""
    return f"{len(names)} {label}: {shown}{more}"


def load_pretrained(model: nn.Module, path: str | Path, *, use_ema: bool = False) -> list[str]:
    """Load a checkpoint into a FLatten classifier or backbone; raise if it does not fit.

    `use_ema` loads the file's EMA weights instead of its "model". Returns the notes of what the
    filter changed (resized tables, a dropped head).
    """
    state, notes = filter_state_dict(read_state_dict(path, use_ema=use_ema), model)
    new_prefixes = ("out_norms.",)  # the backbone's per-output norms are not in ImageNet files
    if any(note.startswith("dropped head.") for note in notes):
        new_prefixes += ("head.",)
    missing, unexpected, mismatched = mismatch_report(model, state, new_prefixes)
    if missing or unexpected or mismatched:
        parts = [
            _listing(label, names)
            for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched))
            if names
        ]
        raise CheckpointMismatchError(f"checkpoint {path} does not fit {type(model).__name__}: " + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    for note in notes:
        log.info("%s: %s", Path(path).name, note)
    return notes


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a checkpoint of this very module (e.g. a Lightning checkpoint of a task) strictly.

    Unlike `load_pretrained` nothing is renamed, dropped or resized: a file from another config
    fails with one error listing every missing, unexpected and mis-shaped key.
    """
    state = read_state_dict(path)
    missing, unexpected, mismatched = mismatch_report(module, state, ())
    if missing or unexpected or mismatched:
        parts = [
            _listing(label, names)
            for label, names in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched))
            if names
        ]
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit this config's {type(module).__name__}: " + "; ".join(parts)
        )
    module.load_state_dict(state, strict=True)
