"""Every zoo model as a timm model: `import flatten_dense` is the one import users need.

After it, `timm.create_model("flatten_swin_t", ...)` builds the released classifier (same key names),
with timm's options: `num_classes`, `in_chans` (the stem conv adapted as timm adapts it, also in
loaded weights), `features_only=True, out_indices=...` (NCHW maps through timm's FeatureGetterNet),
`pretrained=True, pretrained_cfg_overlay=dict(file=PATH)` with a release file (read by our loader:
weights only, the authors' pickled config allow-listed, a head of another size dropped, learned
position tables resized). Nothing is downloaded: the configs name no URL.

Imported by `flatten_dense/__init__.py` only when timm is installed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import adapt_input_conv, build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from .checkpoint import CheckpointMismatchError, filter_state_dict, mismatch_report, read_state_dict
from .flatten_cswin import FlattenCSWin
from .flatten_pvt import FlattenPVT
from .flatten_swin import FlattenSwin
from .pyramid_model import PyramidModel
from .registry import MODEL_SPECS

__all__ = ["PAPER_URL", "REPOSITORY_URL", "TIMM_FAMILIES", "register_with_timm", "timm_pretrained_cfg"]

log = logging.getLogger(__name__)

PAPER_URL = "https://arxiv.org/abs/2308.00442"
REPOSITORY_URL = "https://github.com/LeapLabTHU/FLatten-Transformer"
PRETRAINED_TAG = "in1k"
# the stem conv of each family (timm's `first_conv`): what `in_chans` adapts
FIRST_CONV = {FlattenSwin: "patch_embed.proj", FlattenPVT: "patch_embed1.proj", FlattenCSWin: "stage1_conv_embed.0"}


class TimmFlattenMixin:
    """What a timm model has beyond PyramidModel: `in_chans`, timm's feature list, `load_pretrained`."""

    def _timm_init(self: Any, in_chans: int) -> None:
        self.in_chans = in_chans
        self.first_conv = FIRST_CONV[next(cls for cls in FIRST_CONV if isinstance(self, cls))]
        if in_chans != 3:
            owner_name, _, leaf = self.first_conv.rpartition(".")
            owner = self.get_submodule(owner_name)
            conv: nn.Conv2d = getattr(owner, leaf)
            new = nn.Conv2d(
                in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
            )
            new.weight.data = adapt_input_conv(in_chans, conv.weight.data)  # as timm adapts pretrained stems
            if conv.bias is not None:
                new.bias.data = conv.bias.data.clone()
            setattr(owner, leaf, new)
        # timm's format: every stage, whatever the role (FeatureGetterNet picks out_indices from it)
        self.feature_info = [
            {"num_chs": c, "reduction": r, "module": f"stages.{i}", "index": i}
            for i, (c, r) in enumerate(zip(self.stage_channels, (4, 8, 16, 32), strict=True))
        ]

    def load_pretrained(self: Any, path: str | Path, use_ema: bool = False) -> None:
        """timm's `custom_load` hook: a release file (or ours) into this model, timm's adaptations applied."""
        state = read_state_dict(path, use_ema=use_ema)
        key = f"{self.first_conv}.weight"
        if key in state and state[key].shape[1] != self.in_chans:
            state[key] = adapt_input_conv(self.in_chans, state[key])
        head = self.get_classifier()
        new_prefixes: tuple[str, ...] = ()
        for name in ("head.weight", "head.bias"):
            if name in state and (not isinstance(head, nn.Linear) or state[name].shape[0] != head.out_features):
                del state[name]  # another number of classes (or none): the new head stays as initialised
                new_prefixes = ("head.",)
        state, notes = filter_state_dict(state, self)
        missing, unexpected, mismatched = mismatch_report(self, state, new_prefixes)
        if missing or unexpected or mismatched:
            raise CheckpointMismatchError(
                f"checkpoint {path} does not fit {type(self).__name__}: "
                f"missing {missing[:12]}, unexpected {unexpected[:12]}, shape mismatches {mismatched[:12]}"
            )
        self.load_state_dict(state, strict=False)
        for note in notes:
            log.info("%s: %s", Path(path).name, note)


def _timm_class(family: type[PyramidModel]) -> type[PyramidModel]:
    def __init__(self, *, in_chans: int = 3, **kwargs: Any) -> None:  # noqa: N807
        family.__init__(self, **kwargs)
        self._timm_init(in_chans)

    return type(f"Timm{family.__name__}", (TimmFlattenMixin, family), {"__init__": __init__, "__module__": __name__})


TIMM_FAMILIES = {family: _timm_class(family) for family in FIRST_CONV}


def timm_pretrained_cfg(name: str) -> dict[str, Any]:
    """The pretrained_cfg of a zoo model (timm's keys; `file` comes from the user's overlay)."""
    spec = MODEL_SPECS[name]
    size = spec.kwargs.get("pretrain_image_size", 224)
    return {
        "url": "",
        "custom_load": True,  # read by `TimmFlattenMixin.load_pretrained` (our safe loader), not timm's
        "num_classes": 1000,
        "input_size": (3, size, size),
        "pool_size": (size // 32, size // 32),
        "crop_pct": 0.875 if size == 224 else 1.0,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": FIRST_CONV[spec.family],
        "classifier": "head",
        "license": "unknown (the authors' repository states none; their weights come under their terms)",
        "paper_ids": "arXiv:2308.00442",
        "paper_name": "FLatten Transformer: Vision Transformer using Focused Linear Attention",
        "origin_url": REPOSITORY_URL,
    }


def _entrypoint(name: str):
    spec = MODEL_SPECS[name]

    def create(pretrained: bool = False, **kwargs: Any) -> PyramidModel:
        return build_model_with_cfg(
            TIMM_FAMILIES[spec.family],
            name,
            pretrained,
            feature_cfg={"feature_cls": "getter", "out_indices": (0, 1, 2, 3)},
            **{**spec.kwargs, **kwargs},
        )

    create.__name__ = name
    create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = f"FLatten {name} ({PAPER_URL}); weights: {REPOSITORY_URL}"
    return create


default_cfgs = generate_default_cfgs({f"{name}.{PRETRAINED_TAG}": timm_pretrained_cfg(name) for name in MODEL_SPECS})


def register_with_timm() -> list[str]:
    """Register every zoo name with timm (idempotent). Returns the names registered by this call."""
    registered = []
    for name in MODEL_SPECS:
        if timm.is_model(name):
            continue
        entry = _entrypoint(name)
        globals()[name] = entry  # timm's registry looks the entry point up in its module
        register_model(entry)
        registered.append(name)
    return registered
