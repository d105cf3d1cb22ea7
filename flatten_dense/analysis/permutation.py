"""Permutation equivariance: without position information attention cannot see a scrambled image.

The block that holds the layer runs on its real input tokens and on the same tokens scrambled by
a random permutation (the image's patches shuffled). Without the key position encoding and the
DWC (a copy of the block with both removed) the output is the scrambled output: unscrambling
gives it back to float rounding. With them (the block as built) it is not.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

__all__ = ["permutation_errors", "without_position"]


def without_position(block: nn.Module) -> nn.Module:
    """A copy of `block` whose attention has no key position encoding and no DWC."""
    stripped = copy.deepcopy(block)
    stripped.attn.position_encoding = "none"  # learned or sinusoidal: no key table any more
    stripped.attn.positional_encoding = None
    stripped.attn.dwc = None
    return stripped


@torch.no_grad()
def _token_errors(block: nn.Module, x: Tensor, grid: tuple[int, int], perm: Tensor) -> Tensor:
    """Per token: |unscramble(block(scrambled x)) - block(x)| max over channels, (N,)."""
    out = block(x, grid)
    scrambled = block(x[:, perm], grid)
    unscrambled = torch.empty_like(scrambled)
    unscrambled[:, perm] = scrambled
    return (unscrambled - out).abs().amax(dim=-1)[0]


@torch.no_grad()
def permutation_errors(
    block: nn.Module, x: Tensor, grid: tuple[int, int], *, seed: int = 0
) -> tuple[dict[str, float], dict[str, Tensor], Tensor]:
    """permutation.json's numbers, the per-token error maps and the permutation used."""
    block = block.eval()
    perm = torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(seed))
    maps = {
        "without_position": _token_errors(without_position(block), x, grid, perm),
        "with_position": _token_errors(block, x, grid, perm),
    }
    return {name: float(errors.max()) for name, errors in maps.items()}, maps, perm
