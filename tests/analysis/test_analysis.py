"""The analysis shows what the code computes: matrices equal the layer, ranks and permutation
behave as the paper argues, and `flatten-dense analyze` writes its files."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from flatten_dense.analysis.attention_matrices import dwc_matrix, focused_matrix, head_tokens, pool_tokens
from flatten_dense.analysis.capture import capture_layer_input, default_layer
from flatten_dense.analysis.images import analysis_image, drawn_picture
from flatten_dense.analysis.permutation import permutation_errors
from flatten_dense.analysis.rank import attention_ranks
from flatten_dense.models import FlattenPVT, FlattenSwin


def _small_pvt() -> FlattenPVT:
    torch.manual_seed(0)
    model = FlattenPVT(
        version=1, embed_dims=(16, 32, 64, 64), num_heads=(1, 2, 2, 2), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2)
    )
    return model.eval()


def _small_swin() -> FlattenSwin:
    torch.manual_seed(0)
    model = FlattenSwin(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)).eval()
    # Scores of order one, as trained models have: with the init's tiny q k^T a narrow head's softmax
    # is exp's linear part, 1 + q k^T, to float64 precision, and its numerical rank falls to ~d.
    for name, param in model.named_parameters():
        if name.endswith("attn.qkv.weight"):
            param.data.mul_(8.0)
    return model


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return analysis_image(size=224)[0]


def test_matrices_reproduce_the_layer_output(image) -> None:
    model = _small_pvt()
    captured = capture_layer_input(model, image)
    layer, grid = captured.layer, captured.grid
    tokens = head_tokens(layer, captured.x, grid)
    heads = []
    for h in range(layer.num_heads):
        v = tokens.head(tokens.v, h)
        local = torch.stack([dwc_matrix(layer, grid, c) @ v[:, c] for c in range(tokens.head_dim)], dim=1)
        heads.append(focused_matrix(tokens, h) @ v + local + layer.dwc.bias.double())
    ours = F.linear(torch.cat(heads, dim=1), layer.proj.weight.double(), layer.proj.bias.double())
    with torch.no_grad():
        reference = layer(captured.x, grid)[0].double()
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_rank_json_values_for_a_small_model(image) -> None:
    model = _small_pvt()
    captured = capture_layer_input(model, image)
    assert captured.name == "block3.0.attn" and captured.grid == (14, 14)  # the deepest grid >= 14 x 14
    ranks, spectra = attention_ranks(captured.layer, captured.x, captured.grid)
    assert ranks["tokens"] == 196 and ranks["head_dim"] == 32
    assert ranks["softmax"] == 196  # full
    assert ranks["linear"] <= 32  # at most the head dimension
    assert ranks["linear_dwc"] == 196  # the DWC restores it
    assert set(spectra) == {"softmax", "linear", "linear_dwc"}


def test_rank_on_a_pooled_grid_for_swin(image) -> None:
    model = _small_swin()
    name = default_layer(model, image)
    captured = capture_layer_input(model, image, name)
    assert name == "layers.1.blocks.0.attn" and captured.grid == (28, 28)
    assert pool_tokens(captured.x, (28, 28), (14, 14)).shape == (1, 196, 32)
    ranks, _ = attention_ranks(captured.layer, captured.x, captured.grid)
    assert (ranks["softmax"], ranks["linear_dwc"]) == (196, 196) and ranks["linear"] <= ranks["head_dim"] == 16


@pytest.mark.parametrize("make", [_small_pvt, _small_swin])
def test_permutation_json_values_for_a_small_model(image, make) -> None:
    model = make()
    for layer in model.modules():  # a trained-like key position table (the released init is zeros)
        if getattr(layer, "positional_encoding", None) is not None:
            torch.nn.init.normal_(layer.positional_encoding, std=0.5)
    captured = capture_layer_input(model, image)
    errors, maps, perm = permutation_errors(captured.block, captured.block_x, captured.grid)
    assert errors["without_position"] < 1e-5  # the block cannot tell scrambled tokens from the original
    assert errors["with_position"] > 1e-2
    assert maps["with_position"].shape == (captured.grid[0] * captured.grid[1],)
    assert sorted(perm.tolist()) == list(range(perm.numel()))


def test_the_picture_needs_no_download(monkeypatch) -> None:
    import flatten_dense.analysis.images as images

    monkeypatch.setattr(images, "_bundled_photograph", lambda: None)  # scikit-image absent
    image, source = images.analysis_image(size=64)
    assert image.shape == (3, 64, 64) and 0 <= float(image.min()) and float(image.max()) <= 1
    assert source == "drawn by flatten-dense"
    assert drawn_picture(32).shape == (32, 32, 3)


@pytest.mark.slow  # ~20 s on an idle 2-core machine (figures), over a minute when it is busy
def test_analyze_writes_every_figure_and_json(tmp_path) -> None:
    from flatten_dense.cli import main

    out = tmp_path / "analysis"
    code = main(["analyze", "--model", "flatten_pvt_t", "--size", "112", "--out", str(out), "depths=[1,1,1,1]"])
    assert code == 0
    names = {p.name for p in out.iterdir()}
    expected = {"attention_maps.png", "rank.png", "rank.json", "focusing.png", "permutation.png", "permutation.json"}
    assert names == expected | {"position_encoding.png"}
    rank = json.loads((out / "rank.json").read_text())
    assert list(rank) == ["tokens", "head_dim", "softmax", "linear", "linear_dwc"]
    assert rank["softmax"] == rank["linear_dwc"] == rank["tokens"] == 196 and rank["linear"] <= rank["head_dim"]
    permutation = json.loads((out / "permutation.json").read_text())
    assert list(permutation) == ["without_position", "with_position"]
    assert permutation["without_position"] < 1e-5 < permutation["with_position"]


def test_permutation_with_the_sinusoidal_table(image) -> None:
    torch.manual_seed(0)
    model = FlattenPVT(
        version=1,
        embed_dims=(16, 32, 64, 64),
        num_heads=(1, 2, 2, 2),
        depths=(1, 1, 1, 1),
        mlp_ratios=(2, 2, 2, 2),
        position_encoding="sinusoidal",
    ).eval()
    captured = capture_layer_input(model, image)
    errors, _, _ = permutation_errors(captured.block, captured.block_x, captured.grid)
    assert errors["without_position"] < 1e-5 < 1e-2 < errors["with_position"]
