"""The model zoo against the released models: keys, parameter counts, logits, any input size."""

from __future__ import annotations

import copy
import math
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from reference_flatten import (
    IMAGE_SIZE,
    has_reference,
    key_list,
    make_release_checkpoint,
    official_shift_mask,
    reference_logits,
)

import flatten_dense as fd
from flatten_dense.models.layers import shifted_window_mask

MODELS = fd.list_models()
RECOMPUTED = ("relative_position_index", "attn_mask")
HEAVY = {"flatten_cswin_b", "flatten_swin_b_384"}  # 10-30 s each for a float64 reading on 2 cores
REFERENCED = [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in MODELS if has_reference(n)]
FAMILY_EXAMPLES = ["flatten_swin_t", "flatten_pvt_t", "flatten_cswin_t"]


@pytest.fixture(scope="module")
def release_files(tmp_path_factory) -> Iterator:
    """name -> (path, state) of a test checkpoint in the authors' release format, made once.

    The files (3 GB for the whole zoo) are deleted when the module ends.
    """
    cache: dict = {}
    folder = tmp_path_factory.mktemp("release")

    def get(name: str) -> tuple[Path, dict]:
        if name not in cache:
            path = folder / f"{name}.pth"
            cache[name] = (path, make_release_checkpoint(name, path))
        return cache[name]

    yield get
    shutil.rmtree(folder, ignore_errors=True)


def test_registry_lists_every_released_family() -> None:
    assert MODELS == sorted(path.stem for path in Path(key_list.__globals__["KEY_LISTS"]).glob("*.txt"))
    with pytest.raises(ValueError, match="registered models: flatten_cswin_b, "):
        fd.create_backbone("flatten_swin_xl")


@pytest.mark.parametrize("name", MODELS)
def test_classifier_matches_release_keys_and_count(name: str) -> None:
    count, shapes = key_list(name)
    model = fd.create_classifier(name)
    assert sum(p.numel() for p in model.parameters()) == count
    ours = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert ours == {key: shape for key, shape in shapes.items() if not key.endswith(RECOMPUTED)}


@pytest.mark.parametrize("name", REFERENCED)
def test_release_checkpoint_logits_match_reference(name: str, release_files) -> None:
    """At the training size (224; 384 for the 384 models) the logits equal a float64 reading of FLATTEN.md."""
    path, state = release_files(name)
    model = fd.create_classifier(name, pretrained=path).eval()
    size = IMAGE_SIZE.get(name, 224)
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(image)
    expected = reference_logits(name, state, image)
    assert ((logits - expected).norm() / expected.norm()).item() < 1e-5
    assert torch.allclose(logits, expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_every_model_but_one_has_a_reference() -> None:
    assert [name for name in MODELS if not has_reference(name)] == ["flatten_cswin_b_384"]


@pytest.mark.parametrize("name", [n for n in MODELS if n.startswith("flatten_cswin") or n.endswith("_384")])
def test_new_release_files_load_strictly(name: str, release_files) -> None:
    """Every listed key lands in the classifier, unchanged (recomputed buffers aside)."""
    path, state = release_files(name)
    loaded = fd.create_classifier(name, pretrained=path).state_dict()
    for key, value in state.items():
        if not key.endswith(RECOMPUTED):
            assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("name", ["flatten_swin_t", "flatten_pvt_t", "flatten_pvt_v2_b0", "flatten_cswin_t"])
def test_backbone_takes_release_file_without_head(name: str, release_files) -> None:
    path, state = release_files(name)
    backbone = fd.create_backbone(name, pretrained=path)
    loaded = backbone.state_dict()
    assert not any(key.startswith(("head.", "norm.")) for key in loaded)
    for key, value in state.items():
        if key in loaded:
            assert torch.equal(loaded[key], value), key


def test_checkpoint_that_does_not_fit_names_every_problem(tmp_path: Path, release_files) -> None:
    _, state = release_files("flatten_pvt_v2_b0")
    state = dict(state)
    del state["block1.0.attn.scale"]
    state["block9.0.attn.extra"] = torch.zeros(3)
    state["block2.0.mlp.fc1.weight"] = torch.zeros(7, 64)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)  # also exercises the bare state-dict format
    with pytest.raises(fd.CheckpointMismatchError) as error:
        fd.create_classifier("flatten_pvt_v2_b0", pretrained=bad)
    message = str(error.value)
    assert "bad.pth" in message and "\n" not in message
    assert "missing: block1.0.attn.scale" in message
    assert "unexpected: block9.0.attn.extra" in message
    assert "block2.0.mlp.fc1.weight (7, 64) vs model (512, 64)" in message


