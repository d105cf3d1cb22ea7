"""`flatten-dense convert FILE --out OUT`: a release file as plain weights any loader accepts.

The authors' files pickle their yacs config (and an argparse namespace), so a plain
`torch.load(weights_only=True)` refuses them. This reads one with our safe loader (inert stand-ins,
no code run) and writes only its tensors: `{"model": state}` (plus `"state_dict_ema"` when the file
holds an EMA copy) for a `.pth`/`.pt` OUT, or one flat state dict for a `.safetensors` OUT (`--use-ema`
picks the EMA weights there). Integer/float/str metadata (epoch, accuracy) is kept in the `.pth`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from flatten_dense.models.checkpoint import read_state_dict
from flatten_dense.models.safe_load import safe_torch_load

__all__ = ["convert"]

EMA_ENTRY = "state_dict_ema"
METADATA = (int, float, str, bool)


def _tensors(entry: Any) -> dict[str, Tensor]:
    return {k: v.contiguous() for k, v in entry.items() if isinstance(v, Tensor)} if isinstance(entry, dict) else {}


def convert(source: str | Path, out: str | Path, *, use_ema: bool = False) -> dict:
    """Write the weights-only copy; returns a summary (keys, format, whether EMA weights came along)."""
    source, out = Path(source), Path(out)
    if not source.is_file():
        raise FileNotFoundError(f"convert: file not found: {source}")
    out.parent.mkdir(parents=True, exist_ok=True)
    state = read_state_dict(source, use_ema=use_ema)  # "model" (or the EMA copy), prefixes stripped
    if out.suffix == ".safetensors":
        from safetensors.torch import save_file

        _atomic(out, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, str(tmp)))
        ema = use_ema
    else:
        payload = safe_torch_load(source)
        ema_state = _tensors(payload.get(EMA_ENTRY)) if isinstance(payload, dict) else {}
        converted: dict[str, Any] = {"model": state}
        if ema_state and not use_ema:
            converted[EMA_ENTRY] = ema_state
        if isinstance(payload, dict):
            converted.update({k: v for k, v in payload.items() if isinstance(v, METADATA) and k not in converted})
        _atomic(out, lambda tmp: torch.save(converted, tmp))
        ema = use_ema or bool(ema_state)
    summary = {"source": str(source), "out": str(out), "tensors": len(state), "ema": ema}
    print(f"converted {source} -> {out}: {len(state)} tensors{' (with EMA weights)' if ema else ''}")
    return summary


def _atomic(out: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename (no half-written OUT)."""
    handle, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
