"""Decode heads and the encoder-decoder segmentor, on a tiny fake backbone."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from flatten_dense.segmentation.heads import FCNHead, SemanticFPNHead, UPerHead
from flatten_dense.segmentation.segmentor import EncoderDecoder, build_segmentor, segmentation_loss


class _FeatureInfo:
    def __init__(self, channels: list[int]) -> None:
        self._channels = channels

    def channels(self) -> list[int]:
        return list(self._channels)


class FakeBackbone(nn.Module):
    """Strided convs: 4 NCHW maps at strides 4, 8, 16, 32 (ceil division for odd sizes)."""

    def __init__(self, channels: tuple[int, ...] = (8, 16, 24, 32)) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels[0], 4, stride=4)
        self.stages = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(channels, channels[1:]))
        self.feature_info = _FeatureInfo(list(channels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(nn.functional.pad(x, (0, -x.shape[-1] % 4, 0, -x.shape[-2] % 4)))
        outs = [x]
        for stage in self.stages:
            outs.append(stage(outs[-1]))
        return outs


@pytest.mark.parametrize("size", [(64, 96), (50, 70)])
def test_head_output_shapes(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    features = FakeBackbone()(torch.rand(2, 3, *size))
    stride4 = features[0].shape[-2:]
    semantic = SemanticFPNHead([8, 16, 24, 32], 5, fpn_channels=32, channels=32)
    upernet = UPerHead([8, 16, 24, 32], 5, channels=32)
    fcn = FCNHead(24, 5, channels=16)
    assert semantic(features).shape == (2, 5, *stride4)
    assert upernet(features).shape == (2, 5, *stride4)
    assert fcn(features).shape == (2, 5, *features[2].shape[-2:])


def test_reference_widths_and_norms() -> None:
    semantic = build_segmentor(decode_head="semantic_fpn", backbone=FakeBackbone(), num_classes=3)
    assert semantic.decode_head.fpn.fpn_convs[0][0].out_channels == 256
    assert semantic.decode_head.classifier[1].in_channels == 128
    assert any(isinstance(m, nn.GroupNorm) for m in semantic.decode_head.modules())
    # per level: 1, 1, 2, 3 conv blocks until stride 4
    convs_per_level = [sum(isinstance(m, nn.Conv2d) for m in h.modules()) for h in semantic.decode_head.scale_heads]
    assert convs_per_level == [1, 1, 2, 3]
    uper = build_segmentor(decode_head="upernet", backbone=FakeBackbone(), num_classes=3, aux_head=True)
    assert uper.decode_head.classifier[1].in_channels == 512
    assert uper.aux_head.classifier[1].in_channels == 256 and uper.aux_head.in_index == 2
    assert [m[0].output_size for m in uper.decode_head.ppm.stages] == [1, 2, 3, 6]
    assert any(isinstance(m, nn.BatchNorm2d) for m in uper.decode_head.modules())
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(uper)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in synced.modules())
    gn = build_segmentor(decode_head="upernet", backbone=FakeBackbone(), num_classes=3, norm="GN", channels=64)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gn.modules())


@pytest.mark.parametrize("decode_head", ["semantic_fpn", "upernet"])
def test_segmentor_forward_and_backward(decode_head: str) -> None:
    torch.manual_seed(0)
    model = build_segmentor(decode_head=decode_head, backbone=FakeBackbone(), num_classes=4, aux_head=True, channels=32)
    images = torch.rand(2, 3, 45, 61)
    assert model(images).shape == (2, 4, 45, 61)
    with pytest.raises(TypeError, match="float images"):  # one input convention: float in [0, 1]
        model((images * 255).to(torch.uint8))
    labels = torch.randint(0, 4, (2, 45, 61))
    labels[:, :5] = 255
    losses = model.loss(images, labels)
    assert set(losses) == {"loss", "loss_decode", "loss_aux"}
    losses["loss"].backward()
    assert model.backbone.stem.weight.grad is not None and model.backbone.stem.weight.grad.abs().sum() > 0
    assert model.aux_head.classifier[1].weight.grad.abs().sum() > 0


def test_aux_loss_weight() -> None:
    torch.manual_seed(0)
    model = build_segmentor(decode_head="upernet", backbone=FakeBackbone(), num_classes=3, aux_head=True, channels=32)
    model.eval()  # no dropout: the three numbers come from the same features
    images, labels = torch.rand(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    losses = model.loss(images, labels)
    torch.testing.assert_close(losses["loss"], losses["loss_decode"] + 0.4 * losses["loss_aux"])
    assert losses["loss_aux"] > 0 and not torch.isclose(losses["loss"], losses["loss_decode"])


def test_loss_upsamples_logits_and_ignores_255() -> None:
    logits = torch.zeros(1, 2, 2, 2)
    logits[:, 1] = 10.0  # class 1 everywhere
    labels = torch.ones(1, 8, 8, dtype=torch.long)
    labels[0, 0, 0] = 0
    labels[0, 1:4] = 255
    per_pixel = nn.functional.cross_entropy(torch.tensor([[0.0, 10.0]] * 2), torch.tensor([0, 1]), reduction="none")
    expected = (per_pixel[0] + 39 * per_pixel[1]) / 40  # 64 pixels, 24 ignored, one of class 0
    torch.testing.assert_close(segmentation_loss(logits, labels), expected, rtol=1e-4, atol=1e-6)
    assert segmentation_loss(logits, torch.full((1, 8, 8), 255)) == 0  # all ignored: 0, not NaN


def test_normalisation_and_errors() -> None:
    model = EncoderDecoder(FakeBackbone(), FCNHead(8, 2, in_index=0))
    x = torch.ones(1, 3, 4, 4) * torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    assert model.normalize(x).abs().max() < 1e-6
    with pytest.raises(ValueError, match="decode_head"):
        build_segmentor(decode_head="psp", backbone=FakeBackbone(), num_classes=2)
    with pytest.raises(TypeError, match="feature_info"):
        build_segmentor(decode_head="upernet", backbone=nn.Identity(), num_classes=2)


def test_predict_owns_the_test_time_resize() -> None:
    """predict resizes to test_scale (keep ratio, long <= 64, short <= 32) and scores back to the input size."""
    torch.manual_seed(0)
    model = build_segmentor(
        decode_head="semantic_fpn", backbone=FakeBackbone(), num_classes=4, channels=32, test_scale=(64, 32)
    ).eval()
    images = torch.rand(1, 3, 45, 61)  # -> 32 x 43 inside predict
    scores = model.predict(images)
    assert scores.shape == (1, 4, 45, 61)
    resized = F.interpolate(images, size=(32, 43), mode="bilinear", align_corners=False)
    expected = F.interpolate(model(resized), size=(45, 61), mode="bilinear", align_corners=False)
    torch.testing.assert_close(scores, expected)
    unscaled = build_segmentor(
        decode_head="semantic_fpn", backbone=FakeBackbone(), num_classes=4, channels=32, test_scale=None
    )
    unscaled.load_state_dict(model.state_dict())
    torch.testing.assert_close(unscaled.eval().predict(images), unscaled(images))
