"""The fast layers of whole models against the plain forms (float64, small inputs): gradients in training,
outputs in inference."""

import copy

import pytest
import torch
from autograd_graph import graph_node_names

import flatten_dense as fd
from flatten_dense.models.layers import FocusedLinearAttention, Mlp
from flatten_dense.models.layers.autograd import mlp as mlp_function
from flatten_dense.models.layers.fast_layers import (
    FastFocusedLinearAttention,
    FastMlp,
    FastPatchEmbed,
    FastWindowAttention,
    set_fast_layers,
)
from flatten_dense.models.layers.patch_embed import PatchEmbed
from flatten_dense.models.layers.window_attention import padded_size

# Narrow, shallow versions of the families: the same layers, seconds instead of a minute in float64.
SMALL_PVT = {"embed_dims": (16, 32, 40, 64), "depths": (1, 1, 1, 1)}
SMALL_SWIN = {"embed_dim": 24, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4), "linear_window": 7}
SMALL_GLOBAL_SWIN = {"embed_dim": 24, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 2, 4)}  # norm1 fused into qkv


def _pair(name, **kwargs):
    torch.manual_seed(0)
    fast = fd.create_backbone(name, out_indices=(0, 1, 2, 3), **kwargs).double()
    for module in fast.modules():  # drop path off: both runs see the same graph, free of randomness
        if hasattr(module, "p") and isinstance(module.p, float):
            module.p = 0.0
    plain = copy.deepcopy(fast)
    plain.set_fast_layers(False)
    return fast.train(), plain.train()


