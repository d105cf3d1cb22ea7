"""One branch of CSWin's cross-shaped window attention: focused linear or softmax, with LePE.

A branch receives its share of the block's q, k, v channels on the map and a `StripeLayout`, and
attends within each stripe. Both kinds add LePE, CSWin's locally-enhanced position encoding: a
depthwise 3 x 3 conv (`get_v`) of v on the stripe's grid.

Focused linear branch (FLatten, stages 1-2), for stripe tokens q, k, v (N x C_b, h heads of d):
    k = k + P                          P: `positional_encoding`, learned on the training-size stripe
    phi(t) = focus((relu(t) + 1e-6) / softplus(scale))
    out = phi(q) (phi(k)^T v / n) / (phi(q) . mean(phi(k)) + 1e-6) + DWC(v) + LePE(v)
with DWC a depthwise conv of kernel `kernel_size` on d channels shared by the heads; it runs in
float32 under autocast (t**3 overflows in float16). Softmax branch (stages 3-4):
    out = softmax(q k^T / sqrt(d)) v + LePE(v)
Padding tokens of a stripe (`StripeLayout.valid`) are keys of nothing: masked out of the softmax,
and given no weight in phi(k)^T v, the normaliser mean or n. Their q, k, v are zeros (the stripes
are padded after the projection), so the convs see zeros there, as at the map's border.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .focused_linear_attention import linear_attention_heads
from .focusing import focused_kernel
from .position_encoding import PositionTableResizer, position_encoding_kind, sinusoidal_position_table
from .stripes import StripeLayout

__all__ = ["LinearStripeAttention", "SoftmaxStripeAttention", "stripe_conv"]


def stripe_conv(x: Tensor, conv: nn.Conv2d, stripe: tuple[int, int], *, heads: int = 1) -> Tensor:
    """A depthwise conv of stripe tokens on their grid. x: (B', sh * sw, C) -> same.

    `heads` > 1 applies the conv's C / heads channels to every head alike (FLatten's DWC). The conv
    runs in x's dtype (the weights are cast, the module is left as it is).
    """
    batch, tokens, channels = x.shape
    grid = x.reshape(batch, stripe[0], stripe[1], heads, channels // heads).permute(0, 3, 4, 1, 2)
    grid = grid.reshape(batch * heads, channels // heads, *stripe)  # B'h d sh sw
    bias = None if conv.bias is None else conv.bias.to(x.dtype)
    out = F.conv2d(grid, conv.weight.to(x.dtype), bias, padding=conv.padding, groups=conv.groups)
    return out.reshape(batch, heads, channels // heads, tokens).permute(0, 3, 1, 2).reshape(batch, tokens, channels)


def _heads(x: Tensor, heads: int) -> Tensor:
    """(B', N, C) -> (B', h, N, d)."""
    batch, tokens, channels = x.shape
    return x.reshape(batch, tokens, heads, channels // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """(B', h, N, d) -> (B', N, h * d)."""
    batch, heads, tokens, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * head_dim)


class SoftmaxStripeAttention(nn.Module):
    """CSWin's LePE attention in one branch: softmax within stripes, plus LePE."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_scale = (dim // num_heads) ** -0.5
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, layout: StripeLayout) -> Tensor:
        """q, k, v: (B, H, W, C_b) on the map -> (B, H, W, C_b)."""
        batch = q.shape[0]
        q, k, v = (layout.partition(t) for t in (q, k, v))  # B*nS, N, C_b
        valid = layout.valid(q.device)  # nS N, or None
        mask = None if valid is None else valid.repeat(batch, 1)[:, None, None, :]  # B*nS 1 1 N: True attends
        heads = self.num_heads
        out = F.scaled_dot_product_attention(
            _heads(q, heads), _heads(k, heads), _heads(v, heads), attn_mask=mask, scale=self.head_scale
        )
        out = _merge_heads(out) + stripe_conv(v, self.get_v, layout.stripe)
        return layout.reverse(out)


class LinearStripeAttention(nn.Module):
    """FLatten's focused linear attention in one CSWin branch, plus DWC and LePE.

    `table_grid` is the stripe grid the position encoding was learned on (at training size); it is
    resized to each stripe grid the branch attends over. `position_encoding` "sinusoidal" adds a
    fixed table of each stripe grid instead (no parameters, no resize); "none" adds nothing.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        table_grid: tuple[int, int],
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
        position_encoding: bool | str = "learned",
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.table_grid = table_grid
        self.position_encoding = position_encoding_kind(position_encoding)
        self.focusing_factor = focusing_factor
        head_dim = dim // num_heads
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
        self.dwc = nn.Conv2d(head_dim, head_dim, kernel_size, padding=kernel_size // 2, groups=head_dim)
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        if self.position_encoding == "learned":
            self.positional_encoding = nn.Parameter(torch.zeros(1, table_grid[0] * table_grid[1], dim))
        else:
            self.register_parameter("positional_encoding", None)
        self._resize_position = PositionTableResizer()

    def key_position(self, grid: tuple[int, int]) -> Tensor | None:
        """The (1, N, C_b) table added to the keys of a stripe grid (None without position encoding)."""
        if self.position_encoding == "sinusoidal":
            return sinusoidal_position_table(grid, self.dim, device=self.scale.device, dtype=self.scale.dtype)
        if self.positional_encoding is None:
            return None
        return self._resize_position(self.positional_encoding, grid, self.table_grid)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, layout: StripeLayout) -> Tensor:
        """q, k, v: (B, H, W, C_b) on the map -> (B, H, W, C_b)."""
        batch, dtype = q.shape[0], q.dtype
        position = self.key_position(layout.stripe)  # 1 N C_b, or None
        with torch.autocast(device_type=q.device.type, enabled=False):
            work = torch.promote_types(dtype, torch.float32)  # float32, or float64 if given
            q, k, v = (layout.partition(t.to(work)) for t in (q, k, v))  # B*nS, N, C_b
            scale = self.scale.to(work)
            q_phi = focused_kernel(q, scale, self.focusing_factor)
            k_phi = focused_kernel(k if position is None else k + position.to(work), scale, self.focusing_factor)
            valid = layout.valid(q.device)
            num_keys: Tensor | int = layout.tokens
            if valid is not None:
                keep = valid.repeat(batch, 1).unsqueeze(-1).to(work)  # B*nS N 1
                k_phi = k_phi * keep
                num_keys = keep.sum(dim=1).reshape(-1, 1, 1, 1)  # real keys per stripe
            heads = self.num_heads
            out = linear_attention_heads(_heads(q_phi, heads), _heads(k_phi, heads), _heads(v, heads), num_keys)
            out = _merge_heads(out) + stripe_conv(v, self.dwc, layout.stripe, heads=heads)
            out = out + stripe_conv(v, self.get_v, layout.stripe)
        return layout.reverse(out).to(dtype)
