"""A linear layer with its GELU or residual add fused in, for CPU float32 inference.

torch's CPU `F.linear` copies the bias into a fresh output and then runs the GEMM over it, and the
GELU or residual add that follows is one more pass over an N x C tensor. oneDNN's linear (the op
torch.compile's CPU backend emits for the same pattern) applies bias, GELU or the add while the
GEMM's output tile is still in cache, and is faster on the thin GEMMs of the first stages (64
input channels). Everywhere else (autograd, autocast, CUDA, other dtypes, a torch without oneDNN)
this is exactly `F.linear` followed by the same ops; so it is under torch.compile, which does its own
fusion, and under any dispatch mode (FLOP counters, fake tensors), which must see the plain aten ops.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "fused_linear",
    "has_onednn_linear",
    "in_inference",
    "onednn_linears_off",
    "project_output",
    "split_linear",
    "uses_onednn",
]


def _onednn_linear_op() -> object | None:
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)


_ONEDNN_LINEAR = _onednn_linear_op()


def has_onednn_linear() -> bool:
    """This torch has oneDNN's linear, so CPU fp32 inference can take the fused path."""
    return _ONEDNN_LINEAR is not None


@contextmanager
def onednn_linears_off() -> Iterator[None]:
    """Within the block every linear takes the aten path (`F.linear`, then the separate ops), the
    same numbers: for A/B measurements of what the oneDNN path buys (tools/fused_linear_check.py)."""
    global _ONEDNN_LINEAR
    before, _ONEDNN_LINEAR = _ONEDNN_LINEAR, None
    try:
        yield
    finally:
        _ONEDNN_LINEAR = before


def in_inference(module: nn.Module) -> bool:
    """Eval mode without autograd: where blocks may fuse residual adds (dropout and drop path are off)."""
    return not module.training and not torch.is_grad_enabled()


def uses_onednn(x: Tensor) -> bool:
    """True when `fused_linear` takes the oneDNN path for this input."""
    return (
        _ONEDNN_LINEAR is not None
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()  # inductor fuses F.linear itself (and wants constant weights here)
        # Under a dispatch mode (FlopCounterMode, FakeTensorMode, export's tracer) aten ops only: a
        # FLOP counter has no formula for the oneDNN op and would miss the GEMM.
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch.jit.is_tracing()  # jit.trace / the legacy ONNX exporter cannot record the oneDNN op
    )


def fused_linear(
    x: Tensor, weight: Tensor, bias: Tensor | None, *, gelu: bool = False, residual: Tensor | None = None
) -> Tensor:
    """F.linear(x, weight, bias), then exact GELU (`gelu=True`) or `+ residual`.

    x: (..., C_in), weight: (C_out, C_in), residual: (..., C_out) -> (..., C_out).
    """
    if gelu and residual is not None:
        raise ValueError("fused_linear applies either GELU or a residual add, not both")
    if uses_onednn(x) and (residual is None or residual.shape[:-1] == x.shape[:-1]):
        if residual is not None:
            return _ONEDNN_LINEAR.binary(x, residual.contiguous(), weight, bias, "add")
        if gelu:
            return _ONEDNN_LINEAR(x, weight, bias, "gelu", [], "none")  # "none": erf GELU
        return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
    out = F.linear(x, weight, bias)
    if gelu:
        return F.gelu(out)
    return out if residual is None else out + residual


def project_output(proj: nn.Linear, drop: nn.Dropout, x: Tensor, residual: Tensor | None = None) -> Tensor:
    """drop(proj(x)), plus `residual` when given: an attention's output projection.

    With dropout off (eval) the residual add is fused into the projection; in training it is
    applied after the dropout, so the result is the same either way.
    """
    if residual is None:
        return drop(fused_linear(x, proj.weight, proj.bias))
    if drop.training and drop.p > 0:
        return drop(F.linear(x, proj.weight, proj.bias)) + residual
    return fused_linear(x, proj.weight, proj.bias, residual=residual)


def split_linear(
    x: Tensor, layers: list[nn.Linear], out_features: int, *, residuals: Sequence[Tensor | None] | None = None
) -> list[Tensor]:
    """The outputs of `layers` applied to x, cut into pieces of `out_features` channels each.

    `residuals`, if given, holds one tensor (or None) per piece, added to that piece. On the oneDNN
    path each piece is its own GEMM with its residual fused in, so every piece is a contiguous tensor
    (no strided views into one wide output that later ops would have to copy). Elsewhere one GEMM
    per layer, split into views, plus the residuals.
    """
    if uses_onednn(x):
        weights, biases = [], []
        for layer in layers:
            weights += layer.weight.split(out_features)
            biases += (
                layer.bias.split(out_features)
                if layer.bias is not None
                else [None] * (layer.out_features // out_features)
            )
        residuals = residuals or [None] * len(weights)
        return [fused_linear(x, w, b, residual=r) for w, b, r in zip(weights, biases, residuals, strict=True)]
    pieces = [piece for layer in layers for piece in F.linear(x, layer.weight, layer.bias).split(out_features, dim=-1)]
    if residuals is None:
        return pieces
    return [piece if r is None else piece + r for piece, r in zip(pieces, residuals, strict=True)]
