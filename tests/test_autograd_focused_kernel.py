"""The focused-kernel autograd function against plain autograd of the kernel equations (float64)."""

import torch
from torch.autograd import gradcheck

from flatten_dense.models.layers.autograd import focused_kernel_recomputed
from flatten_dense.models.layers.focusing import focused_kernel


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    scale = (0.3 * torch.randn(1, 1, 6, generator=generator, dtype=torch.float64)).requires_grad_()
    return x, scale


def test_gradcheck():
    x, scale = _inputs()
    assert gradcheck(lambda a, s: focused_kernel_recomputed(a, s, 3.0), (x, scale))


def test_equals_plain_autograd():
    x, scale = _inputs(1)
    grad = torch.randn(2, 5, 6, dtype=torch.float64)
    out = focused_kernel_recomputed(x, scale, 3.0)
    got = torch.autograd.grad(out, (x, scale), grad)
    ref_out = focused_kernel(x, scale, 3.0)
    expected = torch.autograd.grad(ref_out, (x, scale), grad)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_saves_only_its_inputs():
    x, scale = _inputs(2)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        focused_kernel_recomputed(x, scale, 3.0)
    assert sum(t.numel() for t in saved) == x.numel() + scale.numel()


def test_hand_written_vjp_and_in_place_forward_equal_plain_autograd():
    """`focused_kernel_vjp` (what the attention function's backward uses) is the chain rule of phi."""
    from flatten_dense.models.layers.autograd.focused_kernel import focused_kernel_vjp, focused_kernel_without_grad
    from flatten_dense.models.layers.focusing import focused_kernel

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 7, 6, generator=generator, dtype=torch.float64, requires_grad=True)
    x.data[0, 0, :3] = 0.0  # ReLU's kink: gradient 0 there, as autograd's
    scale = (0.3 * torch.randn(1, 1, 6, generator=generator, dtype=torch.float64)).requires_grad_()
    grad = torch.randn(2, 7, 6, generator=generator, dtype=torch.float64)
    phi = focused_kernel(x, scale, 3.0)
    expected = torch.autograd.grad(phi, (x, scale), grad)
    got = focused_kernel_vjp(x.detach(), scale.detach(), 3.0, grad)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(focused_kernel_without_grad(x.detach(), scale.detach(), 3.0), phi.detach())
