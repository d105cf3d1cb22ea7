"""The analysis figures (matplotlib, Agg): each function draws one PNG and returns its path."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from flatten_dense.models.layers import focusing_function  # noqa: E402

__all__ = [
    "attention_maps_figure",
    "focusing_figure",
    "permutation_figure",
    "position_encoding_figure",
    "rank_figure",
    "scramble_image",
]

DPI = 110


def _save(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return path


def _no_ticks(axes) -> None:
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])


def _hwc(image: Tensor):
    return image.permute(1, 2, 0).clamp(0, 1).numpy()


def _upsample(grid_values: Tensor, size: tuple[int, int]) -> Tensor:
    """(H, W) token values -> (size) for overlaying, nearest so every token stays a visible square."""
    return F.interpolate(grid_values[None, None].float(), size=size, mode="nearest")[0, 0]


def attention_maps_figure(
    image: Tensor,
    rows: Mapping[str, Sequence[Tensor]],
    points: Sequence[tuple[int, int]],
    grid: tuple[int, int],
    path: Path,
    *,
    title: str,
) -> Path:
    """rows: kind -> per query point an (H*W,) attention row; points: (row, col) token indices.

    The three maps of a query share one colour scale (the largest weight among them), so a
    near-uniform softmax shows as flat and a focused one as peaked."""
    kinds = list(rows)
    size = tuple(image.shape[1:])
    figure, axes = plt.subplots(len(points), len(kinds) + 1, figsize=(2.6 * (len(kinds) + 1), 2.6 * len(points)))
    axes = axes.reshape(len(points), len(kinds) + 1)
    step_y, step_x = size[0] / grid[0], size[1] / grid[1]
    for i, (r, c) in enumerate(points):
        centre = ((c + 0.5) * step_x, (r + 0.5) * step_y)
        axes[i, 0].imshow(_hwc(image))
        axes[i, 0].plot(*centre, marker="*", color="red", markersize=12, markeredgecolor="white")
        axes[i, 0].set_title(f"query token ({r}, {c})", fontsize=8)
        top = max(float(rows[kind][i].max()) for kind in kinds)  # one colour scale per query: sharpness shows
        for j, kind in enumerate(kinds):
            weights = rows[kind][i].reshape(grid)
            heat = _upsample(weights / max(top, 1e-12), size)
            axis = axes[i, j + 1]
            axis.imshow(_hwc(image))
            axis.imshow(heat.numpy(), cmap="jet", alpha=0.55, vmin=0, vmax=1)
            axis.plot(*centre, marker="*", color="white", markersize=9)
            peak = float(weights.max())
            axis.set_title(f"{kind}\nmax weight {peak:.3g} (uniform {1 / weights.numel():.2g})", fontsize=8)
    _no_ticks(axes.flat)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def rank_figure(ranks: Mapping[str, int], spectra: Mapping[str, Tensor], path: Path, *, title: str) -> Path:
    """Bars of the three ranks against N and d, and the singular-value spectra (log scale)."""
    figure, (bars, lines) = plt.subplots(1, 2, figsize=(11, 4))
    names = ["softmax", "linear", "linear_dwc"]
    labels = ["softmax", "focused linear", "focused linear\n+ DWC"]
    colors = ["tab:blue", "tab:orange", "tab:green"]
    values = [ranks[n] for n in names]
    bars.bar(labels, values, color=colors)
    for x, value in enumerate(values):
        bars.text(x, value + 2, str(value), ha="center", fontsize=10)
    bars.axhline(ranks["tokens"], color="black", linestyle="--", linewidth=1)
    bars.text(2.45, ranks["tokens"], f"N = {ranks['tokens']}", va="bottom", ha="right", fontsize=8)
    bars.axhline(ranks["head_dim"], color="gray", linestyle=":", linewidth=1)
    bars.text(2.45, ranks["head_dim"], f"d = {ranks['head_dim']}", va="bottom", ha="right", fontsize=8)
    bars.set_ylim(0, ranks["tokens"] * 1.12)
    bars.set_ylabel("rank of the N x N attention matrix")
    bars.set_title(title, fontsize=9)
    for name, label, color in zip(names, labels, colors):
        values = spectra[name].clamp_min(1e-300)
        lines.semilogy(range(1, len(values) + 1), values.numpy(), color=color, label=label.replace("\n", " "))
    lines.axvline(ranks["head_dim"], color="gray", linestyle=":", linewidth=1)
    lines.set_xlabel("singular value index")
    lines.set_ylabel("singular value")
    lines.set_title("singular values (float64)", fontsize=9)
    lines.legend(fontsize=8)
    lines.grid(alpha=0.3)
    figure.tight_layout()
    return _save(figure, path)


def focusing_figure(path: Path, *, powers: Sequence[float] = (1, 2, 3, 5, 8)) -> Path:
    """The focusing function on 2-D vectors: directions pulled to the nearest axis, norms kept."""
    angles = torch.linspace(0.02, math.pi / 2 - 0.02, 15, dtype=torch.float64)
    vectors = torch.stack([angles.cos(), angles.sin()], dim=1)  # unit vectors in the positive quadrant
    vectors = vectors * torch.linspace(0.6, 1.0, len(angles), dtype=torch.float64)[:, None]
    figure, axes = plt.subplots(1, len(powers) + 1, figsize=(3.1 * (len(powers) + 1), 3.3))
    cmap = plt.get_cmap("viridis")
    for axis, p in zip(axes, powers):
        mapped = focusing_function(vectors, p)
        for i, (x, y) in enumerate(zip(vectors, mapped)):
            color = cmap(i / (len(vectors) - 1))
            axis.annotate(
                "", xy=tuple(y.tolist()), xytext=tuple(x.tolist()), arrowprops=dict(arrowstyle="->", color=color)
            )
            axis.plot(*x.tolist(), "o", color=color, markersize=3)
        axis.plot([0, 1.05], [0, 1.05], color="gray", linestyle=":", linewidth=0.8)
        axis.set_xlim(0, 1.08)
        axis.set_ylim(0, 1.08)
        axis.set_aspect("equal")
        axis.set_title(f"p = {p:g}" + (" (identity)" if p == 1 else ""), fontsize=9)
    ax = axes[-1]
    fine = torch.linspace(0, math.pi / 2, 200, dtype=torch.float64)
    unit = torch.stack([fine.cos(), fine.sin()], dim=1)
    for p in powers:
        out = focusing_function(unit.clamp_min(1e-12), p)
        ax.plot(torch.rad2deg(fine).numpy(), torch.rad2deg(torch.atan2(out[:, 1], out[:, 0])).numpy(), label=f"p={p:g}")
    ax.set_xlabel("input angle (degrees)")
    ax.set_ylabel("output angle")
    ax.set_title("angle in -> angle out", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    figure.suptitle("focusing function f_p(x) = x**p * ||x|| / ||x**p||: same norm, direction towards the nearest axis")
    figure.tight_layout()
    return _save(figure, path)


def scramble_image(image: Tensor, grid: tuple[int, int], perm: Tensor) -> Tensor:
    """Shuffle the image's patches (one per token of `grid`) as `perm` shuffles the tokens."""
    channels, height, width = image.shape
    ph, pw = height // grid[0], width // grid[1]
    cropped = image[:, : ph * grid[0], : pw * grid[1]]
    patches = cropped.reshape(channels, grid[0], ph, grid[1], pw).permute(1, 3, 0, 2, 4).reshape(-1, channels, ph, pw)
    shuffled = patches[perm].reshape(grid[0], grid[1], channels, ph, pw).permute(2, 0, 3, 1, 4)
    return shuffled.reshape(channels, ph * grid[0], pw * grid[1])


