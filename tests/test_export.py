"""Export at any size: torch.export and ONNX (dynamo) with dynamic H and W, equal to eager.

Tracing a whole backbone takes a minute or more on a small CPU: these are marked slow.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import flatten_dense as fd
from flatten_dense.cli import main
from flatten_dense.commands.export import _ListOutputs, export_module
from flatten_dense.models.layers import window_attention
from flatten_dense.models.layers.window_attention import padded_size

# (model, two input sizes, smallest H/W): Swin's stage-4 map must be wider than its 7-window, CSWin's
# stage-3 map at least as wide as its 7-wide softmax stripes. One size per model pads the softmax
# stages' maps to whole windows/stripes, the other tiles them exactly (Swin 448: 28 x 28 and 14 x 14;
# CSWin 224: 14 x 14), so a graph specialised to either case fails at the other.
# Swin-T exports in about 25 s once the padded sizes are one sympy form (`padded_size`; it ran over
# 25 minutes before) and runs in the normal suite; CSWin-T (about 3 min) keeps the `heavy` marker,
# which `make test` deselects and `make test-heavy` runs.
HEAVY = pytest.mark.heavy
CASES = [
    ("flatten_pvt_t", ((64, 96), (128, 64)), 64),
    ("flatten_swin_t", ((256, 288), (448, 320)), 256),
    pytest.param("flatten_cswin_t", ((128, 160), (224, 128)), 128, marks=HEAVY),  # one 7-wide stripe in stage 3
]
TOLERANCE = 1e-4


def _max_difference(expected: tuple[torch.Tensor, ...], got) -> float:
    return max(float((torch.as_tensor(b) - a).abs().max()) for a, b in zip(expected, got, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize(("name", "sizes", "min_size"), CASES)
def test_torch_export_with_dynamic_height_and_width(tmp_path: Path, name: str, sizes, min_size: int) -> None:
    model = _ListOutputs(fd.create_backbone(name)).eval()
    path = export_module(model, tmp_path / f"{name}.pt2", fmt="pt2", example_size=sizes[0], min_size=min_size)
    program = torch.export.load(path).module()
    for size in sizes:
        image = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected, got = model(image), program(image)
        assert [tuple(t.shape[-2:]) for t in got] == [(size[0] // s, size[1] // s) for s in (4, 8, 16, 32)]
        assert _max_difference(expected, got) < TOLERANCE


@pytest.mark.heavy  # needs the onnx extra; about 1 min per model on the loaded 2-core CPU (Swin-T 65 s, CSWin-T 4 min)
@pytest.mark.parametrize(("name", "sizes", "min_size"), CASES)
def test_onnx_dynamo_export_runs_in_onnxruntime_at_two_sizes(tmp_path: Path, name: str, sizes, min_size: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _ListOutputs(fd.create_backbone(name)).eval()
    path = export_module(model, tmp_path / f"{name}.onnx", fmt="onnx", example_size=sizes[0], min_size=min_size)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in sizes:
        image = torch.randn(1, 3, *size)
        with torch.no_grad():
            expected = model(image)
        got = session.run(None, {"images": image.numpy()})
        assert [o.shape[-2:] for o in got] == [(size[0] // s, size[1] // s) for s in (4, 8, 16, 32)]
        assert _max_difference(expected, got) < TOLERANCE


@pytest.mark.heavy
def test_export_command_for_a_segmentation_config(tmp_path: Path) -> None:
    out = tmp_path / "segmentor.pt2"
    config = "configs/segmentation/demo_sem_fpn_flatten_pvt_v2_b0_synthetic.yaml"
    assert main(["export", config, "--format", "pt2", "--out", str(out), "--max-size", "512"]) == 0
    program = torch.export.load(out).module()
    logits = program(torch.randn(1, 3, 64, 96))[0]
    assert logits.shape[0] == 1 and logits.shape[-2:] == (64, 96)


def test_export_command_rejects_an_unknown_target_in_one_line(tmp_path: Path, capsys) -> None:
    assert main(["export", "no_such_model", "--format", "onnx", "--out", str(tmp_path / "x.onnx")]) == 2
    assert "neither a zoo model" in capsys.readouterr().err


def test_symbolic_swin_mask_equals_the_eager_mask() -> None:
    """The mask built from tensor comparisons (used while exporting) masks the same pairs."""
    for padded, real, shift in [
        ((14, 21), (10, 21), (3, 3)),
        ((14, 14), (14, 14), (3, 3)),
        ((21, 14), (16, 9), (0, 0)),
    ]:
        symbolic = window_attention._symbolic_shifted_window_mask(padded, real, (7, 7), shift)
        eager = window_attention.shifted_window_mask(padded, real, (7, 7), shift)
        assert torch.equal(symbolic, torch.zeros_like(symbolic) if eager is None else eager)


def test_padded_sizes_simplify_symbolically() -> None:
    """The root of the slow Swin export: a padded side must divide by its window without sympy proving
    anything. `padded_size` gives `7 * ((s + 6) // 7)`, so `// 7 * 7` and the pad amount added back
    fold at once; `s + (-s) % 7` (the old padding) is equal but does not fold."""
    from torch._dynamo.source import ConstantSource
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    env = ShapeEnv()
    side = env.create_symintnode(env.create_symbol(16, ConstantSource("side")), hint=16)
    padded = padded_size(side, 7)
    assert (padded // 7 * 7 - padded).node.expr == 0
    assert (side + (padded - side) - padded).node.expr == 0
    old = side + (-side) % 7
    assert (old // 7 * 7 - old).node.expr != 0
    assert [padded_size(n, 7) for n in (1, 7, 8, 14, 16)] == [7, 7, 14, 14, 21]
