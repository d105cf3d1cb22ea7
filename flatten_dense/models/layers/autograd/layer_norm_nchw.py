"""A stage's output norm and its channels-last -> NCHW transpose in cache-sized token blocks, in training.

The stages hand out contiguous NCHW maps, normalised over C. Plain autograd runs the norm over the
whole map (one full-size buffer), transposes it into a second one, and in backward transposes the
gradient into a third before the norm's backward writes a fourth: four fresh maps the size of the
largest stage output (16 MiB for PVT-T at 1024 x 1024, 24 MiB for Swin-T), each a cold transposing
copy or a first touch of new pages. Here forward and backward walk blocks of a few thousand tokens:
the norm, the transpose and the norm's backward of a block happen while it is in cache, and the
only full-size buffers are the output and the input gradient. Plain equations, per token block:
    y_b = LN(x_b) (B, T, C);  out[:, :, b] = y_b^T
    g_b = grad[:, :, b]^T;  (dx_b, dgamma, dbeta) += LN's backward of g_b
Stored: x (the stage's tokens, kept anyway by the next stage's patch embedding), mean and rstd.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

__all__ = ["LayerNormToNchw", "layer_norm_to_nchw"]

BLOCK_ELEMENTS = 1 << 18  # tokens x channels per block: 1 MiB of float32, well inside L2


def token_blocks(tokens: int, channels: int) -> list[slice]:
    """Consecutive token ranges of about BLOCK_ELEMENTS values each."""
    step = max(1, BLOCK_ELEMENTS // channels)
    return [slice(start, start + step) for start in range(0, tokens, step)]


class LayerNormToNchw(torch.autograd.Function):
    """tokens (B, N, C) -> LayerNorm over C, laid out (B, C, N); saves the tokens, mean and rstd.
    gamma and beta (None without elementwise affine) have the tokens' dtype (mean and rstd do too)."""

    @staticmethod
    def forward(ctx, tokens: Tensor, gamma: Tensor | None, beta: Tensor | None, eps: float) -> Tensor:
        batch, count, channels = tokens.shape
        out = tokens.new_empty(batch, channels, count)
        mean, rstd = tokens.new_empty(batch, count, 1), tokens.new_empty(batch, count, 1)
        for block in token_blocks(count, channels):
            normed, mean[:, block], rstd[:, block] = torch.ops.aten.native_layer_norm(
                tokens[:, block], [channels], gamma, beta, eps
            )
            out[:, :, block] = normed.transpose(1, 2)
        ctx.save_for_backward(tokens, gamma, beta, mean, rstd)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None, None]:
        tokens, gamma, beta, mean, rstd = ctx.saved_tensors
        need = ctx.needs_input_grad
        channels = tokens.shape[-1]
        grad_tokens = torch.empty_like(tokens) if need[0] else None
        grad_gamma = torch.zeros_like(gamma) if gamma is not None and need[1] else None
        grad_beta = torch.zeros_like(beta) if beta is not None and need[2] else None
        mask = [need[0], grad_gamma is not None, grad_beta is not None]
        for block in token_blocks(tokens.shape[1], channels):
            grad_block = grad[:, :, block].transpose(1, 2).contiguous()  # B T C
            # the kernel reads its inputs as dense rows: a token block of a batch of 2+ is not
            x_block, mean_block, rstd_block = (t[:, block].contiguous() for t in (tokens, mean, rstd))
            grad_x, grad_gamma_b, grad_beta_b = torch.ops.aten.native_layer_norm_backward(
                grad_block, x_block, [channels], mean_block, rstd_block, gamma, beta, mask
            )
            if grad_tokens is not None:
                grad_tokens[:, block] = grad_x
            if grad_gamma is not None:
                grad_gamma += grad_gamma_b
            if grad_beta is not None:
                grad_beta += grad_beta_b
        return grad_tokens, grad_gamma, grad_beta, None


def layer_norm_to_nchw(tokens: Tensor, norm: nn.LayerNorm, grid: tuple[int, int]) -> Tensor:
    """norm(tokens) for tokens (B, H*W, C) on `grid`, as a contiguous (B, C, H, W) map."""
    batch, _, channels = tokens.shape
    out = LayerNormToNchw.apply(tokens, norm.weight, norm.bias, norm.eps)
    return out.view(batch, channels, *grid)
