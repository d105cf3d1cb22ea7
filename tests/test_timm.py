"""The zoo through timm: `import flatten_dense` registers every name (skipped without timm)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

timm = pytest.importorskip("timm")

from reference_flatten import make_release_checkpoint  # noqa: E402

import flatten_dense as fd  # noqa: E402

IMAGE = (64, 96)


def test_every_zoo_name_is_a_timm_model_with_its_pretrained_cfg() -> None:
    assert set(fd.list_models()) <= set(timm.list_models("flatten_*"))
    cfg = timm.get_pretrained_cfg("flatten_swin_b_384").to_dict()
    assert cfg["input_size"] == (3, 384, 384) and cfg["crop_pct"] == 1.0
    cfg = timm.get_pretrained_cfg("flatten_pvt_t").to_dict()
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert (cfg["interpolation"], cfg["crop_pct"], cfg["input_size"]) == ("bicubic", 0.875, (3, 224, 224))
    assert (cfg["first_conv"], cfg["classifier"]) == ("patch_embed1.proj", "head")
    assert cfg["paper_ids"] == "arXiv:2308.00442" and "LeapLabTHU" in cfg["origin_url"] and cfg["license"]
    assert not cfg["url"]  # nothing is ever downloaded


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("flatten_swin_t", [96, 192, 384, 768]),
        ("flatten_pvt_t", [64, 128, 320, 512]),
        ("flatten_cswin_t", [64, 128, 256, 512]),
    ],
)
def test_features_only_with_out_indices_and_in_chans(name: str, channels: list[int]) -> None:
    model = timm.create_model(name, features_only=True, out_indices=(1, 2, 3), in_chans=4).eval()
    assert model.feature_info.channels() == channels[1:]
    assert model.feature_info.reduction() == [8, 16, 32]
    with torch.no_grad():
        maps = model(torch.randn(1, 4, *IMAGE))
    assert [tuple(m.shape) for m in maps] == [
        (1, c, IMAGE[0] // r, IMAGE[1] // r) for c, r in zip(channels[1:], (8, 16, 32), strict=True)
    ]


def test_pretrained_overlay_file_reproduces_create_classifier_logits(tmp_path: Path) -> None:
    release = tmp_path / "flatten_pvt_t.pth"
    make_release_checkpoint("flatten_pvt_t", release)
    image = torch.randn(2, 3, 64, 64)
    ours = fd.create_classifier("flatten_pvt_t", pretrained=release).eval()
    through_timm = timm.create_model(
        "flatten_pvt_t", pretrained=True, pretrained_cfg_overlay={"file": str(release)}
    ).eval()
    with torch.no_grad():
        expected, logits = ours(image), through_timm(image)
    assert logits.shape == (2, 1000)
    assert torch.equal(logits, expected)
    # features_only from the same file: the maps equal the classifier's stage maps
    features = timm.create_model(
        "flatten_pvt_t", features_only=True, pretrained=True, pretrained_cfg_overlay={"file": str(release)}
    ).eval()
    with torch.no_grad():
        maps = features(image)
        reference = ours.forward_intermediates(image, indices=(0, 1, 2, 3), intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(maps, reference, strict=True))
    # in_chans=1 and another head: timm's adaptations of the same file (summed stem, new head)
    gray = timm.create_model(
        "flatten_pvt_t", pretrained=True, pretrained_cfg_overlay={"file": str(release)}, in_chans=1, num_classes=7
    ).eval()
    stem = ours.patch_embed1.proj.weight
    assert torch.allclose(gray.patch_embed1.proj.weight, stem.sum(dim=1, keepdim=True))
    with torch.no_grad():
        assert gray(image[:, :1]).shape == (2, 7)


def test_reset_classifier_forward_head_and_intermediates() -> None:
    model = timm.create_model("flatten_pvt_t").eval()
    model.reset_classifier(5)
    image = torch.randn(1, 3, *IMAGE)
    with torch.no_grad():
        assert model(image).shape == (1, 5)
        features = model.forward_features(image)
        assert torch.equal(model.forward_head(features), model(image))
        assert model.forward_head(features, pre_logits=True).shape == (1, model.num_features) == (1, 512)
        final, intermediates = model.forward_intermediates(image, indices=2, output_fmt="NHWC")
        only = model.forward_intermediates(image, indices=(0, -1), stop_early=True, intermediates_only=True)
    assert final.shape == (1, 512, 2, 3)
    assert [tuple(t.shape) for t in intermediates] == [(1, 4, 6, 320), (1, 2, 3, 512)]
    assert [tuple(t.shape) for t in only] == [(1, 64, 16, 24), (1, 512, 2, 3)]
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(image).shape == (1, 512)


def test_prune_intermediate_layers_drops_later_stages_and_head() -> None:
    model = timm.create_model("flatten_swin_t")
    before = sum(p.numel() for p in model.parameters())
    assert model.prune_intermediate_layers((0, 1)) == [0, 1]
    after = {name for name, _ in model.named_parameters()}
    assert not any(name.startswith(("layers.2.", "layers.3.", "layers.1.downsample", "head.")) for name in after)
    assert sum(p.numel() for p in model.parameters()) < before / 4
    image = torch.randn(1, 3, *IMAGE)
    maps = model.forward_intermediates(image, indices=(0, 1), intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(1, 96, 16, 24), (1, 192, 8, 12)]
    sum(m.sum() for m in maps).backward()  # every remaining parameter is used (DDP finds none unused)
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("norm."))


def test_our_feature_info_is_also_timms_list_of_dicts() -> None:
    backbone = fd.create_backbone("flatten_pvt_t", out_indices=(1, 3))
    info = timm.models.FeatureInfo(backbone.feature_info.to_timm(), out_indices=(0, 1))
    assert info.channels() == backbone.feature_info.channels() == [128, 512]
    assert info.reduction() == [8, 32]
    assert backbone.feature_info[1] == {"num_chs": 512, "reduction": 32, "module": "stages.3", "index": 3}
