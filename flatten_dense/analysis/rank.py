"""Ranks of the equivalent attention matrices (the paper's rank argument, Section 4.2)."""

from __future__ import annotations

import torch
from torch import Tensor

from flatten_dense.analysis.attention_matrices import (
    HeadTokens,
    dwc_matrix,
    focused_matrix,
    head_tokens,
    pool_tokens,
    softmax_matrix,
)
from flatten_dense.models.layers import FocusedLinearAttention

__all__ = ["RANK_GRID", "attention_ranks", "matrix_rank"]

RANK_GRID = (14, 14)


def matrix_rank(matrix: Tensor) -> int:
    """Numerical rank in float64 (tolerance: largest singular value x N x machine epsilon)."""
    return int(torch.linalg.matrix_rank(matrix.double()))


@torch.no_grad()
def attention_ranks(
    layer: FocusedLinearAttention, x: Tensor, grid: tuple[int, int], *, head: int = 0, size=RANK_GRID
) -> tuple[dict[str, int], dict[str, Tensor]]:
    """rank.json's numbers and the singular values of each matrix, on a `size` token grid.

    The layer's input tokens x (1, N, C) are area-averaged to `size` when their grid differs, then
    projected by the layer itself. linear_dwc is the smallest rank over the DWC's channels.
    """
    tokens: HeadTokens = head_tokens(layer, pool_tokens(x, grid, size), size)
    matrices = {"softmax": softmax_matrix(tokens, head), "linear": focused_matrix(tokens, head)}
    if layer.dwc is None:
        raise ValueError("the layer has no depthwise conv (rank_restoration=False): nothing restores its rank")
    with_dwc = [matrices["linear"] + dwc_matrix(layer, size, c) for c in range(tokens.head_dim)]
    ranks = {name: matrix_rank(m) for name, m in matrices.items()}
    dwc_ranks = [matrix_rank(m) for m in with_dwc]
    worst = min(range(len(dwc_ranks)), key=dwc_ranks.__getitem__)
    matrices["linear_dwc"] = with_dwc[worst]
    result = {
        "tokens": size[0] * size[1],
        "head_dim": tokens.head_dim,
        "softmax": ranks["softmax"],
        "linear": ranks["linear"],
        "linear_dwc": dwc_ranks[worst],
    }
    spectra = {name: torch.linalg.svdvals(m) for name, m in matrices.items()}
    return result, spectra
