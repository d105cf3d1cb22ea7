"""torch's FlopCounterMode sees every GEMM of a model, with or without autograd (no fused op hides one)."""

import pytest
import torch
from autograd_graph import graph_node_names
from torch.utils.flop_counter import FlopCounterMode

import flatten_dense as fd


def _flops(model, images, mode):
    counter = FlopCounterMode(display=False)
    with mode(), counter:
        model(images)
    return counter.get_total_flops()


def test_flatten_pvt_t_at_224_counts_all_its_macs():
    model = fd.create_classifier("flatten_pvt_t").eval()
    images = torch.randn(1, 3, 224, 224)
    macs = _flops(model, images, torch.no_grad) / 2
    assert macs == _flops(model, images, torch.enable_grad) / 2  # the training path counts the same
    assert 2.0e9 < macs < 2.1e9  # 2.04 GMACs (0.22 while the oneDNN linears were invisible)


def test_cpu_softmax_attention_is_counted_like_its_two_matmuls():
    """F.scaled_dot_product_attention runs aten's CPU flash kernel, which torch's counter does not
    know; flatten_dense.benchmark registers it (CSWin's softmax stripes, the softmax PVT)."""
    from flatten_dense.benchmark.flops import count_flops

    q, k, v = (torch.randn(2, 3, 49, 16, requires_grad=True) for _ in range(3))
    explicit = count_flops(lambda: torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v)  # 2 batched matmuls
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v)) == explicit
    assert count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()) > explicit


GEMMS = ("aten.mm", "aten.addmm", "aten.bmm")


def _training_gemm_flops(model, images) -> tuple[int, set[str]]:
    counter = FlopCounterMode(display=False)
    with counter:
        loss = sum(feature.mean() for feature in model(images))
        nodes = graph_node_names(loss)
        loss.backward()
    counts = counter.get_flop_counts()["Global"]
    return sum(flops for op, flops in counts.items() if str(op) in GEMMS), nodes


@pytest.mark.parametrize(
    ("name", "mlp_node"),
    [
        ("flatten_pvt_t", "LayerNormMlpBackward"),
        ("flatten_swin_t", "LayerNormMlpBackward"),
        ("flatten_cswin_t", "GeluLinearBackward"),
    ],
)
def test_training_step_counts_every_gemm_of_the_fast_backward(name, mlp_node):
    """The custom backwards accumulate weight gradients with `addmm(out=)`: torch's counter does
    not know `addmm_`, which hid a fifth of a training step's GEMMs. Fast and plain layers do the
    same products, up to the padded windows and the patch GEMM (within 3%)."""
    torch.manual_seed(0)
    images = torch.randn(1, 3, 224, 224)
    fast, fast_nodes = _training_gemm_flops(fd.create_backbone(name).train(), images)
    plain, plain_nodes = _training_gemm_flops(fd.create_backbone(name, fast_layers=False).train(), images)
    assert mlp_node in fast_nodes and mlp_node not in plain_nodes  # the fast MLP backward ran
    assert abs(fast / plain - 1) < 0.03, (fast, plain)