def _grads(model, images):
    model.zero_grad(set_to_none=True)
    outputs = model(images)
    sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in outputs).backward()
    return outputs, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("name", "size", "kwargs"),
    [
        ("flatten_pvt_t", (64, 96), SMALL_PVT),
        ("flatten_pvt_t", (60, 90), SMALL_PVT),  # maps no multiple of the stride: padded patch embeddings
        ("flatten_pvt_v2_b0", (64, 64), SMALL_PVT),
        ("flatten_swin_t", (96, 80), SMALL_SWIN),  # padded linear windows
        ("flatten_swin_t", (64, 96), SMALL_GLOBAL_SWIN),  # one global window
        ("flatten_swin_t", (144, 176), SMALL_GLOBAL_SWIN),  # stage 3: padded and shifted softmax windows
    ],
)
@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recomputed"])
@pytest.mark.parametrize("chunk_elements", [None, 1000], ids=["one_chunk", "token_chunks"])
def test_gradients_equal_plain_autograd(monkeypatch, name, size, kwargs, recompute, chunk_elements):
    """`token_chunks`: every MLP and attention of these small models runs over many token chunks,
    as the real ones do at detection sizes (about 1M values per chunk)."""
    if chunk_elements is not None:
        monkeypatch.setattr(mlp_function, "CHUNK_ELEMENTS", chunk_elements)
    fast, plain = _pair(name, **kwargs)
    fast.set_recompute_attention(recompute)
    assert any(isinstance(m, FastFocusedLinearAttention) for m in fast.modules())
    assert not any(isinstance(m, FastFocusedLinearAttention) for m in plain.modules())
    images = torch.randn(2, 3, *size, dtype=torch.float64)
    if size == (144, 176):  # the windows of the shifted, padded softmax stage are row gathers
        assert "RowGatherBackward" in graph_node_names(*fast(images))
    out_fast, grads_fast = _grads(fast, images)
    out_plain, grads_plain = _grads(plain, images)
    for a, b in zip(out_fast, out_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert grads_fast.keys() == grads_plain.keys()
    for key in grads_plain:
        torch.testing.assert_close(grads_fast[key], grads_plain[key], rtol=1e-8, atol=1e-11, msg=key)


@pytest.mark.parametrize(("name", "kwargs"), [("flatten_pvt_t", SMALL_PVT), ("flatten_swin_t", SMALL_GLOBAL_SWIN)])
def test_attention_hands_back_one_packed_gradient(name, kwargs):
    """In training each focused attention (DWC inside) takes its projection GEMM's output whole, so
    the graph holds no unbind of q, k, v (whose backward stacks three gradients into a fresh buffer)
    and no separate conv of v; the plain layers have both."""
    fast, plain = _pair(name, **kwargs)
    images = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    fast_nodes, plain_nodes = graph_node_names(*fast(images)), graph_node_names(*plain(images))
    assert "FocusedLinearAttentionFunctionBackward" in fast_nodes
    assert not {"UnbindBackward0", "SplitBackward0", "ConvolutionBackward0"} & fast_nodes
    assert {"SplitBackward0", "ConvolutionBackward0"} <= plain_nodes


def test_switch_keeps_state_dict_and_goes_back():
    model = fd.create_backbone("flatten_pvt_t", out_indices=(3,))
    keys = list(model.state_dict())
    assert model.fast_layers
    model.set_fast_layers(False)
    assert type(model.block1[0].attn) is FocusedLinearAttention and type(model.block1[0].mlp) is Mlp
    assert type(model.patch_embed2) is PatchEmbed
    model.set_fast_layers(True)
    assert type(model.block1[0].attn) is FastFocusedLinearAttention and type(model.block1[0].mlp) is FastMlp
    assert type(model.patch_embed2) is FastPatchEmbed
    assert list(model.state_dict()) == keys
    plain = set_fast_layers(copy.deepcopy(model), False)
    assert list(plain.state_dict()) == keys


@pytest.mark.parametrize("recompute", [False, True], ids=["stored", "recomputed"])
def test_with_cp_on_top(recompute):
    fast, plain = _pair("flatten_pvt_t", **SMALL_PVT)
    fast.set_grad_checkpointing(True)
    fast.set_recompute_attention(recompute)
    images = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    _, grads_fast = _grads(fast, images)
    _, grads_plain = _grads(plain, images)
    for key in grads_plain:
        torch.testing.assert_close(grads_fast[key], grads_plain[key], rtol=1e-8, atol=1e-11, msg=key)


@pytest.mark.parametrize(
    ("name", "size", "kwargs"),
    [
        ("flatten_pvt_t", (64, 96), SMALL_PVT),
        ("flatten_pvt_t", (60, 90), SMALL_PVT),  # maps no multiple of the stride: padded patch embeddings
        ("flatten_pvt_v2_b0", (64, 64), SMALL_PVT),
        ("flatten_swin_t", (96, 80), SMALL_SWIN),
    ],
)
def test_fast_inference_equals_the_plain_forward(name, size, kwargs):
    """The in-place, fused inference path computes the plain forward's numbers (float64: rounding only)."""
    fast, plain = _pair(name, **kwargs)
    fast.eval(), plain.eval()
    images = torch.randn(1, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(fast(images), plain(images), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def _saved_bytes(model, images) -> int:
    """Bytes of the distinct storages autograd keeps for backward (parameters and buffers aside)."""
    params = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *model.buffers()]}
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(images)
    return sum(storages.values())


@pytest.mark.parametrize(("name", "kwargs"), [("flatten_pvt_t", SMALL_PVT), ("flatten_swin_t", SMALL_GLOBAL_SWIN)])
def test_recompute_attention_stores_the_attention_no_more(name, kwargs):
    """Per attention, its projections' inputs and outputs (4 N x C floats: q, k, v and the output
    projection's input) leave the saved set, with the kernels' and LayerNorms' small per-token and
    per-head tensors (under 30% more at this size); the MLPs' stored tensors stay."""
    fast = fd.create_backbone(name, out_indices=(0, 1, 2, 3), **kwargs).train()
    images = torch.randn(1, 3, 64, 96)
    stored = _saved_bytes(fast, images)
    fast.set_recompute_attention(True)
    recomputed = _saved_bytes(fast, images)
    grids = [(64 // 4 >> stage, 96 // 4 >> stage) for stage in range(4)]  # stage i: stride 4 * 2**i
    projections = 0
    for module in fast.modules():
        if isinstance(module, (FastFocusedLinearAttention, FastWindowAttention)):
            dim = module.qkv.in_features if hasattr(module, "qkv") else module.q.in_features
            height, width = grids[list(fast.stage_channels).index(dim)]
            if isinstance(module, FastWindowAttention):  # softmax windows store the padded grid
                height, width = padded_size(height, module.window), padded_size(width, module.window)
            projections += height * width * 4 * dim * 4
    assert projections and projections <= stored - recomputed <= 1.3 * projections
