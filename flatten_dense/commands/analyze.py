"""`flatten-dense analyze --model NAME [--pretrained FILE] [--image PATH] [--layer NAME] --out DIR`.

Looks at one focused linear attention layer of a model on one picture and writes, under `--out`
only: attention_maps.png, rank.png + rank.json, focusing.png, permutation.png + permutation.json
and position_encoding.png (see `flatten_dense/analysis`). Nothing is downloaded: without
`--image` the picture is scikit-image's bundled photograph when installed, else one drawn here.
Without `--pretrained` the weights are random (seeded): the rank and permutation properties hold
for any weights, the attention maps only mean something with trained ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from flatten_dense.commands.common import write_json

__all__ = ["analyze", "default_points"]

FIGURES = ("attention_maps", "rank", "focusing", "permutation", "position_encoding")


def default_points(grid: tuple[int, int]) -> list[tuple[int, int]]:
    """Three query tokens: the centre, upper left and lower right quarters."""
    height, width = grid
    return [(height // 2, width // 2), (height // 4, width // 4), (3 * height // 4, 3 * width // 4)]


def _backbone_options(options: Sequence[str]) -> dict[str, Any]:
    parsed = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"backbone option {item!r} is not key=value")
        parsed[key] = yaml.safe_load(value)  # as a config file would read it: 3, 0.5, sinusoidal, [1, 2]
    return parsed


def analyze(
    model: str,
    *,
    out_dir: str | Path,
    pretrained: str | Path | None = None,
    image: str | Path | None = None,
    layer: str | None = None,
    size: int = 224,
    head: int = 0,
    points: Sequence[tuple[int, int]] | None = None,
    options: Sequence[str] = (),
    seed: int = 0,
) -> dict[str, Any]:
    """Write the five figures (and two JSON files) for `model`; returns {name: path or values}."""
    from flatten_dense.analysis import figures
    from flatten_dense.analysis.attention_matrices import (
        focused_matrix,
        head_tokens,
        relu_linear_matrix,
        softmax_matrix,
    )
    from flatten_dense.analysis.capture import capture_layer_input
    from flatten_dense.analysis.images import analysis_image
    from flatten_dense.analysis.permutation import permutation_errors
    from flatten_dense.analysis.rank import attention_ranks
    from flatten_dense.core.run_logging import progress
    from flatten_dense.models import create_backbone
    from flatten_dense.models.layers.position_encoding import sinusoidal_position_table

    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    network = create_backbone(model, pretrained=pretrained, **_backbone_options(options)).eval()
    picture, source = analysis_image(image, size=size)
    captured = capture_layer_input(network, picture, layer)
    grid, attn = captured.grid, captured.layer
    if not 0 <= head < attn.num_heads:
        raise ValueError(f"--head {head} is out of range: {captured.name} has {attn.num_heads} heads")
    weights = f"weights {Path(pretrained).name}" if pretrained else f"random weights (seed {seed})"
    title = f"{model} {captured.name} ({grid[0]} x {grid[1]} tokens, {weights}; image: {source})"
    result: dict[str, Any] = {"model": model, "layer": captured.name, "grid": list(grid), "image": source}
    points = list(points) if points else default_points(grid)
    for row, col in points:
        if not (0 <= row < grid[0] and 0 <= col < grid[1]):
            raise ValueError(f"query point ({row}, {col}) is outside the layer's {grid[0]} x {grid[1]} grid")

    def attention_maps() -> None:
        tokens = head_tokens(attn, captured.x, grid)
        index = [r * grid[1] + c for r, c in points]
        kinds = {
            "softmax": softmax_matrix,
            "linear (ReLU)": relu_linear_matrix,
            "focused linear": focused_matrix,
        }
        rows = {kind: list(matrix(tokens, head)[index]) for kind, matrix in kinds.items()}  # points x N
        result["attention_maps"] = figures.attention_maps_figure(
            picture, rows, points, grid, out_dir / "attention_maps.png", title=f"{title}; head {head}"
        )

    def rank() -> None:
        ranks, spectra = attention_ranks(attn, captured.x, grid, head=head)
        write_json(out_dir / "rank.json", ranks)
        result["rank"] = ranks
        pooled = "" if tuple(grid) == (14, 14) else f" (input tokens area-averaged from {grid[0]} x {grid[1]})"
        figures.rank_figure(ranks, spectra, out_dir / "rank.png", title=f"{model} {captured.name}, head {head}{pooled}")

    def focusing() -> None:
        result["focusing"] = figures.focusing_figure(out_dir / "focusing.png")

    def permutation() -> None:
        errors, token_errors, perm = permutation_errors(captured.block, captured.block_x, grid, seed=seed)
        write_json(out_dir / "permutation.json", errors)
        result["permutation"] = errors
        block_name = captured.name.rsplit(".", 1)[0]
        figures.permutation_figure(
            picture, perm, grid, token_errors, errors, out_dir / "permutation.png", title=f"{model} {block_name}"
        )

    def position_encoding() -> None:
        learned = attn.key_position(grid) if attn.position_encoding == "learned" else None
        table = sinusoidal_position_table(grid, attn.dim)
        result["position_encoding"] = figures.position_encoding_figure(
            learned, table, grid, out_dir / "position_encoding.png", title=f"{title}: key position tables"
        )

    steps = {
        "attention_maps": attention_maps,
        "rank": rank,
        "focusing": focusing,
        "permutation": permutation,
        "position_encoding": position_encoding,
    }
    for name in progress(list(steps), desc="analyze"):
        steps[name]()
    print(f"{model} {captured.name}: rank {result['rank']}; permutation {result['permutation']}")
    print(f"figures in {out_dir}")
    return result
