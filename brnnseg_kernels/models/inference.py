"""Inference on any image size: pad to the model's stride and crop back, or slide a window.

``pad_to_multiple(x, m)`` pads the spatial dims of (N, C, *spatial) up to multiples of m (replicate
padding, so borders look like image, not black) and returns the crop that undoes it.
``predict_padded(model, x, m)`` runs a model that needs sizes divisible by m on any size.
``sliding_window(model, image, roi_size, overlap)`` uses MONAI's ``sliding_window_inference`` when
MONAI is installed and the implementation below otherwise (constant weights, the same tiling rule:
windows start every roi*(1-overlap) pixels, the last one flush with the border).
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pad_to_multiple", "predict_padded", "sliding_window"]


def pad_to_multiple(x: Tensor, multiple: int) -> Tuple[Tensor, tuple]:
    """(padded x, crop): crop is a tuple of slices that cuts the padded result back to x's size."""
    if multiple < 1:
        raise ValueError(f"pad_to_multiple: multiple must be >= 1, got {multiple}")
    spatial = x.shape[2:]
    pads = []
    for s in reversed(spatial):
        extra = (-s) % multiple
        pads += [extra // 2, extra - extra // 2]
    crop = (slice(None), slice(None)) + tuple(
        slice(pads[2 * (len(spatial) - 1 - i)], pads[2 * (len(spatial) - 1 - i)] + s) for i, s in enumerate(spatial))
    if not any(pads):
        return x, crop
    mode = "replicate" if all(s > 0 for s in spatial) else "constant"
    return F.pad(x, pads, mode=mode), crop


@torch.no_grad()
def predict_padded(model: Callable[[Tensor], Tensor], x: Tensor, multiple: int) -> Tensor:
    padded, crop = pad_to_multiple(x, multiple)
    return model(padded)[crop]


def _starts(size: int, roi: int, step: int):
    if size <= roi:
        return [0]
    starts = list(range(0, size - roi + 1, step))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    return starts


@torch.no_grad()
def _sliding_window_own(model, image: Tensor, roi: Sequence[int], overlap: float) -> Tensor:
    spatial = image.shape[2:]
    roi = [min(r, s) for r, s in zip(roi, spatial)]
    steps = [max(1, int(r * (1 - overlap))) for r in roi]
    out = count = None
    for start in itertools.product(*[_starts(s, r, st) for s, r, st in zip(spatial, roi, steps)]):
        sl = (slice(None), slice(None)) + tuple(slice(a, a + r) for a, r in zip(start, roi))
        y = model(image[sl])
        if out is None:
            out = torch.zeros(image.shape[:1] + y.shape[1:2] + spatial, dtype=y.dtype, device=y.device)
            count = torch.zeros((1, 1) + spatial, dtype=y.dtype, device=y.device)
        out[sl] += y
        count[sl] += 1
    return out / count


def sliding_window(model: Callable[[Tensor], Tensor], image: Tensor, roi_size: Sequence[int], overlap: float = 0.25,
                   use_monai: bool = True) -> Tensor:
    """Logits of `model` over (N, C, *spatial) `image` in windows of `roi_size`, averaged where they
    overlap. Each window must be a size the model accepts (a multiple of its stride)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"sliding_window: overlap must be in [0, 1), got {overlap}")
    if len(roi_size) != image.dim() - 2:
        raise ValueError(f"sliding_window: roi_size needs {image.dim() - 2} sizes, got {tuple(roi_size)}")
    if use_monai:
        try:
            from monai.inferers import sliding_window_inference
        except ImportError:
            use_monai = False
    if use_monai:
        with torch.no_grad():
            return sliding_window_inference(image, tuple(roi_size), 1, model, overlap=overlap, mode="constant")
    return _sliding_window_own(model, image, roi_size, overlap)