def test_missing_checkpoint_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        fd.create_backbone("flatten_pvt_v2_b0", pretrained=tmp_path / "nope.pth")


def test_classifier_with_other_classes_drops_only_the_head(release_files) -> None:
    path, _ = release_files("flatten_pvt_v2_b0")
    model = fd.create_classifier("flatten_pvt_v2_b0", num_classes=10, pretrained=path)
    assert model.head.out_features == 10


def _check_maps(backbone, image: torch.Tensor) -> None:
    with torch.no_grad():
        maps = backbone(image)
    assert len(maps) == 4
    assert [m.shape[1] for m in maps] == backbone.feature_info.channels()
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    for feature, stride in zip(maps, backbone.feature_info.reduction()):
        assert feature.shape[0] == image.shape[0]
        assert feature.shape[2:] == (math.ceil(image.shape[2] / stride), math.ceil(image.shape[3] / stride))
        assert feature.is_contiguous() and torch.isfinite(feature).all()


@pytest.mark.parametrize("name", MODELS)
def test_any_input_size(name: str) -> None:
    torch.manual_seed(0)
    _check_maps(fd.create_backbone(name).eval(), torch.randn(1, 3, 257, 383))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flatten_swin_t", "flatten_pvt_t", "flatten_cswin_t"])
@pytest.mark.parametrize("shape", [(2, 3, 800, 1216), (1, 3, 512, 2048)])
def test_detection_and_segmentation_sizes(name: str, shape: tuple[int, ...]) -> None:
    _check_maps(fd.create_backbone(name).eval(), torch.randn(*shape))


