"""Held-out metrics of binary segmentation, per image: Dice, IoU, HD95 and boundary F1.

Dice, IoU and HD95 come from MONAI (``DiceMetric``, ``MeanIoU``, ``compute_hausdorff_distance`` with
percentile 95) when it is installed (``pip install .[demo]``); otherwise from the implementations
below, which tests/test_demo.py checks against MONAI. MONAI has no boundary F1, so it is written here
(and checked against a brute-force definition): the edge pixels of a mask are those with a 4-neighbour
outside it (the image border counts as outside, as in MONAI's ``get_mask_edges``); precision is the
fraction of predicted edge pixels within ``tolerance`` pixels (Euclidean) of a true edge pixel, recall
the converse, F1 their harmonic mean.

Empty masks: both empty -> Dice = IoU = boundary F1 = 1, HD95 = 0; exactly one empty -> Dice = IoU =
boundary F1 = 0 and HD95 = the image diagonal (MONAI would give NaN/inf, which no mean survives).
"""
from __future__ import annotations

import math
import warnings
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

try:  # optional: pip install .[demo]
    import monai.metrics as _monai
except ImportError:  # pragma: no cover - exercised when MONAI is absent
    _monai = None

METRICS = ("dice", "iou", "hd95", "boundary_f1")


def edges(mask: Tensor) -> Tensor:
    """(H, W) bool -> bool: pixels of the mask with a 4-neighbour outside it (or on the image border)."""
    m = mask.float()[None, None]
    p = F.pad(m, (1, 1, 1, 1), value=0.0)
    inner = torch.minimum(torch.minimum(p[..., :-2, 1:-1], p[..., 2:, 1:-1]),
                          torch.minimum(p[..., 1:-1, :-2], p[..., 1:-1, 2:]))
    return mask.bool() & ~(inner[0, 0] > 0)


def _edge_distances(pred: Tensor, true: Tensor):
    pe, te = edges(pred).nonzero().float(), edges(true).nonzero().float()
    d = torch.cdist(pe, te)  # (|P|, |T|), Euclidean
    return d.min(1).values, d.min(0).values


def _hd95_own(pred: Tensor, true: Tensor) -> float:
    d_pt, d_tp = _edge_distances(pred, true)
    return max(torch.quantile(d_pt, 0.95).item(), torch.quantile(d_tp, 0.95).item())


def boundary_f1(pred: Tensor, true: Tensor, tolerance: float = 2.0) -> float:
    """Boundary F1 of two non-empty (H, W) bool masks at `tolerance` pixels."""
    d_pt, d_tp = _edge_distances(pred, true)
    precision = (d_pt <= tolerance).float().mean().item()
    recall = (d_tp <= tolerance).float().mean().item()
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _overlap_own(pred: Tensor, true: Tensor):
    inter = (pred & true).sum().item()
    p, t = pred.sum().item(), true.sum().item()
    return 2 * inter / (p + t), inter / (p + t - inter)


def per_image(pred: Tensor, true: Tensor, tolerance: float = 2.0, use_monai: bool = True) -> Dict[str, float]:
    """Metrics of one (H, W) bool prediction against its (H, W) bool truth."""
    pred, true = pred.bool(), true.bool()
    diag = math.hypot(*pred.shape)
    if not pred.any() or not true.any():
        same = not pred.any() and not true.any()
        return dict(dice=float(same), iou=float(same), hd95=0.0 if same else diag, boundary_f1=float(same))
    out = dict(boundary_f1=boundary_f1(pred, true, tolerance))
    if use_monai and _monai is not None:
        p, t = pred[None, None].float(), true[None, None].float()
        out["dice"] = _monai.DiceMetric(include_background=True, reduction="none")(p, t).item()
        out["iou"] = _monai.MeanIoU(include_background=True, reduction="none")(p, t).item()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["hd95"] = _monai.compute_hausdorff_distance(p, t, include_background=True, percentile=95).item()
    else:
        out["dice"], out["iou"] = _overlap_own(pred, true)
        out["hd95"] = _hd95_own(pred, true)
    return out


def evaluate(pred: Tensor, true: Tensor, tolerance: float = 2.0) -> Dict[str, float]:
    """Means over a batch of (N, 1, H, W) predictions and truths (bool or {0, 1})."""
    return evaluate_list(list(pred), list(true), tolerance)


def evaluate_list(preds, trues, tolerance: float = 2.0) -> Dict[str, float]:
    """Means over lists of (1, H, W) predictions and truths, each pair its own size."""
    rows = [per_image(p[0].bool(), t[0].bool(), tolerance) for p, t in zip(preds, trues)]
    return {k: sum(r[k] for r in rows) / len(rows) for k in METRICS}
