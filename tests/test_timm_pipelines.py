"""Pipelines that consume timm models, with a FLatten backbone (each skipped without its package)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("timm")

import flatten_dense  # noqa: E402, F401  (registers the zoo with timm)

IMAGE = (64, 96)


@pytest.mark.parametrize(
    ("arch", "encoder"), [("Unet", "flatten_pvt_t"), ("FPN", "flatten_swin_t"), ("UPerNet", "flatten_pvt_t")]
)
def test_segmentation_models_pytorch_with_a_tu_encoder(arch: str, encoder: str) -> None:
    smp = pytest.importorskip("segmentation_models_pytorch")
    model = getattr(smp, arch)(f"tu-{encoder}", encoder_weights=None, in_channels=3, classes=3).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, *IMAGE))
    assert logits.shape == (1, 3, *IMAGE)


def test_huggingface_timm_backbone_and_upernet_via_backbone_config() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.TimmBackboneConfig(
        backbone="flatten_pvt_t", out_indices=(0, 1, 2, 3), use_pretrained_backbone=False
    )
    backbone = transformers.TimmBackbone(config).eval()
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, *IMAGE)).feature_maps
    assert backbone.channels == [64, 128, 320, 512]
    assert [tuple(m.shape) for m in maps] == [(1, 64, 16, 24), (1, 128, 8, 12), (1, 320, 4, 6), (1, 512, 2, 3)]
    upernet = transformers.UperNetForSemanticSegmentation(
        transformers.UperNetConfig(backbone_config=config, num_labels=5, hidden_size=64, auxiliary_in_channels=320)
    ).eval()
    with torch.no_grad():
        logits = upernet(pixel_values=torch.randn(1, 3, *IMAGE)).logits
    assert logits.shape == (1, 5, *IMAGE)


def test_torchgeo_semantic_segmentation_task_with_a_tu_backbone() -> None:
    trainers = pytest.importorskip("torchgeo.trainers")
    task = trainers.SemanticSegmentationTask(
        model="unet", backbone="tu-flatten_swin_t", weights=None, in_channels=4, num_classes=3
    ).eval()
    with torch.no_grad():
        logits = task(torch.randn(1, 4, *IMAGE))
    assert logits.shape == (1, 3, *IMAGE)
