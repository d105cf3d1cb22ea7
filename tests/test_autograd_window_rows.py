"""Swin's windows as row gathers (`autograd/window_rows.py`) against the plain pad, roll, partition."""

import pytest
import torch

from flatten_dense.models.layers.autograd import from_windows, to_windows, window_rows
from flatten_dense.models.layers.window_attention import pad_to_multiple, window_partition, window_reverse

CASES = [  # grid, window, shift
    ((14, 14), (7, 7), (0, 0)),  # whole windows
    ((9, 11), (7, 7), (0, 0)),  # padded
    ((9, 11), (7, 7), (3, 3)),  # padded and shifted
    ((16, 12), (7, 7), (3, 3)),
    ((5, 6), (7, 7), (0, 0)),  # one padded window
    ((8, 10), (4, 5), (2, 1)),  # non-square windows and shifts
]


def _plain_windows(x, grid, window, shift):
    """(B, H*W, C) -> (B*nW, wh*ww, C) as SwinBlock._softmax does it."""
    padded = pad_to_multiple(x.view(x.shape[0], *grid, -1), window)
    if any(shift):
        padded = torch.roll(padded, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    return window_partition(padded, window), padded.shape[1:3]


def _plain_map(windows, grid, window, shift, padded):
    """(B*nW, wh*ww, C) -> (B, H*W, C), the inverse."""
    out = window_reverse(windows, window, *padded)
    if any(shift):
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out[:, : grid[0], : grid[1]].reshape(out.shape[0], grid[0] * grid[1], -1)


@pytest.mark.parametrize(("grid", "window", "shift"), CASES)
def test_gathers_equal_the_plain_copies_and_their_gradients(grid, window, shift):
    torch.manual_seed(0)
    x = torch.randn(2, grid[0] * grid[1], 5, dtype=torch.float64, requires_grad=True)
    rows = window_rows(grid, window, shift, x.device)
    plain, padded = _plain_windows(x, grid, window, shift)
    fast = to_windows(x, rows).view(plain.shape)
    assert torch.equal(fast, plain)
    windows = torch.randn(plain.shape, dtype=torch.float64, requires_grad=True)
    back = from_windows(windows.view(2, -1, 5), rows)
    assert torch.equal(back, _plain_map(windows, grid, window, shift, padded))
    weights = torch.randn(plain.shape, dtype=torch.float64)
    (grad_fast,) = torch.autograd.grad((fast * weights).sum(), x)
    (grad_plain,) = torch.autograd.grad((plain * weights).sum(), x)
    assert torch.equal(grad_fast, grad_plain)
    map_weights = torch.randn(back.shape, dtype=torch.float64)
    (grad_fast,) = torch.autograd.grad((back * map_weights).sum(), windows)
    (grad_plain,) = torch.autograd.grad((_plain_map(windows, grid, window, shift, padded) * map_weights).sum(), windows)
    assert torch.equal(grad_fast, grad_plain)  # padding slots get zero gradient


def test_gradcheck():
    rows = window_rows((9, 11), (7, 7), (3, 3), torch.device("cpu"))
    x = torch.randn(2, 99, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: to_windows(t, rows), (x,))
    windows = torch.randn(2, rows.slots.numel(), 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: from_windows(t, rows), (windows,))


def test_slots_fill_every_token_once():
    rows = window_rows((16, 12), (7, 7), (3, 3), torch.device("cpu"))
    assert rows.slots.numel() == 21 * 14 and rows.padding.numel() == 21 * 14 - 16 * 12
    assert torch.equal(rows.slots[rows.tokens], torch.arange(16 * 12))
    assert torch.equal(torch.sort(torch.cat([rows.tokens, rows.padding])).values, torch.arange(21 * 14))


def test_fast_swin_training_step_runs_on_fake_tensors():
    """No data-dependent shapes on the training path: FakeTensorMode (shape propagation, memory
    estimators) runs a fast Swin step with padded, shifted softmax windows."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import flatten_dense as fd

    model = fd.create_backbone("flatten_swin_t", embed_dim=24, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4)).train()
    with FakeTensorMode(allow_non_fake_inputs=True):
        outputs = model(torch.randn(1, 3, 144, 176))
        sum(o.sum() for o in outputs).backward()
    assert [tuple(o.shape) for o in outputs][2] == (1, 96, 9, 11)
