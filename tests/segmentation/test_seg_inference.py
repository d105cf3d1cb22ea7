"""Whole, sliding-window and multi-scale/flip inference."""

from __future__ import annotations

import torch
from torch import nn

from flatten_dense.segmentation.inference import aug_test_inference, inference, slide_inference, whole_inference


class ContextModel(nn.Module):
    """Logits depend on the whole input (global mean), so windows change the answer."""

    def __init__(self) -> None:
        super().__init__()
        self.local = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local(x) + x.mean(dim=(1, 2, 3), keepdim=True)


def test_slide_equals_whole_when_window_covers_image() -> None:
    torch.manual_seed(0)
    model, images = ContextModel(), torch.rand(2, 3, 40, 56)
    whole = whole_inference(model, images)
    torch.testing.assert_close(slide_inference(model, images, window=64, stride=32), whole)
    torch.testing.assert_close(slide_inference(model, images, window=(40, 56), stride=(10, 10)), whole)
    # windows smaller than the image see less context: a different answer
    assert not torch.allclose(slide_inference(model, images, window=24, stride=16), whole)


def test_slide_with_image_independent_context_matches_whole() -> None:
    torch.manual_seed(0)
    pixelwise = nn.Conv2d(3, 5, 1)  # each pixel's logits depend on that pixel only
    images = torch.rand(1, 3, 50, 70)
    for window, stride in ((16, 11), ((20, 30), (7, 13)), (33, 33)):
        torch.testing.assert_close(slide_inference(pixelwise, images, window=window, stride=stride), pixelwise(images))
    ones = slide_inference(lambda x: torch.ones(x.shape[0], 2, *x.shape[-2:]), images, window=16, stride=5)
    torch.testing.assert_close(ones, torch.ones(1, 2, 50, 70))  # overlaps divided by the count map


def test_output_size_and_dispatch() -> None:
    torch.manual_seed(0)
    model, images = ContextModel(), torch.rand(1, 3, 32, 48)
    assert whole_inference(model, images, output_size=(64, 96)).shape == (1, 4, 64, 96)
    assert slide_inference(model, images, window=16, stride=8, output_size=(20, 30)).shape == (1, 4, 20, 30)
    torch.testing.assert_close(inference(model, images, mode="slide", window=64), whole_inference(model, images))


def test_aug_test_shape_and_probabilities() -> None:
    torch.manual_seed(0)
    model, images = ContextModel(), torch.rand(2, 3, 32, 48)
    probs = aug_test_inference(model, images, output_size=(30, 40))
    assert probs.shape == (2, 4, 30, 40)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 30, 40))
    # a single scale without flip is the softmax of whole inference
    single = aug_test_inference(model, images, scales=(1.0,), flip=False)
    torch.testing.assert_close(single, whole_inference(model, images).softmax(dim=1))
    # flip averaging of a model that is not flip-equivariant differs from the unflipped result
    assert not torch.allclose(aug_test_inference(model, images, scales=(1.0,), flip=True), single)
    slide = aug_test_inference(model, images, scales=(0.5, 1.0), mode="slide", window=24, stride=16)
    assert slide.shape == (2, 4, 32, 48)


def test_aug_test_flip_is_undone() -> None:
    pixelwise = nn.Conv2d(3, 3, 1)  # flip-equivariant: flipping and unflipping must change nothing
    images = torch.rand(1, 3, 20, 28)
    flipped = aug_test_inference(pixelwise, images, scales=(1.0,), flip=True)
    torch.testing.assert_close(flipped, pixelwise(images).softmax(dim=1))
