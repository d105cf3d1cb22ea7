"""The fast paths: the same layers computing the same maths, written for speed and memory.

Each `FastX(X)` keeps its parent's parameters and state-dict keys and overrides `forward` only:
- while autograd records (training), it runs custom autograd functions (`layers/autograd/`) that
  store the projections instead of every intermediate and recompute the elementwise work in
  backward (the memory-efficient training path);
- without autograd on CPU float32 (inference), it runs oneDNN linears with their bias, GELU or
  residual fused in (`fused_linear.py`) and does the elementwise work in place;
- under torch.compile / torch.export it is exactly its parent (the compiler fuses by itself, and
  an exported program holds the plain aten ops).

One switch chooses the path for a whole model: `set_fast_layers(model, True/False)` swaps the class
of every such layer in place (what `PyramidModel(fast_layers=...)` calls); the families register
their fast blocks in `FAST_LAYERS`. Tests pin each class to its parent (outputs and gradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .autograd import (
    focused_linear_attention,
    gelu_linear,
    layer_norm_linear,
    layer_norm_mlp,
    patch_conv,
    window_softmax_attention,
)
from .autograd.depthwise_conv import map_tokens, token_maps
from .focused_linear_attention import NORMALISER_EPS, FocusedLinearAttention
from .focusing import focused_kernel_parts
from .fused_linear import fused_linear, in_inference, project_output, split_linear
from .mlp import DepthwiseConvMlp, Mlp
from .patch_embed import PatchEmbed
from .window_attention import WindowAttention

__all__ = [
    "FAST_LAYERS",
    "INFERENCE_CHUNK_TOKENS",
    "FastDepthwiseConvMlp",
    "FastFocusedLinearAttention",
    "FastMlp",
    "FastPatchEmbed",
    "FastWindowAttention",
    "set_fast_layers",
    "set_recompute_attention",
    "uses_fast_path",
]

INFERENCE_CHUNK_TOKENS = 4096  # tokens per MLP chunk in inference (row-wise maths: same numbers)


def uses_fast_path() -> bool:
    """False under torch.compile / torch.export, where every fast layer is its plain parent."""
    return not torch.compiler.is_compiling()


def _records() -> bool:
    """Autograd is recording (training, or a gradient taken in eval)."""
    return torch.is_grad_enabled()


def _cpu_training_without_autocast(x: Tensor) -> bool:
    """Where the CPU-measured training functions run: on the fast path, recording, on CPU, and
    without autocast (whose casting rules the plain form keeps)."""
    device = x.device.type
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    return uses_fast_path() and _records() and device == "cpu" and not autocast


def _dropout_off(drop: nn.Dropout) -> bool:
    return not drop.training or drop.p == 0


def _fuses_norm(mlp: Mlp | DepthwiseConvMlp, norm: nn.Module) -> bool:
    """Training on the fast path with a LayerNorm in front: norm and fc1 become one function."""
    return uses_fast_path() and _records() and _dropout_off(mlp.drop) and type(norm) is nn.LayerNorm


class FastFocusedLinearAttention(FocusedLinearAttention):
    """Focused linear attention: one autograd function storing q, k, v in training (or, with
    `recompute`, only its input); few passes over memory in inference."""

    recompute: bool = False  # set per model by `set_recompute_attention`

    def forward(
        self, x: Tensor, grid: tuple[int, int], valid: Tensor | None = None, *, residual: Tensor | None = None
    ) -> Tensor:
        if not uses_fast_path():
            return super().forward(x, grid, valid, residual=residual)
        if _records():
            return self._training_forward(x, grid, valid, residual)
        return self._inference_forward(x, grid, valid, residual)

    def _fast_project_qkv(self, x: Tensor, key_offset: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """q, k + key_offset, v (B, N, C): on the oneDNN path one GEMM per piece, the offset in its epilogue."""
        layers = [self.qkv] if self.fused_qkv else [self.q, self.kv]
        q, k, v = split_linear(x, layers, self.dim, residuals=[None, key_offset, None])
        return q, k, v

    def normed_forward(
        self,
        x: Tensor,
        norm: nn.Module,
        grid: tuple[int, int],
        valid: Tensor | None = None,
        *,
        residual: Tensor | None = None,
    ) -> Tensor:
        """self(norm(x)); in training the LayerNorm is fused into the projections (x stored, not norm(x))."""
        if not (uses_fast_path() and _records() and type(norm) is nn.LayerNorm):
            return self(norm(x), grid, valid, residual=residual)
        return self._training_forward(x, grid, valid, residual, norm=norm)

    def _projection(self, x: Tensor, norm: nn.LayerNorm | None, key_offset: Tensor | None) -> Tensor:
        """q | k + key_offset | v (B, N, 3C): one GEMM output, the key offset added inside it."""
        channels = self.dim
        linears = [self.qkv] if self.fused_qkv else [self.q, self.kv]  # q and kv as one GEMM
        if norm is not None:
            return layer_norm_linear(x, norm, *linears, offset=key_offset, offset_start=channels)
        if self.fused_qkv:
            qkv = self.qkv(x)
        else:  # one GEMM over the stacked weights, as in layer_norm_linear
            bias = None if self.q.bias is None else torch.cat((self.q.bias, self.kv.bias))
            qkv = F.linear(x, torch.cat((self.q.weight, self.kv.weight)), bias)
        if key_offset is not None:  # a GEMM output may be written in place (its backward keeps no output)
            qkv[..., channels : 2 * channels] += key_offset
        return qkv

    def _training_forward(
        self,
        x: Tensor,
        grid: tuple[int, int],
        valid: Tensor | None,
        residual: Tensor | None,
        *,
        norm: nn.LayerNorm | None = None,
    ) -> Tensor:
        """A block stores x (or its norm's input), the projections and the output projection's input.

        The attention function takes the projection GEMM's output whole (the key table added into
        k's columns of it), runs the DWC of v inside, and hands back one (B, N, 3C) gradient.
        With `recompute` (selective activation checkpointing) only x is stored: projections, kernels,
        DWC and output projection run again in backward, GEMMs of 4 C x C per token for 4 N x C
        floats less.
        """
        if self.recompute:
            return checkpoint(self._attend_projected, x, grid, valid, residual, norm, use_reentrant=False)
        return self._attend_projected(x, grid, valid, residual, norm)

    def _attend_projected(
        self, x: Tensor, grid: tuple[int, int], valid: Tensor | None, residual: Tensor | None, norm: nn.LayerNorm | None
    ) -> Tensor:
        return project_output(self.proj, self.proj_drop, self._attend(x, grid, valid, norm), residual)

    def _attend(self, x: Tensor, grid: tuple[int, int], valid: Tensor | None, norm: nn.LayerNorm | None) -> Tensor:
        """(norm and) projections, kernels, attention and DWC: x (B, N, C) -> the proj input (B, N, C)."""
        batch, tokens, _ = x.shape
        qkv = self._projection(x, norm, self.key_position(grid))  # k + P: no N x C tensor more
        with torch.autocast(device_type=x.device.type, enabled=False):  # kernel maths in float32 (fp16 overflow)
            dtype = torch.promote_types(qkv.dtype, torch.float32)
            keep = num_valid = dwc = None
            if valid is not None:
                keep = valid.reshape(batch, tokens, 1).to(dtype)
                num_valid = keep.sum(dim=1).clamp(min=1.0).reshape(batch, 1, 1, 1)
            if self.dwc is not None:
                dwc = (*self._channel_dwc(dtype), grid, self.dwc.padding)
            out = focused_linear_attention(
                qkv.to(dtype), self.scale.to(dtype), self.num_heads, self.focusing_factor, keep, num_valid, dwc=dwc
            )
        return out.to(x.dtype)

    def _inference_forward(self, x: Tensor, grid: tuple[int, int], valid: Tensor | None, residual: Tensor | None):
        """Few passes over N x C memory, everything in place on this call's own buffers.

        The focusing factors ||t|| / ||t**p|| of q and k are per-token scalars, so q's is applied to
        the (B, h, N, 1) normaliser instead of q, and the normaliser comes out of the same batched
        matmul as q @ kv (kv gets mean(k) as an extra column). The depthwise conv runs once over
        all heads in channels-last layout, and its output is the buffer the attention result is
        added into.
        """
        batch, tokens, channels = x.shape
        heads, head_dim = self.num_heads, self.head_dim
        # k = x W_k + b_k + P: on the oneDNN path (CPU fp32 inference) P rides in the GEMM's epilogue.
        q, k, v = self._fast_project_qkv(x, self.key_position(grid))
        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = torch.promote_types(q.dtype, torch.float32)
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            scale = self.scale.to(dtype)
            q_pow, q_ratio = focused_kernel_parts(q, scale, self.focusing_factor, consume=True)  # B N C, B N 1
            k_pow, k_ratio = focused_kernel_parts(k, scale, self.focusing_factor, consume=True)
            num_valid: Tensor | int = tokens
            if valid is not None:
                keep = valid.reshape(batch, tokens, 1).to(dtype)
                k_ratio, v = k_ratio * keep, v * keep
                num_valid = keep.sum(dim=1).clamp(min=1.0).reshape(batch, 1, 1, 1)
            k_heads = k_pow.mul_(k_ratio).view(batch, tokens, heads, head_dim).transpose(1, 2)  # phi(k): B h N d
            v_heads = v.reshape(batch, tokens, heads, head_dim).transpose(1, 2)
            kv = torch.cat([k_heads.transpose(-2, -1) @ v_heads, k_heads.sum(dim=2).unsqueeze(-1)], dim=-1)
            kv = kv / num_valid  # B h d (d + 1): [phi(k)^T v | sum phi(k)] / n
            del k, k_pow, k_heads, v_heads  # the N x C key buffer is free from here (peak memory)
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
                out = local.addcmul_(attended, factor)
            else:
                out = attended * factor
            out = out.reshape(batch, tokens, channels)
        return project_output(self.proj, self.proj_drop, out.to(x.dtype), residual)

    def _channel_dwc(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The shared d-channel DWC kernel repeated for every head: weight (C, 1, k, k), bias (C,)."""
        weight, bias = self.dwc.weight.to(dtype), self.dwc.bias.to(dtype)
        if self.num_heads > 1:
            weight, bias = weight.repeat(self.num_heads, 1, 1, 1), bias.repeat(self.num_heads)
        return weight, bias

    def _depthwise_conv(self, v: Tensor, grid: tuple[int, int], dtype: torch.dtype) -> Tensor:
        """DWC of every head's v with the shared d-channel kernel, as one C-channel conv. -> (B, N, C).

        v is laid out (B, H, W, C), i.e. NCHW in channels-last memory; the output keeps that
        layout, so it reads back as (B, N, C) without a copy.
        """
        weight, bias = self._channel_dwc(dtype)
        local = F.conv2d(token_maps(v, grid), weight, bias, padding=self.dwc.padding, groups=v.shape[-1])
        return map_tokens(local)


class FastMlp(Mlp):
    """fc1 -> GELU -> fc2: the GELU output recomputed in backward (training); fused GEMM epilogues
    and token chunks (inference, `residual_inference`)."""

    def forward(self, x: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        if not (uses_fast_path() and _records() and _dropout_off(self.drop)):
            return super().forward(x, grid)
        return self.drop(gelu_linear(self.fc1(x), self.fc2.weight, self.fc2.bias))  # drop: off here (identity)

    def normed_forward(self, x: Tensor, norm: nn.Module, grid: tuple[int, int] | None = None) -> Tensor:
        """mlp(norm(x)); in training one chunked function (`autograd/layer_norm_mlp.py`) storing x and h."""
        if not (_fuses_norm(self, norm)):
            return self(norm(x), grid)
        return self.drop(layer_norm_mlp(x, norm, self.fc1, self.fc2))  # drop: off here (identity)

    def residual_inference(self, x: Tensor, norm: nn.Module, grid: tuple[int, int] | None = None) -> Tensor:
        """x + mlp(norm(x)) without autograd, in token chunks. x: (B, N, C) -> (B, N, C).

        Each chunk goes norm -> fc1 + GELU -> fc2 + residual while it is in cache, so neither the
        normalised tokens nor the hidden activation (up to 8 x C wide: 128 MiB for PVT-T's first
        stage at 1024 x 1024) is ever a full N x C buffer. Row-wise maths: the same numbers.
        """
        if not in_inference(self):
            raise RuntimeError("residual_inference is for eval mode without autograd")
        chunks = [
            fused_linear(
                fused_linear(norm(chunk), self.fc1.weight, self.fc1.bias, gelu=True),
                self.fc2.weight,
                self.fc2.bias,
                residual=chunk,
            )
            for chunk in x.split(INFERENCE_CHUNK_TOKENS, dim=1)
        ]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)


class FastDepthwiseConvMlp(DepthwiseConvMlp):
    """fc1 -> depthwise conv -> GELU -> fc2: GELU recomputed in backward; fused epilogues in inference."""

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        if not (uses_fast_path() and _records() and _dropout_off(self.drop)):
            return super().forward(x, grid)
        return self.drop(gelu_linear(self.dwconv(self.fc1(x), grid), self.fc2.weight, self.fc2.bias))  # identity

    def normed_forward(self, x: Tensor, norm: nn.Module, grid: tuple[int, int]) -> Tensor:
        """mlp(norm(x)); in training the LayerNorm is fused into fc1, which stores x, not norm(x)."""
        if not (_fuses_norm(self, norm)):
            return self(norm(x), grid)
        hidden = self.dwconv(layer_norm_linear(x, norm, self.fc1), grid)
        return self.drop(gelu_linear(hidden, self.fc2.weight, self.fc2.bias))

    def residual_inference(self, x: Tensor, norm: nn.Module, grid: tuple[int, int]) -> Tensor:
        """x + mlp(norm(x)) without autograd, the residual add fused into fc2. (B, N, C) -> same."""
        if not in_inference(self):
            raise RuntimeError("residual_inference is for eval mode without autograd")
        hidden = fused_linear(norm(x), self.fc1.weight, self.fc1.bias)
        hidden = torch.ops.aten.gelu_(self.dwconv(hidden, grid))
        return fused_linear(hidden, self.fc2.weight, self.fc2.bias, residual=x)


class FastWindowAttention(WindowAttention):
    """Swin's windowed softmax attention storing q, k, v in CPU training, not the attention matrix
    (`autograd/window_attention.py`); `attend_projected` takes q, k, v from a projection the block
    fused its LayerNorm into."""

    recompute: bool = False  # read by FastSwinBlock; set per model by `set_recompute_attention`

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if not self.stores_less(x):
            return super().forward(x, mask)
        return self.attend_projected(self.qkv(x), mask)

    def stores_less(self, x: Tensor) -> bool:
        """CPU training without autocast; on CUDA, SDPA's memory-efficient kernel stores no matrix
        either, and under autocast the plain form keeps SDPA's precision rules."""
        return _cpu_training_without_autocast(x)

    def attend_projected(self, qkv: Tensor, mask: Tensor | None) -> Tensor:
        """qkv (B * nW, N, 3C) windows of the qkv projection -> the block's attention output (B * nW, N, C)."""
        return self.project(self.attend_windows(qkv, mask))

    def attend_windows(self, qkv: Tensor, mask: Tensor | None) -> Tensor:
        """qkv (B * nW, N, 3C) windows -> softmax attention (B * nW, N, C), before the output projection."""
        bias = self.position_bias(qkv.shape[1]).to(qkv.dtype)  # h N N
        mask = None if mask is None else mask.to(qkv.dtype)
        return window_softmax_attention(qkv, bias, mask, heads=self.num_heads, scale=self.head_scale)

    def project(self, attended: Tensor) -> Tensor:
        """The output projection (and its dropout) of attention outputs (..., C), a per-token map."""
        return self.proj_drop(self.proj(attended))


class FastPatchEmbed(PatchEmbed):
    """Non-overlapping patch embedding whose conv weight gradient is one GEMM in CPU training
    (`autograd/patch_conv.py`: oneDNN's own is 2-4x slower there); overlapping ones are their parent."""

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        if not (self.pad_to_stride and _cpu_training_without_autocast(x)):
            return super().forward(x)
        return self.tokens(patch_conv(self.padded(x), self.proj.weight, self.proj.bias))


FAST_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    FocusedLinearAttention: FastFocusedLinearAttention,
    Mlp: FastMlp,
    DepthwiseConvMlp: FastDepthwiseConvMlp,
    WindowAttention: FastWindowAttention,
    PatchEmbed: FastPatchEmbed,
}


def set_recompute_attention(model: nn.Module, enable: bool = True) -> nn.Module:
    """Selective activation checkpointing of every attention of `model` (focused linear, and Swin's
    softmax windows where norm1 is fused into them; fast path).

    Each stores only its input in training and runs again in backward, output projection included:
    far less memory than storing q, k, v, far less recomputation than `with_cp` (which runs every
    block's whole forward again: the MLPs too). The plain layers ignore the setting. Returns `model`.
    """
    for module in model.modules():
        if isinstance(module, (FocusedLinearAttention, WindowAttention)):
            module.recompute = enable
    return model


def set_fast_layers(model: nn.Module, enable: bool = True) -> nn.Module:
    """Swap every plain layer of `model` for its fast subclass (or back); returns `model`.

    Only the class changes: parameters, buffers and state-dict keys stay as they are.
    """
    plain = {fast: base for base, fast in FAST_LAYERS.items()}
    for module in model.modules():
        if enable and type(module) in FAST_LAYERS:
            module.__class__ = FAST_LAYERS[type(module)]
        elif not enable and type(module) in plain:
            module.__class__ = plain[type(module)]
    return model