def permutation_figure(
    image: Tensor,
    perm: Tensor,
    grid: tuple[int, int],
    token_errors: Mapping[str, Tensor],
    errors: Mapping[str, float],
    path: Path,
    *,
    title: str,
) -> Path:
    figure, axes = plt.subplots(1, 4, figsize=(13, 3.6))
    axes[0].imshow(_hwc(image))
    axes[0].set_title("image", fontsize=9)
    axes[1].imshow(_hwc(scramble_image(image, grid, perm)))
    axes[1].set_title(f"its {grid[0]} x {grid[1]} patches scrambled", fontsize=9)
    scale = max(float(e.max()) for e in token_errors.values()) or 1.0
    for axis, name in zip(axes[2:], ("without_position", "with_position")):
        shown = axis.imshow(token_errors[name].reshape(grid).numpy(), cmap="magma", vmin=0, vmax=scale)
        label = "no position encoding, no DWC" if name == "without_position" else "with position encoding + DWC"
        axis.set_title(f"{label}\nmax |unscrambled - original| = {errors[name]:.2e}", fontsize=9)
        figure.colorbar(shown, ax=axis, fraction=0.046)
    _no_ticks(axes)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return _save(figure, path)


def position_encoding_figure(
    learned: Tensor | None, sinusoidal: Tensor, grid: tuple[int, int], path: Path, *, title: str
) -> Path:
    """Rows: the learned table (resized to `grid`) and the sinusoidal table; columns: six channels
    (three of the row half, three of the column half), then the cosine similarity of the centre
    token's code to every token's."""
    tables = {"learned (resized)": learned, "sinusoidal": sinusoidal}
    half = sinusoidal.shape[-1] // 2  # the sinusoidal table's row channels, then its column channels
    # per half, the sine channels 2j of pairs j = 0, d/16, d/8: wavelengths 2 pi, ~20 and ~63 tokens
    picked = sorted({start + 2 * j for start in (0, half) for j in (0, half // 16, half // 8)})
    figure, axes = plt.subplots(2, len(picked) + 1, figsize=(2.2 * (len(picked) + 1), 5.6), squeeze=False)
    centre = (grid[0] // 2) * grid[1] + grid[1] // 2
    for row, (name, table) in enumerate(tables.items()):
        if table is None:
            for axis in axes[row]:
                axis.axis("off")
            axes[row, 0].text(0, 0.5, f"{name}: the layer has no learned table", fontsize=9)
            continue
        values = table[0].detach().float()  # N C
        for col, channel in enumerate(picked):
            axes[row, col].imshow(values[:, channel].reshape(grid).numpy(), cmap="RdBu_r")
            axes[row, col].set_title(f"{name}\nchannel {channel}", fontsize=7)
        norms = values.norm(dim=-1).clamp_min(1e-12)
        similarity = (values @ values[centre]) / (norms * norms[centre])
        empty = bool(values.abs().max() == 0)
        axes[row, -1].imshow(similarity.reshape(grid).numpy(), cmap="viridis", vmin=-1, vmax=1)
        axes[row, -1].set_title("cosine to centre" + (" (table all zero)" if empty else ""), fontsize=7)
    _no_ticks(axes.flat)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path)
