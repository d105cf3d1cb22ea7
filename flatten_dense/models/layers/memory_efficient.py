"""The memory-efficient training path: the same layers, with custom autograd functions.

`MemEffFocusedLinearAttention(FocusedLinearAttention)`, `MemEffMlp(Mlp)` and
`MemEffDepthwiseConvMlp(DepthwiseConvMlp)` compute what their parents compute, with the same
parameters and state-dict keys; while autograd records they store the projections instead of every
intermediate and recompute the elementwise work in backward (`layers/autograd/`). Without autograd
(inference) each is exactly its parent.

One switch chooses the path for a whole model: `set_memory_efficient(model, True/False)` swaps the
class of every such layer in place (what `PyramidModel(memory_efficient=...)` calls). Tests pin each
class to its parent (outputs and gradients).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .autograd import focused_linear_attention, gelu_linear
from .focused_linear_attention import FocusedLinearAttention
from .fused_linear import project_output
from .mlp import DepthwiseConvMlp, Mlp

__all__ = [
    "MEMORY_EFFICIENT_LAYERS",
    "MemEffDepthwiseConvMlp",
    "MemEffFocusedLinearAttention",
    "MemEffMlp",
    "set_memory_efficient",
]


def _records() -> bool:
    """Autograd is recording (training, or a gradient taken in eval), outside torch.compile."""
    return torch.is_grad_enabled() and not torch.compiler.is_compiling()


class MemEffFocusedLinearAttention(FocusedLinearAttention):
    """Focused linear attention whose kernel chain, k^T v products and normaliser are one function
    storing the projections q, k, v only (`autograd.focused_linear_attention`)."""

    def forward(
        self, x: Tensor, grid: tuple[int, int], valid: Tensor | None = None, *, residual: Tensor | None = None
    ) -> Tensor:
        if not _records():
            return super().forward(x, grid, valid, residual=residual)
        batch, tokens, _ = x.shape
        q, k, v = self.project_qkv(x, key_offset=self.key_position(grid))
        with torch.autocast(device_type=x.device.type, enabled=False):  # kernel maths in float32 (fp16 overflow)
            dtype = torch.promote_types(q.dtype, torch.float32)
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            keep = num_valid = None
            if valid is not None:
                keep = valid.reshape(batch, tokens, 1).to(dtype)
                num_valid = keep.sum(dim=1).clamp(min=1.0).reshape(batch, 1, 1, 1)
            out = focused_linear_attention(
                q, k, v, self.scale.to(dtype), self.num_heads, self.focusing_factor, keep, num_valid
            )
            if self.dwc is not None:
                out = out + self._depthwise_conv(v if keep is None else v * keep, grid, dtype)
        return project_output(self.proj, self.proj_drop, out.to(x.dtype), residual)


def _dropout_off(drop: nn.Dropout) -> bool:
    return not drop.training or drop.p == 0


class MemEffMlp(Mlp):
    """fc1 -> GELU -> fc2 with the GELU output recomputed in backward (`autograd.gelu_linear`)."""

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        if not (_records() and _dropout_off(self.drop)):
            return super().forward(x, grid)
        return self.drop(gelu_linear(self.fc1(x), self.fc2.weight, self.fc2.bias))  # drop: off here (identity)


class MemEffDepthwiseConvMlp(DepthwiseConvMlp):
    """fc1 -> depthwise conv -> GELU -> fc2 with the GELU output recomputed in backward."""

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        if not (_records() and _dropout_off(self.drop)):
            return super().forward(x, grid)
        return self.drop(gelu_linear(self.dwconv(self.fc1(x), grid), self.fc2.weight, self.fc2.bias))  # identity


MEMORY_EFFICIENT_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    FocusedLinearAttention: MemEffFocusedLinearAttention,
    Mlp: MemEffMlp,
    DepthwiseConvMlp: MemEffDepthwiseConvMlp,
}


def set_memory_efficient(model: nn.Module, enable: bool = True) -> nn.Module:
    """Swap every plain layer of `model` for its memory-efficient subclass (or back); returns `model`.

    Only the class changes: parameters, buffers and state-dict keys stay as they are.
    """
    plain = {fast: base for base, fast in MEMORY_EFFICIENT_LAYERS.items()}
    for module in model.modules():
        if enable and type(module) in MEMORY_EFFICIENT_LAYERS:
            module.__class__ = MEMORY_EFFICIENT_LAYERS[type(module)]
        elif not enable and type(module) in plain:
            module.__class__ = plain[type(module)]
    return model
