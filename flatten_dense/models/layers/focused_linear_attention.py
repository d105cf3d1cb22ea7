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

from .focusing import focused_kernel_parts
from .fused_linear import project_output, split_linear
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

    def project_qkv(self, x: Tensor, *, key_offset: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, N, C) -> q, k, v each (B, N, C); `key_offset` (B, N, C), if given, is added to k."""
        layers = [self.qkv] if self.fused_qkv else [self.q, self.kv]
        q, k, v = split_linear(x, layers, self.dim, residuals=[None, key_offset, None])
        return q, k, v

    def forward(
        self, x: Tensor, grid: tuple[int, int], valid: Tensor | None = None, *, residual: Tensor | None = None
    ) -> Tensor:
        """x: (B, N, C) tokens of a grid (H, W) with N = H * W, row-major.

        valid: optional (B, N) bool, False for padding tokens; they give nothing to k^T v, to the
        normaliser mean or to the depthwise conv. residual: (B, N, C) added to the output (fused
        into the output projection in inference).

        Written for few passes over N x C memory: the focusing factors ||t|| / ||t**p|| of q and k
        are per-token scalars, so q's is applied to the (B, h, N, 1) normaliser instead of q, and the
        normaliser comes out of the same batched matmul as q @ kv (kv gets mean(k) as an extra
        column). The depthwise conv runs once over all heads in channels-last layout, and its
        output is the buffer the attention result is added into.
        """
        batch, tokens, channels = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        position = self.key_position(grid)  # 1 N C, or None
        # k = x W_k + b_k + P: on the oneDNN path (CPU fp32 inference) P rides in the GEMM's epilogue.
        q, k, v = self.project_qkv(x, key_offset=position)
        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 if given
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            scale = self.scale.to(dtype)
            # q and k are this call's own projections: their buffers become the kernels' (inference).
            q_pow, q_ratio = focused_kernel_parts(q, scale, self.focusing_factor, consume=True)  # B N C, B N 1
            k_pow, k_ratio = focused_kernel_parts(k, scale, self.focusing_factor, consume=True)
            num_valid: Tensor | int = tokens  # an int (symbolic under torch.export: no float() of it)
            if valid is not None:
                keep = valid.reshape(batch, tokens, 1).to(dtype)
                k_ratio, v = k_ratio * keep, v * keep
                num_valid = keep.sum(dim=1).clamp(min=1.0).reshape(batch, 1, 1, 1)
            k_phi = k_pow.mul_(k_ratio) if not torch.is_grad_enabled() else k_pow * k_ratio  # phi(k)
            k_heads = k_phi.view(batch, tokens, heads, head_dim).transpose(1, 2)  # B h N d (views)
            v_heads = v.reshape(batch, tokens, heads, head_dim).transpose(1, 2)
            kv = torch.cat([k_heads.transpose(-2, -1) @ v_heads, k_heads.sum(dim=2).unsqueeze(-1)], dim=-1)
            kv = kv / num_valid  # B h d (d + 1): [phi(k)^T v | sum phi(k)] / n
            del k, k_pow, k_phi, k_heads, v_heads  # the N x C key buffer is free from here (peak memory)
            q_heads = q_pow.view(batch, tokens, heads, head_dim).transpose(1, 2)
            out = q_heads @ kv  # B h N (d + 1): q**p @ kv, and q**p . mean(phi(k)) in the last column
            del q, q_pow, q_heads  # and the query buffer
            # phi(q) = q**p * r: out = r (q**p kv) / (r (q**p . mean k) + eps)
            factor = q_ratio.unsqueeze(1) / (q_ratio.unsqueeze(1) * out[..., head_dim:] + NORMALISER_EPS)
            attended = out[..., :head_dim].transpose(1, 2)  # B N h d (a view)
            factor = factor.transpose(1, 2)  # B N h 1
            if self.dwc is not None:
                local = self._depthwise_conv(v, grid, dtype).view(batch, tokens, heads, head_dim)
                del v  # and the values
                out = (
                    local.addcmul_(attended, factor)
                    if not torch.is_grad_enabled()
                    else torch.addcmul(local, attended, factor)
                )
            else:
                out = attended * factor
            out = out.reshape(batch, tokens, channels)
        return project_output(self.proj, self.proj_drop, out.to(x.dtype), residual)

    def _depthwise_conv(self, v: Tensor, grid: tuple[int, int], dtype: torch.dtype) -> Tensor:
        """DWC of every head's v with the shared d-channel kernel, as one C-channel conv. -> (B, N, C).

        v is laid out (B, H, W, C), i.e. NCHW in channels-last memory; the output keeps that
        layout, so it reads back as (B, N, C) without a copy.
        """
        batch, tokens, channels = v.shape
        height, width = grid
        weight, bias = self.dwc.weight.to(dtype), self.dwc.bias.to(dtype)
        if self.num_heads > 1:
            weight, bias = weight.repeat(self.num_heads, 1, 1, 1), bias.repeat(self.num_heads)
        v_grid = v.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        v_grid = v_grid.contiguous(memory_format=torch.channels_last)
        local = F.conv2d(v_grid, weight, bias, padding=self.dwc.padding, groups=channels)
        return local.permute(0, 2, 3, 1).reshape(batch, tokens, channels)
