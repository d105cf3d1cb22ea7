"""Building blocks shared by the FLatten backbone families (one idea per file)."""

from .focused_linear_attention import FocusedLinearAttention, linear_attention_heads
from .focusing import focused_kernel, focusing_function
from .fused_linear import in_inference
from .mlp import DepthwiseConvMlp, Mlp
from .patch_embed import PatchEmbed
from .position_encoding import PositionTableResizer, resize_position_table
from .spatial_reduction_attention import SpatialReductionAttention
from .stripe_attention import LinearStripeAttention, SoftmaxStripeAttention, stripe_conv
from .stripes import StripeLayout
from .window_attention import (
    WindowAttention,
    pad_to_multiple,
    padded_size,
    shifted_window_mask,
    window_partition,
    window_reverse,
)

__all__ = [
    "DepthwiseConvMlp",
    "FocusedLinearAttention",
    "LinearStripeAttention",
    "Mlp",
    "PatchEmbed",
    "PositionTableResizer",
    "SoftmaxStripeAttention",
    "SpatialReductionAttention",
    "StripeLayout",
    "WindowAttention",
    "focused_kernel",
    "focusing_function",
    "in_inference",
    "linear_attention_heads",
    "pad_to_multiple",
    "padded_size",
    "resize_position_table",
    "shifted_window_mask",
    "stripe_conv",
    "window_partition",
    "window_reverse",
]
