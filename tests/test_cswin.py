"""FLatten-CSWin at any size: stripe layouts, masked padding, EMA weights in release files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from reference_flatten import make_release_checkpoint

import flatten_dense as fd
from flatten_dense.models.layers import LinearStripeAttention, SoftmaxStripeAttention, StripeLayout
from flatten_dense.models.layers.focusing import focused_kernel
from flatten_dense.models.layers.position_encoding import resize_position_table


def _qkv(grid: tuple[int, int], channels: int, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, *grid, channels, generator=generator, dtype=torch.float64) for _ in range(3)]


def _randomise(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    return module.double()


@pytest.mark.parametrize("branch", [0, 1, None])
def test_stripe_layout_round_trip_and_padding(branch: int | None) -> None:
    layout = StripeLayout.for_branch((10, 13), branch, 4)
    x = torch.randn(2, 10, 13, 3)
    stripes = layout.partition(x)
    assert stripes.shape == (
        2 * (layout.padded[0] // layout.stripe[0]) * (layout.padded[1] // layout.stripe[1]),
        layout.tokens,
        3,
    )
    assert torch.equal(layout.reverse(stripes), x)
    valid = layout.valid()
    if branch is None:
        assert layout.stripe == (10, 13) and valid is None
    else:
        assert layout.stripe == ((10, 4) if branch == 0 else (4, 13))
        assert int(valid.sum()) == 10 * 13  # every real token once, in some stripe
        assert not stripes.flatten(0, 1)[~valid.repeat(2, 1).flatten()].any()  # padding is zeros


def test_stripe_wider_than_the_map_is_the_map() -> None:
    assert StripeLayout.for_branch((5, 3), 0, 7).stripe == (5, 3)
    assert StripeLayout.for_branch((5, 3), 1, 7).stripe == (5, 3)
    assert StripeLayout.for_branch((5, 3), 1, 7).valid() is None


@pytest.mark.parametrize("branch", [0, 1])
def test_softmax_stripes_are_padding_invariant(branch: int) -> None:
    """A padded stripe gives its real tokens what the same stripe gives when cut to its real size."""
    attn = _randomise(SoftmaxStripeAttention(8, 2))
    grid, width = (10, 13), 4
    q, k, v = _qkv(grid, 8)
    padded = attn(q, k, v, StripeLayout.for_branch(grid, branch, width))
    axis = 2 if branch == 0 else 1
    for start in range(0, grid[axis - 1], width):
        part = [t.narrow(axis, start, min(width, grid[axis - 1] - start)) for t in (q, k, v)]
        alone = attn(*part, StripeLayout(tuple(part[0].shape[1:3]), tuple(part[0].shape[1:3])))
        assert torch.allclose(padded.narrow(axis, start, alone.shape[axis]), alone, atol=1e-12)


def test_linear_stripes_leave_padding_out() -> None:
    """The last, partial stripe: keys and values of its real tokens only (mean over them), the
    stripe's position table at its full size, DWC and LePE on the real tokens (zeros beyond)."""
    attn = _randomise(LinearStripeAttention(8, 2, table_grid=(6, 4), kernel_size=3))
    grid, width = (6, 9), 4  # vertical stripes of 4, 4 and 1 (+3 padding) columns
    q, k, v = _qkv(grid, 8)
    out = attn(q, k, v, StripeLayout.for_branch(grid, 0, width))
    q, k, v = (t[:, :, 8:].reshape(2, 6, 8) for t in (q, k, v))  # the real tokens of the last stripe
    position = resize_position_table(attn.positional_encoding, (6, 4), (6, 4)).reshape(6, 4, 8)[:, :1].reshape(1, 6, 8)
    q_phi = focused_kernel(q, attn.scale, 3.0).view(2, 6, 2, 4).transpose(1, 2)
    k_phi = focused_kernel(k + position, attn.scale, 3.0).view(2, 6, 2, 4).transpose(1, 2)
    v_heads = v.view(2, 6, 2, 4).transpose(1, 2)
    kv = k_phi.transpose(-2, -1) @ v_heads / 6
    expected = (q_phi @ kv) / (q_phi @ k_phi.mean(dim=2, keepdim=True).transpose(-2, -1) + 1e-6)
    v_map = v_heads.reshape(4, 6, 1, 4).permute(0, 3, 1, 2)  # per head, d channels on the 6 x 1 grid
    dwc = F.conv2d(v_map, attn.dwc.weight, attn.dwc.bias, padding=1, groups=4).reshape(2, 2, 4, 6).permute(0, 1, 3, 2)
    expected = (expected + dwc).transpose(1, 2).reshape(2, 6, 8)
    lepe = F.conv2d(v.transpose(1, 2).reshape(2, 8, 6, 1), attn.get_v.weight, attn.get_v.bias, padding=1, groups=8)
    expected = expected + lepe.reshape(2, 8, 6).transpose(1, 2)
    assert torch.allclose(out[:, :, 8:].reshape(2, 6, 8), expected, atol=1e-10)


