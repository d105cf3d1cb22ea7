"""torch's FlopCounterMode sees every GEMM of a model, with or without autograd (no fused op hides one)."""

import torch
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
