"""Focused linear attention (FLatten, ICCV 2023): the one implementation both backbone families use.

For input tokens x (B, N, C) on an H x W grid with h heads of width d = C / h:
    q, k, v = projections of x;  k = k + P (key position encoding: learned and resized to the grid,
                                           or a fixed sinusoidal table of the grid)
    phi(t) = focus((relu(t) + 1e-6) / softplus(scale))           (focused_kernel)
    out = phi(q) (phi(k)^T v / n) / (phi(q) . mean(phi(k)) + 1e-6) + DWC(v)
    out = proj(out)
The k^T v product is a d x d matrix per head, so the cost is linear in N. The kernel maths runs in
float32 even under autocast: the focusing power t**3 overflows in float16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .focusing import focused_kernel
from .position_encoding import PositionTableResizer, position_encoding_kind, sinusoidal_position_table

__all__ = ["FocusedLinearAttention", "linear_attention_heads"]

NORMALISER_EPS = 1e-6


def linear_attention_heads(q: Tensor, k: Tensor, v: Tensor, num_valid: Tensor | int) -> Tensor:
    """Mean-normalised linear attention of kernelised q, k. q, k, v: (B, h, N, d) -> (B, h, N, d).

    The plain statement of the maths; `FocusedLinearAttention.forward` computes the same with fewer
    passes over memory (a test pins the two together).

    `num_valid` is the number of real keys (an int, or a (B, 1, 1, 1) tensor when padded keys were
    zeroed), so padding changes neither the k^T v mean nor the normaliser.
    """
    k_mean = k.sum(dim=2, keepdim=True) / num_valid  # B h 1 d
    normaliser = 1.0 / (q @ k_mean.transpose(-2, -1) + NORMALISER_EPS)  # B h N 1
    kv = (k.transpose(-2, -1) @ v) / num_valid  # B h d d
    return (q @ kv) * normaliser


class FocusedLinearAttention(nn.Module):
    """Focused linear attention over one token grid (a window, or the whole feature map).

    `fused_qkv=True` gives one `qkv` projection (the Swin family's key names), False gives `q` and
    `kv` (the PVT family's). `num_keys` is the key grid size at training resolution; the position
    encoding is resized to whatever grid `forward` receives. `position_encoding` is "learned"
    (the released models; True), "sinusoidal" (a fixed table for each grid, no parameters) or
    "none" (False); `rank_restoration=False` drops the DWC (ablations).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        num_keys: int,
        fused_qkv: bool,
        qkv_bias: bool = True,
        focusing_factor: float = 3.0,
        kernel_size: int = 5,
        proj_drop: float = 0.0,
        position_encoding: bool | str = "learned",
        rank_restoration: bool = True,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.focusing_factor = focusing_factor
        self.fused_qkv = fused_qkv
        if fused_qkv:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.scale = nn.Parameter(torch.zeros(1, 1, dim))
        self.position_encoding = position_encoding_kind(position_encoding)
        if self.position_encoding == "learned":
            self.positional_encoding = nn.Parameter(torch.zeros(1, num_keys, dim))
        else:
            self.register_parameter("positional_encoding", None)
        if rank_restoration:
            self.dwc = nn.Conv2d(
                self.head_dim, self.head_dim, kernel_size, padding=kernel_size // 2, groups=self.head_dim
            )
        else:
            self.dwc = None
        self._resize_position = PositionTableResizer()

    def key_position(self, grid: tuple[int, int]) -> Tensor | None:
        """The (1, H*W, C) table added to the keys on `grid` (None without position encoding)."""
        if self.position_encoding == "sinusoidal":
            return sinusoidal_position_table(grid, self.dim, device=self.scale.device, dtype=self.scale.dtype)
        if self.positional_encoding is None:
            return None
        return self._resize_position(self.positional_encoding, grid)

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, N, C) -> q, k, v each (B, N, C)."""
        if self.fused_qkv:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, (k, v) = self.q(x), self.kv(x).chunk(2, dim=-1)
        return q, k, v

    def forward(
        self, x: Tensor, grid: tuple[int, int], valid: Tensor | None = None, *, residual: Tensor | None = None
    ) -> Tensor:
        """x: (B, N, C) tokens of a grid (H, W) with N = H * W, row-major.

        valid: optional (B, N) bool, False for padding tokens; they give nothing to k^T v, to the
        normaliser mean or to the depthwise conv. residual: (B, N, C) added to the output.
        The plain form of the maths; `fast_layers.FastFocusedLinearAttention` computes the same
        with fewer passes over memory (inference) or less stored for backward (training).
        """
        batch, tokens, channels = x.shape
        q, k, v = self.project_qkv(x)  # B N C each
        position = self.key_position(grid)  # 1 N C, or None
        if position is not None:
            k = k + position
        with torch.autocast(device_type=x.device.type, enabled=False):  # kernel maths in float32
            dtype = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 if given
            scale = self.scale.to(dtype)
            q = focused_kernel(q.to(dtype), scale, self.focusing_factor)  # phi(q): B N C
            k = focused_kernel(k.to(dtype), scale, self.focusing_factor)  # phi(k)
            v = v.to(dtype)
            num_valid: Tensor | int = tokens
            if valid is not None:
                keep = valid.reshape(batch, tokens, 1).to(dtype)
                k, v = k * keep, v * keep
                num_valid = keep.sum(dim=1).clamp(min=1.0).reshape(batch, 1, 1, 1)
            heads = [t.reshape(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v)]
            out = linear_attention_heads(*heads, num_valid)  # B h N d
            if self.dwc is not None:
                out = out + self.head_depthwise_conv(heads[2], grid)  # rank restoration: + DWC(v)
            out = out.transpose(1, 2).reshape(batch, tokens, channels)
        out = self.proj_drop(self.proj(out.to(x.dtype)))
        return out if residual is None else out + residual

    def head_depthwise_conv(self, v: Tensor, grid: tuple[int, int]) -> Tensor:
        """The DWC of every head's values with the shared d-channel kernel (the released form).

        v: (B, h, N, d) -> (B, h, N, d), in v's dtype (float32 maths under a half-precision model).
        """
        batch, heads, tokens, head_dim = v.shape
        v_maps = v.reshape(batch * heads, grid[0], grid[1], head_dim).permute(0, 3, 1, 2)  # B*h d H W
        weight, bias = self.dwc.weight.to(v.dtype), self.dwc.bias.to(v.dtype)
        local = F.conv2d(v_maps, weight, bias, padding=self.dwc.padding, groups=head_dim)
        return local.permute(0, 2, 3, 1).reshape(batch, heads, tokens, head_dim)
