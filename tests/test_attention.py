"""Properties of focused linear attention that the paper claims, pinned as tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flatten_dense.models.layers import FocusedLinearAttention, focusing_function, linear_attention_heads


def _attention(dim: int = 32, heads: int = 2, side: int = 6, **kwargs) -> FocusedLinearAttention:
    torch.manual_seed(0)
    attn = FocusedLinearAttention(dim, heads, num_keys=side * side, fused_qkv=True, **kwargs)
    with torch.no_grad():
        nn.init.normal_(attn.scale, std=0.5)
        if attn.positional_encoding is not None:
            nn.init.normal_(attn.positional_encoding, std=0.5)
    return attn.eval()


def test_focusing_keeps_norm() -> None:
    x = torch.rand(100, 16, dtype=torch.float64)
    assert torch.allclose(focusing_function(x, 3.0).norm(dim=-1), x.norm(dim=-1))


def test_focusing_proposition_1() -> None:
    """Similarity rises for vectors whose largest entry is on the same axis, falls otherwise."""
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4000, 8, generator=generator, dtype=torch.float64)
    y = torch.rand(4000, 8, generator=generator, dtype=torch.float64)
    # A clear largest entry (the proposition assumes a single largest value).
    for v in (x, y):
        top = v.argmax(dim=-1, keepdim=True)
        v.scatter_(1, top, v.gather(1, top) * 2.0)
    same_axis = x.argmax(-1) == y.argmax(-1)
    assert same_axis.any() and (~same_axis).any()
    before = (x * y).sum(-1)
    after = (focusing_function(x, 16.0) * focusing_function(y, 16.0)).sum(-1)
    assert bool((after[same_axis] > before[same_axis]).all())
    assert bool((after[~same_axis] < before[~same_axis]).all())
    # The released p = 3 already moves the average the right way on both sides.
    after3 = (focusing_function(x, 3.0) * focusing_function(y, 3.0)).sum(-1)
    assert (after3 - before)[same_axis].mean() > 0 > (after3 - before)[~same_axis].mean()


def test_permutation_equivariant_without_position_and_dwc() -> None:
    side = 6
    x = torch.randn(2, side * side, 32)
    perm = torch.randperm(side * side)
    plain = _attention(side=side, position_encoding=False, rank_restoration=False)
    with torch.no_grad():
        assert torch.allclose(plain(x[:, perm], (side, side)), plain(x, (side, side))[:, perm], atol=1e-5)
    full = _attention(side=side)
    with torch.no_grad():
        assert not torch.allclose(full(x[:, perm], (side, side)), full(x, (side, side))[:, perm], atol=1e-3)


def _equivalent_matrices(attn: FocusedLinearAttention, x: torch.Tensor, side: int) -> torch.Tensor:
    """Per head and channel, the N x N matrix M with out[:, c] = M_c v[:, c] (M = attention + DWC)."""
    tokens = side * side
    with torch.no_grad():
        q, k, _ = attn.project_qkv(x)
        k = k + attn.positional_encoding
        from flatten_dense.models.layers import focused_kernel

        q = focused_kernel(q, attn.scale, attn.focusing_factor).reshape(1, tokens, attn.num_heads, -1).transpose(1, 2)
        k = focused_kernel(k, attn.scale, attn.focusing_factor).reshape(1, tokens, attn.num_heads, -1).transpose(1, 2)
        d = attn.head_dim
        # v = one-hot token j in every channel, for all j at once: batch over j.
        eye = torch.eye(tokens, dtype=x.dtype).reshape(tokens, 1, tokens, 1).expand(tokens, attn.num_heads, tokens, d)
        qb, kb = q.expand(tokens, -1, -1, -1), k.expand(tokens, -1, -1, -1)
        attention_part = linear_attention_heads(qb, kb, eye, tokens)  # j h N d  (column j)
        v_grid = eye.reshape(tokens * attn.num_heads, side, side, d).permute(0, 3, 1, 2)
        dwc_part = attn.dwc(v_grid).reshape(tokens, attn.num_heads, d, tokens).transpose(-2, -1)
    return attention_part.permute(1, 3, 2, 0), (attention_part + dwc_part).permute(1, 3, 2, 0)  # h d N(i) N(j)


def test_rank_is_restored_by_dwc() -> None:
    side = 14
    attn = _attention(dim=32, heads=2, side=side).double()
    x = torch.randn(1, side * side, 32, dtype=torch.float64)
    linear_only, with_dwc = _equivalent_matrices(attn, x, side)
    d = attn.head_dim
    for head, channel in ((0, 0), (1, d - 1)):
        assert int(torch.linalg.matrix_rank(linear_only[head, channel])) <= d
        assert int(torch.linalg.matrix_rank(with_dwc[head, channel])) == side * side


def test_padding_contributes_nothing() -> None:
    side = 6
    attn = _attention(side=side)
    x = torch.randn(1, side * side, 32)
    valid = torch.ones(1, side, side, dtype=torch.bool)
    valid[:, 4:, :] = False
    valid[:, :, 5:] = False
    valid = valid.reshape(1, -1)
    garbage = torch.where(valid[..., None], x, torch.randn_like(x) * 100)
    with torch.no_grad():
        out = attn(x, (side, side), valid)
        out_garbage = attn(garbage, (side, side), valid)
    assert torch.allclose(out[valid], out_garbage[valid], atol=1e-5)


def test_padding_keeps_the_mean_over_real_keys() -> None:
    """Without grid-dependent terms, a padded window equals attention over its real tokens only."""
    attn = _attention(side=4, position_encoding=False, rank_restoration=False)
    x = torch.randn(1, 16, 32)
    valid = torch.zeros(1, 16, dtype=torch.bool)
    valid[:, :10] = True
    with torch.no_grad():
        padded = attn(torch.cat([x[:, :10], torch.randn(1, 6, 32)], 1), (4, 4), valid)[:, :10]
        real = attn(x[:, :10], (2, 5))
    assert torch.allclose(padded, real, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_runs_kernel_in_float32(dtype: torch.dtype) -> None:
    side = 8
    attn = _attention(dim=64, heads=2, side=side)
    x = torch.randn(2, side * side, 64) * 30  # large activations: t**3 would overflow float16
    with torch.no_grad():
        reference = attn(x, (side, side))
        with torch.autocast("cpu", dtype=dtype):
            mixed = attn(x, (side, side))
    assert torch.isfinite(mixed).all()
    assert ((mixed.float() - reference).norm() / reference.norm()) < 0.02


def test_fused_forward_equals_the_plain_equations() -> None:
    """The optimised forward computes exactly the plain kernel + mean-normalised attention + DWC
    (the plain functions are also what the rank test above inspects)."""
    from flatten_dense.models.layers import focused_kernel

    side = 6
    attn = _attention(dim=32, heads=2, side=side).double()
    x = torch.randn(2, side * side, 32, dtype=torch.float64)
    with torch.no_grad():
        q, k, v = attn.project_qkv(x)
        k = k + attn.positional_encoding
        q = focused_kernel(q, attn.scale, attn.focusing_factor)
        k = focused_kernel(k, attn.scale, attn.focusing_factor)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(2, side * side, 2, 16).transpose(1, 2)

        out = linear_attention_heads(heads(q), heads(k), heads(v), side * side)  # B h N d
        v_grid = heads(v).reshape(4, side, side, 16).permute(0, 3, 1, 2)
        out = out + attn.dwc(v_grid).reshape(2, 2, 16, side * side).transpose(-2, -1)
        expected = attn.proj(out.transpose(1, 2).reshape(2, side * side, 32))
        assert torch.allclose(attn(x, (side, side)), expected, atol=1e-10)


@pytest.mark.parametrize("fused_qkv", [True, False])
@pytest.mark.parametrize("qkv_bias", [True, False])
@pytest.mark.parametrize("with_norm", [True, False])
def test_fast_training_projection_equals_plain(fused_qkv: bool, qkv_bias: bool, with_norm: bool) -> None:
    """q, k, v from one GEMM (PVT's q and kv stacked), with norm1 fused in or not: the plain gradients."""
    from flatten_dense.models.layers.fast_layers import set_fast_layers

    torch.manual_seed(0)
    plain = FocusedLinearAttention(8, 2, num_keys=16, fused_qkv=fused_qkv, qkv_bias=qkv_bias).double()
    with torch.no_grad():
        plain.scale.normal_()
        plain.positional_encoding.normal_()
    fast = set_fast_layers(FocusedLinearAttention(8, 2, num_keys=16, fused_qkv=fused_qkv, qkv_bias=qkv_bias).double())
    fast.load_state_dict(plain.state_dict())
    norm = nn.LayerNorm(8).double()
    x = torch.randn(2, 20, 8, dtype=torch.float64, requires_grad=True)
    outs = [
        layer.normed_forward(x, norm, (4, 5)) if with_norm and layer is fast else layer(norm(x), (4, 5))
        for layer in (fast, plain)
    ]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-10, atol=1e-12)
    grad = torch.randn_like(outs[0])
    grads = [torch.autograd.grad(out, [x, *layer.parameters()], grad) for out, layer in zip(outs, (fast, plain))]
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