def test_linear_stages_are_global_at_any_size_and_stripes_are_an_option() -> None:
    torch.manual_seed(0)
    image = torch.randn(1, 3, 96, 160)  # stage 1: 24 x 40 tokens
    base = fd.create_backbone("flatten_cswin_b_384", out_indices=(0, 1)).eval()  # two-branch linear stages
    covering = fd.create_backbone("flatten_cswin_b_384", out_indices=(0, 1), linear_stripes=(64, 64, None, None))
    striped = fd.create_backbone("flatten_cswin_b_384", out_indices=(0, 1), linear_stripes=(16, 8, None, None))
    for model in (covering, striped):
        model.load_state_dict(base.state_dict())
        model.eval()
    with torch.no_grad():
        expected = base(image)
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(covering(image), expected))
        maps = striped(image)
    assert [m.shape for m in maps] == [m.shape for m in expected]
    assert not torch.allclose(maps[0], expected[0], atol=1e-3)  # stripes are a different computation
    with pytest.raises(ValueError, match="stage 1 has one branch"):
        fd.create_backbone("flatten_cswin_t", linear_stripes=(16, None, None, None))


def test_stem_keeps_the_released_grid_and_rounds_up_elsewhere() -> None:
    backbone = fd.create_backbone("flatten_cswin_t", out_indices=(0,)).eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 224, 224))[0].shape[-2:] == (56, 56)
        assert backbone(torch.randn(1, 3, 225, 222))[0].shape[-2:] == (57, 56)


def _release_file_with_ema(path: Path) -> tuple[dict, dict]:
    model = make_release_checkpoint("flatten_cswin_t", path, seed=0)
    ema = make_release_checkpoint("flatten_cswin_t", path, seed=1)
    torch.save({"model": model, "state_dict_ema": ema, "epoch": 299, "max_accuracy": 83.1}, path)
    return model, ema


def test_release_file_with_ema_loads_model_by_default_and_ema_on_request(tmp_path: Path, caplog) -> None:
    path = tmp_path / "flatten_cswin_t.pth"
    model, ema = _release_file_with_ema(path)
    key = "stage1.0.attns.0.positional_encoding"
    with caplog.at_level(logging.INFO, logger="flatten_dense.models.checkpoint"):
        default = fd.create_classifier("flatten_cswin_t", pretrained=path)
    assert torch.equal(default.state_dict()[key], model[key])
    assert "'model' weights" in caplog.text and "use_ema=True" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="flatten_dense.models.checkpoint"):
        averaged = fd.create_classifier("flatten_cswin_t", pretrained=path, use_ema=True)
    assert torch.equal(averaged.state_dict()[key], ema[key])
    assert "EMA weights ('state_dict_ema')" in caplog.text
    backbone = fd.create_backbone("flatten_cswin_t", pretrained=path, use_ema=True)
    assert torch.equal(backbone.state_dict()[key], ema[key])


def test_use_ema_on_a_file_without_ema_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "no_ema.pth"
    make_release_checkpoint("flatten_cswin_t", path)
    with pytest.raises(ValueError, match="no EMA weights"):
        fd.create_classifier("flatten_cswin_t", pretrained=path, use_ema=True)
