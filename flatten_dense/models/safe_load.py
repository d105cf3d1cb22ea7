"""`torch.load(weights_only=True)` for every file this project reads, with inert stand-ins.

Real release files pickle a few non-tensor objects besides the weights: the authors' training
script saves its yacs `CfgNode` config, other scripts an argparse `Namespace`. `weights_only=True`
refuses them, and the usual way out (`weights_only=False`) lets a file run any code. Here those
classes are allow-listed under their real module paths but rebuilt as inert stand-ins defined in
this file (yacs is never imported, nothing of the file's choosing is ever called):

- `yacs.config.CfgNode` -> a plain `OrderedDict` of the config (nested nodes likewise); yacs'
  own flags (`__immutable__`, ...) land in its `__dict__` and do nothing;
- `argparse.Namespace` -> `NamespaceStandIn`, a bare attribute holder.

Anything else that is not a tensor or plain data is refused in one line naming the file and the class.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

__all__ = ["ALLOWED_STAND_INS", "NamespaceStandIn", "UnsafeCheckpointError", "safe_torch_load"]


class UnsafeCheckpointError(ValueError):
    """A checkpoint that pickles a class outside the allow-list (it would have to run code to load)."""


class CfgNodeStandIn:
    """Stands in for `yacs.config.CfgNode`: unpickles as a plain `OrderedDict` of the config.

    The weights-only unpickler fills only exact dicts, so `__new__` returns an `OrderedDict`
    (which also takes the node's attribute state) instead of an instance of this class.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> OrderedDict:  # type: ignore[misc]
        return OrderedDict()


class NamespaceStandIn:
    """Stands in for `argparse.Namespace`: the saved attributes, nothing else."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


# (stand-in, the class path as it appears in the pickle)
ALLOWED_STAND_INS: tuple[tuple[type, str], ...] = (
    (CfgNodeStandIn, "yacs.config.CfgNode"),
    (NamespaceStandIn, "argparse.Namespace"),
)

_CULPRIT = (
    re.compile(r"GLOBAL (\S+)"),  # an unknown class or function
    re.compile(r"module (\S+) is blocked"),  # os, sys, posix, nt
    re.compile(r"unrecognized function (\S+)"),
    re.compile(r"got (<class '[^']+'>)"),
)


def _culprit(message: str) -> str | None:
    for pattern in _CULPRIT:
        found = pattern.search(message)
        if found:
            return found.group(1).rstrip(".,")
    return None


def safe_torch_load(path: str | Path, *, what: str = "checkpoint") -> Any:
    """Read a torch file without running code: tensors, plain data and the stand-ins above.

    FileNotFoundError for a missing file; UnsafeCheckpointError (a ValueError) naming the file and
    the class for a file that needs anything else; ValueError for a truncated or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(list(ALLOWED_STAND_INS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated, foreign or unsafe files
        message = " ".join(str(error).split())
        culprit = _culprit(message) if "Weights only load failed" in message or "GLOBAL" in message else None
        if culprit is not None:
            raise UnsafeCheckpointError(
                f"refusing {what} {path}: it pickles {culprit}, which is not tensors, plain data or an "
                f"allow-listed config class ({', '.join(name for _, name in ALLOWED_STAND_INS)}); "
                "loading it would have to run code"
            ) from None
        raise ValueError(f"cannot read {what} {path}: not a complete torch file ({_reason(error)})") from None


def _reason(error: Exception) -> str:
    """The first sentence of torch's message, or the error's type where the message says nothing."""
    text = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else ""
    if isinstance(error, (KeyError, EOFError)) or len(text) < 8:  # pickle's "101", an empty EOFError
        return f"{type(error).__name__} while unpickling: empty, truncated or not written by torch.save"
    return text
