"""Users' own images for ``python -m brnnseg_kernels train``: ``DIR/images/`` and ``DIR/masks/`` hold
files with the same stem (PNG, TIFF or ``.npy``); binary masks are 0/255 or 0/1.

Bad data is reported by file name and never trained on: an image without a mask (or a mask without
an image), an unreadable file, an image and mask of different sizes, a mask with other values than
{0, 1} or {0, 255} -- each is skipped with a warning; an empty or missing folder, or nothing left
after skipping, is a ValueError.
"""
from __future__ import annotations

import os
import warnings
from typing import List, Tuple

import numpy as np
import torch
from torch import Tensor

EXTENSIONS = (".png", ".tif", ".tiff", ".npy")


def read_array(path: str) -> np.ndarray:
    if path.lower().endswith(".npy"):
        return np.load(path, allow_pickle=False)
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("reading PNG/TIFF needs pillow: pip install 'brnnseg_kernels[demo]'") from e
    with Image.open(path) as im:
        return np.array(im)


def to_image(a: np.ndarray) -> Tensor:
    """(H, W) or (H, W, C) array -> (C, H, W) float32 in [0, 1] (integers scaled by their dtype's max)."""
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3]
    elif a.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, 3|4) image, got shape {a.shape}")
    t = torch.from_numpy(np.ascontiguousarray(a))
    t = t.float() / float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else t.float()
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def to_mask(a: np.ndarray) -> Tensor:
    if a.ndim == 3:
        a = a[..., 0]
    values = set(np.unique(a).tolist())
    if not (values <= {0, 1} or values <= {0, 255}):
        shown = sorted(values)[:6]
        raise ValueError(f"mask values must be 0/1 or 0/255, found {shown}{' ...' if len(values) > 6 else ''}")
    return torch.from_numpy((a > 0).astype(np.float32))[None]


def _by_stem(folder: str) -> dict:
    return {os.path.splitext(f)[0]: os.path.join(folder, f) for f in sorted(os.listdir(folder))
            if f.lower().endswith(EXTENSIONS) and not f.startswith(".")}


def load_folder(root: str) -> Tuple[List[Tensor], List[Tensor], List[str]]:
    """Images (C, H, W), masks (1, H, W) and stems of every valid pair under root; warns about the rest."""
    img_dir, mask_dir = os.path.join(root, "images"), os.path.join(root, "masks")
    for d in (img_dir, mask_dir):
        if not os.path.isdir(d):
            raise ValueError(f"train --data: {d} is missing (expected DIR/images/ and DIR/masks/)")
    images, masks = _by_stem(img_dir), _by_stem(mask_dir)
    if not images:
        raise ValueError(f"train --data: no images ({', '.join(EXTENSIONS)}) in {img_dir}")
    xs, ys, stems, channels = [], [], [], None
    for stem in sorted(set(images) | set(masks)):
        if stem not in masks:
            warnings.warn(f"skipping {images[stem]}: no mask with the same name in {mask_dir}")
            continue
        if stem not in images:
            warnings.warn(f"skipping {masks[stem]}: no image with the same name in {img_dir}")
            continue
        try:
            x = to_image(read_array(images[stem]))
        except Exception as e:  # noqa: BLE001 - any reader error means "unreadable"
            warnings.warn(f"skipping {images[stem]}: unreadable image ({e})")
            continue
        try:
            y = to_mask(read_array(masks[stem]))
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"skipping {masks[stem]}: {'unreadable mask' if 'mask values' not in str(e) else 'bad mask'} "
                          f"({e})")
            continue
        if x.shape[1:] != y.shape[1:]:
            warnings.warn(f"skipping {stem}: image {images[stem]} is {tuple(x.shape[1:])} but mask {masks[stem]} is "
                          f"{tuple(y.shape[1:])}")
            continue
        if channels is not None and x.shape[0] != channels:
            warnings.warn(f"skipping {images[stem]}: {x.shape[0]} channels, the others have {channels}")
            continue
        channels = x.shape[0]
        xs.append(x)
        ys.append(y)
        stems.append(stem)
    if not xs:
        raise ValueError(f"train --data: no usable image/mask pairs under {root} (see the warnings above)")
    return xs, ys, stems


def random_crops(xs: List[Tensor], ys: List[Tensor], crop: int, n: int, g: torch.Generator) -> Tuple[Tensor, Tensor]:
    """n crops of crop x crop (images smaller than that are padded up, replicate / zero), stacked."""
    out_x, out_y = [], []
    for _ in range(n):
        i = int(torch.randint(0, len(xs), (), generator=g))
        x, y = xs[i][None], ys[i][None]
        h, w = x.shape[-2:]
        if h < crop or w < crop:
            ph, pw = max(crop - h, 0), max(crop - w, 0)
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
            y = torch.nn.functional.pad(y, (0, pw, 0, ph))
            h, w = x.shape[-2:]
        r = int(torch.randint(0, h - crop + 1, (), generator=g))
        c = int(torch.randint(0, w - crop + 1, (), generator=g))
        out_x.append(x[0, :, r:r + crop, c:c + crop])
        out_y.append(y[0, :, r:r + crop, c:c + crop])
    return torch.stack(out_x), torch.stack(out_y)


def write_mask_png(mask: Tensor, path: str) -> None:
    from PIL import Image

    Image.fromarray((mask.cpu().numpy().astype(np.uint8) * 255)).save(path)


def list_inputs(folder: str) -> List[str]:
    if not os.path.isdir(folder):
        raise ValueError(f"predict --input: {folder} is not a folder")
    files = [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.lower().endswith(EXTENSIONS)]
    if not files:
        raise ValueError(f"predict --input: no images ({', '.join(EXTENSIONS)}) in {folder}")
    return files
