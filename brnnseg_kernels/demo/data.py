"""Procedural segmentation data for the demo: generated, seeded and reproducible, no downloads.

Two tasks, (1, S, S) float images in [0, 1] with (1, S, S) {0, 1} masks; sample i of a split depends
only on (task, seed, split, i):

* ``phantom``: CT-like slices. A body of soft tissue, a large organ with a smooth irregular border
  (radius modulated by a few low harmonics) and a fine granular texture, among smooth structures of
  about the same intensity (ellipses, a vessel), with a bias field and noise. The organ is 5-20 % of
  the pixels: the class imbalance weighted BCE exists for.
* ``long-range``: horizontal (or, in half the images, vertical) bands of the same texture. Each band
  carries a marker at one end, chosen at random: a bright marker makes the band foreground, a dark one
  background. Telling a band's far end apart needs context from the far edge of the image -- beyond a
  small CNN's receptive field, within a row (column) sweep's: the case BRNN layers exist for.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

TASKS = ("phantom", "long-range")
SPLITS = {"train": 0, "val": 1, "test": 2}


def _generator(task: str, seed: int, split: str, index: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(((seed * 1_000_003 + TASKS.index(task) * 7919 + SPLITS[split]) * 1_000_033 + index) % 2**63)
    return g


def _u(g, lo=0.0, hi=1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=g).item()


def _smooth_noise(g, size: int, cells: int) -> Tensor:
    """Low-frequency noise: a (cells x cells) random grid upsampled bicubically, about unit variance."""
    coarse = torch.randn(1, 1, cells, cells, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[0, 0]


def phantom(g: torch.Generator, size: int = 96) -> Tuple[Tensor, Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    c = (size - 1) / 2
    body = ((yy - c) / (0.47 * size)) ** 2 + ((xx - c) / (0.44 * size)) ** 2 <= 1
    img = torch.where(body, 0.32, 0.02) + 0.03 * _smooth_noise(g, size, 6)
    # Smooth distractors of the organ's intensity.
    for _ in range(int(_u(g, 2, 5))):
        cy, cx = _u(g, 0.2, 0.8) * size, _u(g, 0.2, 0.8) * size
        ry, rx, th = _u(g, 0.05, 0.13) * size, _u(g, 0.05, 0.13) * size, _u(g, 0, math.pi)
        dy, dx = yy - cy, xx - cx
        u, v = dy * math.cos(th) + dx * math.sin(th), -dy * math.sin(th) + dx * math.cos(th)
        img = torch.where((u / ry) ** 2 + (v / rx) ** 2 <= 1, _u(g, 0.55, 0.68), img)
    a, b, w = _u(g, -1, 1), _u(g, 0.2, 0.8) * size, _u(g, 1.5, 3)
    img = torch.where(((yy - b - a * (xx - c)).abs() <= w) & body, 0.62, img)  # a vessel
    # The organ: radius modulated by harmonics 2..5, granular texture; redrawn until it is 5-20 %.
    for _ in range(50):
        cy, cx = _u(g, 0.35, 0.65) * size, _u(g, 0.35, 0.65) * size
        r0 = _u(g, 0.14, 0.25) * size
        theta = torch.atan2(yy - cy, xx - cx)
        r = torch.full_like(theta, r0)
        for k in range(2, 6):
            r = r + r0 * _u(g, 0, 0.25 / k) * torch.cos(k * theta + _u(g, 0, 2 * math.pi))
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt() <= r
        if 0.05 <= mask.float().mean().item() <= 0.20:
            break
    grain = torch.randn(1, 1, size, size, generator=g)
    grain = F.avg_pool2d(grain, 3, 1, 1)[0, 0] * 0.35
    img = torch.where(mask, 0.6 + grain, img)
    img = img + 0.04 * _smooth_noise(g, size, 4) + 0.05 * torch.randn(size, size, generator=g)
    return img.clamp(0, 1)[None], mask.float()[None]


def long_range(g: torch.Generator, size: int = 96) -> Tuple[Tensor, Tensor]:
    img = 0.15 + 0.05 * _smooth_noise(g, size, 5)
    mask = torch.zeros(size, size)
    marker_w = 5
    y, positives = int(_u(g, 2, 6)), 0
    bands = []
    while True:
        hgt = int(_u(g, 7, 13))
        if y + hgt > size - 2:
            break
        bands.append((y, hgt))
        y += hgt + int(_u(g, 3, 8))
    for j, (y0, hgt) in enumerate(bands):
        positive = _u(g) < 0.5 or (j == len(bands) - 1 and positives == 0)  # at least one foreground band
        positives += positive
        texture = 0.5 + 0.12 * torch.randn(hgt, size, generator=g)
        img[y0:y0 + hgt] = texture
        left = _u(g) < 0.5
        sl = slice(0, marker_w) if left else slice(size - marker_w, size)
        img[y0:y0 + hgt, sl] = 0.95 if positive else 0.05
        if positive:
            mask[y0:y0 + hgt] = 1
            mask[y0:y0 + hgt, sl] = 0  # the marker itself is not the band
    img = img + 0.05 * torch.randn(size, size, generator=g)
    if _u(g) < 0.5:  # vertical bands in half the images
        img, mask = img.t().contiguous(), mask.t().contiguous()
    return img.clamp(0, 1)[None], mask[None]


GENERATORS = {"phantom": phantom, "long-range": long_range}


class SyntheticSegmentation(Dataset):
    """``n`` samples of a task's split; ``ds[i]`` -> (image (1, S, S), mask (1, S, S)), deterministic."""

    def __init__(self, task: str, n: int, split: str = "train", seed: int = 0, size: int = 96):
        if task not in GENERATORS:
            raise ValueError(f"SyntheticSegmentation: task must be one of {TASKS}, got {task!r}")
        if split not in SPLITS:
            raise ValueError(f"SyntheticSegmentation: split must be one of {tuple(SPLITS)}, got {split!r}")
        if size < 32:
            raise ValueError(f"SyntheticSegmentation: size must be >= 32, got {size}")
        self.task, self.n, self.split, self.seed, self.size = task, int(n), split, int(seed), int(size)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tuple[Tensor, Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return GENERATORS[self.task](_generator(self.task, self.seed, self.split, i), self.size)

    def tensors(self) -> Tuple[Tensor, Tensor]:
        """The whole split stacked: (n, 1, S, S) images and masks."""
        items = [self[i] for i in range(self.n)]
        return torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])
