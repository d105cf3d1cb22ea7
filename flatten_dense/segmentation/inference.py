"""Test-time inference modes of mmseg: whole image, sliding window, multi-scale + flip.

`model` is any callable images B,3,H,W -> logits B,K,H,W at the input size (an EncoderDecoder).
Each mode returns maps at `output_size` (default: the input size), typically the label size,
since evaluation happens at the original label resolution. Call them under `torch.no_grad()`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

__all__ = [
    "EvaluationSettings",
    "aug_test_inference",
    "inference",
    "predict_with_settings",
    "slide_inference",
    "whole_inference",
]

Model = Callable[[torch.Tensor], torch.Tensor]
DEFAULT_AUG_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@dataclass(frozen=True)
class EvaluationSettings:
    """The `evaluation` section of a segmentation config: how validation, test and infer predict.

    mode: "whole" (one pass on the test-scale image) or "slide" (mmseg's overlapping `window`
    crops, `stride` apart). aug_test: average softmax over `aug_scales` (x the test scale) and,
    with `flip`, their mirror images (`test --aug-test` is `evaluation.aug_test=true`).
    """

    mode: Literal["whole", "slide"] = "whole"
    window: int | tuple[int, int] = 512
    stride: int | tuple[int, int] = 341
    aug_test: bool = False
    aug_scales: tuple[float, ...] = DEFAULT_AUG_SCALES
    flip: bool = True

    @classmethod
    def from_section(cls, section: Mapping[str, Any] | None) -> EvaluationSettings:
        """Settings from a plain, validated config section (lists become tuples)."""
        section = dict(section or {})
        for key in ("window", "stride"):
            if isinstance(section.get(key), list):
                section[key] = tuple(section[key])
        if "aug_scales" in section:
            section["aug_scales"] = tuple(float(s) for s in section["aug_scales"])
            if not section["aug_scales"]:
                raise ValueError("'evaluation.aug_scales' must not be empty")
        return cls(**section)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _resize(x: torch.Tensor, size: Sequence[int] | None) -> torch.Tensor:
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def whole_inference(model: Model, images: torch.Tensor, *, output_size: Sequence[int] | None = None) -> torch.Tensor:
    """One forward pass on the whole image: logits B,K,*output_size."""
    return _resize(model(images), output_size)


def slide_inference(
    model: Model,
    images: torch.Tensor,
    *,
    window: int | Sequence[int] = 512,
    stride: int | Sequence[int] = 341,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """mmseg's slide_inference: overlapping (h, w) windows, the last flush with the image border;
    logits summed per pixel and divided by the number of windows covering it."""
    (win_h, win_w), (stride_h, stride_w) = _pair(window), _pair(stride)
    batch, _, height, width = images.shape
    rows = max(height - win_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - win_w + stride_w - 1, 0) // stride_w + 1
    logits_sum: torch.Tensor | None = None
    count = images.new_zeros((batch, 1, height, width), dtype=torch.float32)
    for row in range(rows):
        for col in range(cols):
            y2, x2 = min(row * stride_h + win_h, height), min(col * stride_w + win_w, width)
            y1, x1 = max(y2 - win_h, 0), max(x2 - win_w, 0)
            crop_logits = model(images[:, :, y1:y2, x1:x2]).float()  # B,K,y2-y1,x2-x1
            if logits_sum is None:
                logits_sum = crop_logits.new_zeros((batch, crop_logits.shape[1], height, width))
            logits_sum[:, :, y1:y2, x1:x2] += crop_logits
            count[:, :, y1:y2, x1:x2] += 1
    assert logits_sum is not None  # rows, cols >= 1
    return _resize(logits_sum / count, output_size)


def inference(
    model: Model,
    images: torch.Tensor,
    *,
    mode: str = "whole",
    window: int | Sequence[int] = 512,
    stride: int | Sequence[int] = 341,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Logits by `mode` "whole" or "slide"."""
    if mode == "whole":
        return whole_inference(model, images, output_size=output_size)
    if mode == "slide":
        return slide_inference(model, images, window=window, stride=stride, output_size=output_size)
    raise ValueError(f"unknown inference mode {mode!r}; expected 'whole' or 'slide'")


def aug_test_inference(
    model: Model,
    images: torch.Tensor,
    *,
    scales: Sequence[float] = DEFAULT_AUG_SCALES,
    flip: bool = True,
    mode: str = "whole",
    window: int | Sequence[int] = 512,
    stride: int | Sequence[int] = 341,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Softmax probabilities B,K,*output_size averaged over rescaled (and flipped) copies.

    `images` are the test pipeline's output (already resized to the test scale); each copy is
    that image times a ratio, as mmseg's MultiScaleFlipAug with img_ratios (up to rounding).
    """
    height, width = images.shape[-2:]
    output_size = tuple(output_size) if output_size is not None else (height, width)
    total: torch.Tensor | None = None
    num = 0
    for scale in scales:
        size = (max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5)))
        scaled = _resize(images, size)
        for flipped in (False, True) if flip else (False,):
            x = scaled.flip(-1) if flipped else scaled
            logits = inference(model, x, mode=mode, window=window, stride=stride)
            if flipped:
                logits = logits.flip(-1)
            probs = _resize(logits.float(), output_size).softmax(dim=1)
            total = probs if total is None else total + probs
            num += 1
    assert total is not None, "scales must not be empty"
    return total / num


def predict_with_settings(model: Model, images: torch.Tensor, settings: EvaluationSettings) -> torch.Tensor:
    """Scores B,K,H,W at the input size by the settings (logits, or probabilities with aug_test)."""
    output_size = images.shape[-2:]
    if settings.aug_test:
        return aug_test_inference(
            model,
            images,
            scales=settings.aug_scales,
            flip=settings.flip,
            mode=settings.mode,
            window=settings.window,
            stride=settings.stride,
            output_size=output_size,
        )
    return inference(
        model, images, mode=settings.mode, window=settings.window, stride=settings.stride, output_size=output_size
    )
