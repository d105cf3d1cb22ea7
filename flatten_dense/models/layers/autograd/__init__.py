"""Custom autograd functions of the memory-efficient training path (`layers/fast_layers.py`).

Each function stores the few tensors its backward cannot cheaply rebuild and recomputes the
elementwise work; each file states the plain equations it computes, and tests/test_autograd_*.py
check its gradients against plain autograd of those equations in float64.
"""

from .focused_kernel import FocusedKernel, focused_kernel_recomputed
from .layer_norm_linear import layer_norm_linear
from .layer_norm_mlp import layer_norm_mlp
from .layer_norm_nchw import layer_norm_to_nchw
from .linear_attention import focused_linear_attention, linear_attention
from .mlp import gelu_linear
from .patch_conv import patch_conv
from .window_attention import window_softmax_attention
from .window_rows import from_windows, to_windows, window_rows

__all__ = [
    "FocusedKernel",
    "focused_kernel_recomputed",
    "focused_linear_attention",
    "from_windows",
    "gelu_linear",
    "layer_norm_linear",
    "layer_norm_mlp",
    "layer_norm_to_nchw",
    "linear_attention",
    "patch_conv",
    "to_windows",
    "window_rows",
    "window_softmax_attention",
]