@pytest.mark.parametrize("name", MODELS)
def test_bf16_autocast_close_to_fp32(name: str) -> None:
    torch.manual_seed(0)
    backbone = fd.create_backbone(name).eval()
    image = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        full = backbone(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = backbone(image)
    for a, b in zip(full, mixed):
        assert torch.isfinite(b).all()
        assert ((b.float() - a).norm() / a.norm()).item() < 0.02


def test_shift_masks_equal_the_released_ones() -> None:
    ours = shifted_window_mask((14, 14), (14, 14), (7, 7), (3, 3))
    assert torch.equal(ours, official_shift_mask(14, 7, 3))


def test_softmax_windows_mask_padding() -> None:
    """Swin's softmax stage on a grid that needs padding: padded keys get no attention."""
    mask = shifted_window_mask((14, 14), (10, 12), (7, 7), (3, 3))
    padding = torch.zeros(14, 14, dtype=torch.bool)
    padding[10:, :] = True
    padding[:, 12:] = True
    rolled = torch.roll(padding, (-3, -3), (0, 1))
    from flatten_dense.models.layers import window_partition

    padded_keys = window_partition(rolled[None, :, :, None].float(), (7, 7)).squeeze(-1).bool()  # nW N
    assert bool((mask.permute(1, 0, 2)[:, padded_keys] == -100).all())


def test_finite_linear_window_equals_global_when_it_covers_the_map() -> None:
    torch.manual_seed(0)
    global_model = fd.create_backbone("flatten_swin_t", out_indices=(0,)).eval()
    windowed = fd.create_backbone("flatten_swin_t", out_indices=(0,), linear_window=64).eval()
    windowed.load_state_dict(global_model.state_dict())
    image = torch.randn(1, 3, 200, 120)  # stage 1 grid 50 x 30 < 64
    with torch.no_grad():
        assert torch.allclose(global_model(image)[0], windowed(image)[0], atol=1e-5)
        small_windows = fd.create_backbone("flatten_swin_t", out_indices=(0,), linear_window=16).eval()
        small_windows.load_state_dict(global_model.state_dict())
        assert torch.isfinite(small_windows(image)[0]).all()  # 50 x 30 padded to 16-multiples


def test_out_indices_subset() -> None:
    backbone = fd.create_backbone("flatten_pvt_v2_b0", out_indices=(1, 3)).eval()
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == [64, 256] == backbone.feature_info.channels()
    assert backbone.feature_info.reduction() == [8, 32]


@pytest.mark.parametrize("name", ["flatten_swin_t", "flatten_pvt_t", "flatten_pvt_v2_b0", "flatten_cswin_t"])
def test_frozen_stages(name: str) -> None:
    backbone = fd.create_backbone(name, frozen_stages=1)
    backbone.train()
    frozen = [n for n, p in backbone.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    assert frozen and trainable
    stages_0 = ("patch_embed", "layers.0.", "block1.", "pos_embed1", "norm1.", "stage1_conv_embed.", "stage1.")
    assert all(n.startswith((*stages_0, "out_norms.0.")) for n in frozen)
    assert not any(n.startswith(("layers.1.blocks", "block2.", "merge1.", "stage2.")) for n in frozen)
    stem = next(
        getattr(backbone, s) for s in ("patch_embed", "patch_embed1", "stage1_conv_embed") if hasattr(backbone, s)
    )
    assert not stem.training


@pytest.mark.parametrize("name", ["flatten_swin_t", "flatten_pvt_t", "flatten_cswin_t"])
def test_gradient_checkpointing_gives_the_same_gradients(name: str) -> None:
    torch.manual_seed(0)
    plain = fd.create_backbone(name, drop_path_rate=0.0)
    checkpointed = fd.create_backbone(name, drop_path_rate=0.0, with_cp=True)
    checkpointed.load_state_dict(plain.state_dict())
    image = torch.randn(1, 3, 64, 96)
    grads = []
    for model in (plain, checkpointed):
        model.train()
        sum(m.sum() for m in model(image)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-5)


def test_drop_path_is_stochastic_in_training_only() -> None:
    backbone = fd.create_backbone("flatten_pvt_v2_b0", drop_path_rate=0.5)
    image = torch.randn(2, 3, 64, 64)
    backbone.train()
    assert not torch.allclose(backbone(image)[-1], backbone(image)[-1])
    backbone.eval()
    assert torch.equal(backbone(image)[-1], backbone(image)[-1])


def test_no_weight_decay_names() -> None:
    swin = fd.create_backbone("flatten_swin_t").no_weight_decay()
    assert "layers.0.blocks.0.attn.positional_encoding" in swin
    assert "layers.0.blocks.0.attn.scale" in swin
    assert "layers.2.blocks.0.attn.relative_position_bias_table" in swin
    assert "layers.0.blocks.0.norm1.weight" in swin and "out_norms.0.weight" in swin
    assert "layers.0.blocks.0.attn.qkv.weight" not in swin
    pvt = fd.create_backbone("flatten_pvt_t").no_weight_decay()
    assert {"pos_embed1", "block1.0.attn.positional_encoding", "patch_embed1.norm.bias"} <= pvt
    cswin = fd.create_backbone("flatten_cswin_t").no_weight_decay()
    assert {"stage1.0.attns.0.positional_encoding", "stage1.0.attns.0.scale", "stage1_conv_embed.2.weight"} <= cswin
    assert {"merge1.norm.bias", "stage3.0.norm2.weight"} <= cswin
    assert not {"stage1.0.attns.0.get_v.weight", "stage3.0.qkv.weight"} & cswin


def test_forward_intermediates_timm_style() -> None:
    backbone = fd.create_backbone("flatten_swin_t").eval()
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        last, intermediates = backbone.forward_intermediates(image)
        only = backbone.forward_intermediates(image, indices=(0, 2), intermediates_only=True)
        maps = backbone(image)
    assert last.shape == (1, 768, 2, 2)
    assert all(torch.equal(a, b) for a, b in zip(intermediates, maps))
    assert [m.shape[1] for m in only] == [96, 384]


def test_chunked_inference_mlp_equals_the_plain_mlp() -> None:
    """Inference runs norm + MLP + residual over token chunks; it must give the training-path numbers."""
    from flatten_dense.models.layers.fast_layers import INFERENCE_CHUNK_TOKENS, FastMlp

    torch.manual_seed(0)
    mlp = FastMlp(32, 256).eval()
    norm = torch.nn.LayerNorm(32).eval()
    x = torch.randn(2, INFERENCE_CHUNK_TOKENS * 2 + 100, 32)
    with torch.no_grad():
        chunked = mlp.residual_inference(x, norm)
    with torch.enable_grad():
        plain = x + mlp(norm(x))
    assert torch.allclose(chunked, plain, atol=1e-5)
    with pytest.raises(RuntimeError, match="eval mode without autograd"):
        mlp.residual_inference(x, norm)


@pytest.mark.parametrize("name", MODELS)
def test_fast_inference_path_equals_the_plain_forward(name: str) -> None:
    """Eval without autograd takes the fast path (oneDNN linears, chunked MLP, residuals fused into
    projections, split q/k/v, in-place kernels); it must give the numbers of the plain forward."""
    torch.manual_seed(0)
    model = fd.create_backbone(name).eval()
    plain_model = copy.deepcopy(model)
    plain_model.set_fast_layers(False)
    image = torch.randn(1, 3, 288, 320)  # PVT's first stage: 72 x 80 tokens, more than one MLP chunk
    with torch.no_grad():
        fused = model(image)
        plain = plain_model(image)
    for got, expected in zip(fused, plain):
        assert ((got - expected).norm() / expected.norm()).item() < 1e-5


UNAPPLIED_BY_DESIGN = {"flatten_pvt_t": {"norm"}}  # stored in the released v1 files, not applied by their classifier


@pytest.mark.parametrize("name", ["flatten_swin_t", "flatten_pvt_t", "flatten_pvt_v2_b0", "flatten_cswin_t"])
def test_every_module_takes_part_in_the_forward(name: str) -> None:
    """No dead modules: in a training-mode forward of the plain layers every leaf module without
    parameters is called, and every parameter gets a gradient (layers used through their weights,
    e.g. split q/k/v). The fast layers skip a zero-rate dropout on purpose."""
    model = fd.create_classifier(name, fast_layers=False).train()
    called: set[str] = set()
    for module_name, module in model.named_modules():
        module.register_forward_hook(lambda *_, module_name=module_name: called.add(module_name))
    model(torch.randn(1, 3, 224, 224)).square().mean().backward()
    allowed = UNAPPLIED_BY_DESIGN.get(name, set())
    unused = [
        n
        for n, m in model.named_modules()
        if not list(m.children()) and not list(m.parameters(recurse=False)) and n not in called and n not in allowed
    ]
    no_grad = [n for n, p in model.named_parameters() if p.grad is None and n.split(".")[0] not in allowed]
    assert not unused and not no_grad, (unused[:5], no_grad[:5])


def test_registry_holds_no_duplicate_tables() -> None:
    from flatten_dense.models import registry

    tables = [
        value
        for key, value in vars(registry).items()
        if key.isupper() and isinstance(value, dict) and key != "MODEL_SPECS"
    ]
    assert all(a is b or a != b for a in tables for b in tables)


def _held_tensors(model: torch.nn.Module) -> int:
    """Tensors that modules keep outside their parameters and buffers (caches), counted."""

    def count(value: object) -> int:
        if isinstance(value, torch.Tensor):
            return 1
        if isinstance(value, dict):
            return sum(count(v) for v in value.values()) + sum(count(k) for k in value if isinstance(k, torch.Tensor))
        if isinstance(value, (list, tuple)):
            return sum(count(v) for v in value)
        if isinstance(value, (type, torch.nn.Module)) or not hasattr(value, "__dict__"):
            return 0
        return count(vars(value))  # plain helper objects, e.g. a position-table resizer

    skip = {"_parameters", "_buffers", "_modules"}
    return sum(count({k: v for k, v in vars(m).items() if k not in skip}) for m in model.modules())


def test_swin_softmax_masks_built_once_per_stage_per_call(monkeypatch) -> None:
    """Shifted softmax blocks share their stage's mask, made in the call that uses it."""
    from flatten_dense.models import flatten_swin

    calls: list[tuple] = []
    real = flatten_swin.shifted_window_mask
    monkeypatch.setattr(flatten_swin, "shifted_window_mask", lambda *args: calls.append(args) or real(*args))
    backbone = fd.create_backbone("flatten_swin_t").eval()
    image = torch.randn(1, 3, 200, 264)  # stage 3: 13 x 17, stage 4: 7 x 9 (both padded)
    with torch.no_grad():
        for _ in range(2):
            calls.clear()
            backbone(image)
            assert len(calls) == 4  # stages 3 and 4, one unshifted and one shifted layout each


def test_inference_caches_stay_bounded_over_many_sizes() -> None:
    """Detection sees a new image size at almost every step: nothing cached per size may pile up."""
    backbone = fd.create_backbone("flatten_swin_t", out_indices=(2,)).eval()
    held = []
    with torch.no_grad():
        for step in range(12):
            backbone(torch.randn(1, 3, 64 + 32 * step, 96))
            held.append(_held_tensors(backbone))
    assert held[-1] == held[-4], held


def test_role_options_are_declared_once_in_the_base() -> None:
    """Families take their architecture; the role options (head or outputs, freezing, checkpointing)
    are the base's, so they cannot drift apart between families."""
    import inspect

    from flatten_dense.models.pyramid_model import PyramidModel, PyramidOptions

    role = set(PyramidOptions.__annotations__)
    assert role == set(inspect.signature(PyramidModel.__init__).parameters) - {"self"}
    for name in FAMILY_EXAMPLES:
        family = type(fd.create_backbone(name))
        assert not role & set(inspect.signature(family.__init__).parameters), family.__name__


@pytest.mark.parametrize("name", FAMILY_EXAMPLES)
@pytest.mark.parametrize("attn_types", ["LLL", "LLXL"])
def test_bad_attention_types_fail_alike_in_every_family(name: str, attn_types: str) -> None:
    with pytest.raises(ValueError, match="needs one letter per stage"):
        fd.create_backbone(name, attn_types=attn_types)
