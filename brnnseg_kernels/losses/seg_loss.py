"""Fused segmentation loss: weighted BCE + boundary weighting + Dice, from one pass over the logits.

Per pixel, with p = sigmoid(x), y the target (soft targets in [0, 1] allowed) and pw the channel's
``pos_weight``:

    bce = -[pw * y * log p + (1 - y) * log(1 - p)]          (computed stably from logits)

A pixel is a *boundary* pixel when its (2r+1) x (2r+1) neighbourhood ((2r+1)^3 for volumes),
clipped at the image border, holds both foreground (target > 0.5) and background; ignored pixels
count as neither. Its BCE term is multiplied by ``1 + boundary_weight``; an optional per-pixel
``weight`` multiplies on top. Pixels whose target equals ``ignore_index`` count nowhere.

* BCE: mean over counted pixels (``reduction="mean"``, like ``F.binary_cross_entropy_with_logits``
  with ``weight``), 0 when no pixel is counted.
* Dice per (sample, channel): ``1 - (2*sum(p*y) + smooth_nr) / (sum(p) + sum(y) + smooth_dr)``;
  ``squared=True`` uses sum(p^2) + sum(y^2); ``log_dice=True`` uses ``-log(max(score, 1e-7))``;
  ``batch_dice=True`` sums over the batch first. A 0/0 score (every pixel ignored, smooth 0)
  counts as a perfect score 1, so the result is always finite; with an empty mask and smooth 0
  the score is 0 (Dice loss 1, log-Dice loss 16.1).
* Total = ``bce_weight * BCE + dice_weight * Dice``; ``reduction="mean"`` averages Dice over the
  (selected) samples and channels, ``"sum"`` sums BCE over pixels and Dice over (sample, channel),
  ``"none"`` returns the per-(sample, channel) loss (N, C): that plane's mean BCE + Dice.

The pass over pixels is one custom op, ``brnnseg::seg_loss_sums`` (C++ on the CPU, Triton on CUDA),
producing five sums per (sample, channel); the formula above is applied to those (N, C) sums with
ordinary tensor ops, and the op's backward writes the logits' gradient in one more pass. Targets,
``weight`` and ``pos_weight`` are constants (no gradient).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import _C  # noqa: F401  (registers the op schemas and CPU kernels)
from .. import ops
from ..checks import check_seg_loss_inputs

__all__ = ["bce_dice_loss", "seg_loss_sums", "BCEDiceLoss", "WeightedBCEWithLogitsLoss", "DiceLoss",
           "BoundaryBCELoss"]

_REDUCED = (torch.float16, torch.bfloat16)


def _sums_dtype(logits: Tensor) -> torch.dtype:
    return torch.float32 if logits.dtype in _REDUCED else logits.dtype


@torch.library.register_fake("brnnseg::seg_loss_sums")
def _seg_loss_sums_fake(logits, target, weight, pos_weight, boundary_weight, boundary_radius, ignore_index, squared):
    return logits.new_empty((logits.shape[0], logits.shape[1], 5), dtype=_sums_dtype(logits))


@torch.library.register_fake("brnnseg::seg_loss_sums_backward")
def _seg_loss_sums_backward_fake(grad_sums, logits, target, weight, pos_weight, boundary_weight, boundary_radius,
                                 ignore_index, squared):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _setup_context(ctx, inputs, output):
    logits, target, weight, pos_weight, boundary_weight, boundary_radius, ignore_index, squared = inputs
    ctx.save_for_backward(logits, target, weight, pos_weight)
    ctx.params = (boundary_weight, boundary_radius, ignore_index, squared)


def _backward(ctx, grad_sums):
    ops.no_double_backward("brnnseg::seg_loss_sums")
    logits, target, weight, pos_weight = ctx.saved_tensors
    grad = torch.ops.brnnseg.seg_loss_sums_backward(grad_sums, logits, target, weight, pos_weight, *ctx.params)
    return grad, None, None, None, None, None, None, None


torch.library.register_autograd("brnnseg::seg_loss_sums", _backward, setup_context=_setup_context)


def _register_cuda_kernels() -> None:
    """The CUDA kernels of the op are the Triton launchers (opaque to inductor, so the op compiles
    as one node under torch.compile and its fake kernel above is what tracing sees)."""
    try:
        from . import _kernels
    except ImportError:  # no triton: CUDA tensors then get the dispatcher's "no kernel" error
        return
    torch.library.register_kernel("brnnseg::seg_loss_sums", "cuda")(_kernels.seg_loss_sums_triton)
    torch.library.register_kernel("brnnseg::seg_loss_sums_backward", "cuda")(
        _kernels.seg_loss_sums_backward_triton)


_register_cuda_kernels()


def seg_loss_sums(logits: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Tensor,
                  boundary_weight: float, boundary_radius: int, ignore_index: Optional[float],
                  squared: bool) -> Tensor:
    """(N, C, 5) sums [sum m*bce, count, sum p*y, sum p (p^2), sum y (y^2)] over counted pixels."""
    if logits.device.type == "cpu" and logits.dtype in _REDUCED:
        logits = logits.float()  # the CPU kernel computes in float32/float64
    return torch.ops.brnnseg.seg_loss_sums(logits, target, weight, pos_weight, float(boundary_weight),
                                          int(boundary_radius), ignore_index, bool(squared))


def _combine(sums: Tensor, n: int, c: int, *, bce_weight, dice_weight, smooth_nr, smooth_dr, batch_dice, squared,
             log_dice, dice_channels: Optional[Tensor], reduction) -> Tensor:
    s_bce, count, inter, psum, ysum = sums.unbind(-1)
    if batch_dice:
        inter, psum, ysum = inter.sum(0), psum.sum(0), ysum.sum(0)
    den = psum + ysum + smooth_dr
    ok = den > 0
    score = torch.where(ok, (2 * inter + smooth_nr) / torch.where(ok, den, torch.ones_like(den)),
                        torch.ones_like(den))
    dice = -torch.log(score.clamp_min(1e-7)) if log_dice else 1 - score
    if dice_channels is not None:
        dice = dice * dice_channels
    if reduction == "none":
        return bce_weight * s_bce / count.clamp_min(1) + dice_weight * dice.expand(n, c)
    if reduction == "sum":
        return bce_weight * s_bce.sum() + dice_weight * dice.sum()
    n_sel = (c if dice_channels is None else dice_channels.sum()) * (1 if batch_dice else n)
    dice_mean = dice.sum() / max(n_sel, 1) if isinstance(n_sel, int) else dice.sum() / n_sel.clamp_min(1)
    return bce_weight * s_bce.sum() / count.sum().clamp_min(1) + dice_weight * dice_mean


def _check(logits, target, weight, reduction, boundary_radius):
    check_seg_loss_inputs("bce_dice_loss", logits, target, weight, reduction, boundary_radius)


def _monai_names(who: str, lambda_ce, lambda_dice, batch, bce_weight, dice_weight, batch_dice):
    """MONAI's spellings (lambda_ce, lambda_dice, batch) are the primary ones; bce_weight, dice_weight and
    batch_dice stay as aliases. Giving both spellings of one option is an error."""
    for new, old, nv, ov in (("lambda_ce", "bce_weight", lambda_ce, bce_weight),
                             ("lambda_dice", "dice_weight", lambda_dice, dice_weight),
                             ("batch", "batch_dice", batch, batch_dice)):
        if nv is not None and ov is not None:
            raise ValueError(f"{who}: give {new} or its alias {old}, not both")
    return (1.0 if lambda_ce is None and bce_weight is None else (lambda_ce if lambda_ce is not None else bce_weight),
            1.0 if lambda_dice is None and dice_weight is None else
            (lambda_dice if lambda_dice is not None else dice_weight),
            bool(batch if batch is not None else (batch_dice or False)))


def bce_dice_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                  pos_weight: Union[float, Tensor] = 1.0, boundary_weight: float = 0.0, boundary_radius: int = 1,
                  lambda_dice: Optional[float] = None, lambda_ce: Optional[float] = None, smooth_nr: float = 1e-5,
                  smooth_dr: float = 1e-5, batch: Optional[bool] = None, squared: bool = False,
                  log_dice: bool = False, include_background: bool = True,
                  channels: Optional[Sequence[int]] = None, ignore_index: Optional[float] = None,
                  reduction: str = "mean", *, dice_weight: Optional[float] = None, bce_weight: Optional[float] = None,
                  batch_dice: Optional[bool] = None) -> Tensor:
    """Weighted BCE + boundary weighting + Dice in one fused pass; the math is in this module's
    docstring. logits, target (and weight): (N, C, H, W) or (N, C, D, H, W). ``channels`` (or
    ``include_background=False``, which drops channel 0 when C > 1) selects the channels Dice
    averages over; BCE always covers every channel. ``lambda_ce`` (BCE weight, default 1),
    ``lambda_dice`` (Dice weight, default 1) and ``batch`` are MONAI's names; ``bce_weight``,
    ``dice_weight`` and ``batch_dice`` are accepted as aliases."""
    bce_weight, dice_weight, batch_dice = _monai_names("bce_dice_loss", lambda_ce, lambda_dice, batch, bce_weight,
                                                       dice_weight, batch_dice)
    _check(logits, target, weight, reduction, boundary_radius)
    n, c = logits.shape[:2]
    pw = torch.as_tensor(pos_weight, dtype=torch.float32, device=logits.device)
    if pw.dim() > 1 or pw.numel() not in (1, c):
        raise ValueError(f"bce_dice_loss: pos_weight must be a float or a tensor of shape (C,) = ({c},), "
                         f"got shape {tuple(pw.shape)}")
    pw = pw.expand(c).contiguous()
    sel = None
    if channels is not None or (not include_background and c > 1):
        idx = list(range(1, c)) if channels is None else list(channels)
        if any(not 0 <= i < c for i in idx):
            raise ValueError(f"bce_dice_loss: channels must be in [0, {c}), got {idx}")
        sel = torch.zeros(c, dtype=torch.float32, device=logits.device)
        sel[idx] = 1.0
    sums = seg_loss_sums(logits, target, weight, pw, boundary_weight, boundary_radius,
                         None if ignore_index is None else float(ignore_index), squared)
    out = _combine(sums.float() if sums.dtype != torch.float64 else sums, n, c, bce_weight=bce_weight,
                   dice_weight=dice_weight, smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch_dice=batch_dice,
                   squared=squared, log_dice=log_dice, dice_channels=sel, reduction=reduction)
    return out.to(logits.dtype)


class BCEDiceLoss(nn.Module):
    """``lambda_ce * weighted-BCE (with boundary weighting) + lambda_dice * Dice``, fused.

    Arguments: see :func:`bce_dice_loss` (all of its keyword arguments; MONAI's names ``lambda_ce``,
    ``lambda_dice``, ``batch`` first, ``bce_weight``/``dice_weight``/``batch_dice`` as aliases).
    Shapes: logits, target (and the optional per-pixel ``weight`` of ``forward``): (N, C, H, W) or
    (N, C, D, H, W); target bool, integer or float (soft targets in [0, 1]). Returns a scalar, or
    (N, C) with ``reduction="none"``."""

    def __init__(self, pos_weight: Union[float, Tensor] = 1.0, boundary_weight: float = 0.0,
                 boundary_radius: int = 1, lambda_dice: Optional[float] = None, lambda_ce: Optional[float] = None,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: Optional[bool] = None, squared: bool = False,
                 log_dice: bool = False, include_background: bool = True, channels: Optional[Sequence[int]] = None,
                 ignore_index: Optional[float] = None, reduction: str = "mean", *, dice_weight: Optional[float] = None,
                 bce_weight: Optional[float] = None, batch_dice: Optional[bool] = None):
        super().__init__()
        bce_weight, dice_weight, batch_dice = _monai_names(type(self).__name__, lambda_ce, lambda_dice, batch,
                                                           bce_weight, dice_weight, batch_dice)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"{type(self).__name__}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if isinstance(boundary_radius, bool) or not isinstance(boundary_radius, int) or boundary_radius < 0:
            raise ValueError(f"{type(self).__name__}: boundary_radius must be an integer >= 0, got "
                             f"{boundary_radius!r}")
        if isinstance(pos_weight, Tensor):
            self.register_buffer("pos_weight", pos_weight.detach().clone())
        else:
            self.pos_weight = float(pos_weight)
        self.kwargs = dict(boundary_weight=float(boundary_weight), boundary_radius=boundary_radius,
                           dice_weight=float(dice_weight), bce_weight=float(bce_weight), smooth_nr=float(smooth_nr),
                           smooth_dr=float(smooth_dr), batch_dice=batch_dice, squared=squared, log_dice=log_dice,
                           include_background=include_background, channels=channels, ignore_index=ignore_index,
                           reduction=reduction)

    def forward(self, logits: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return bce_dice_loss(logits, target, weight, pos_weight=self.pos_weight, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())


class WeightedBCEWithLogitsLoss(BCEDiceLoss):
    """Weighted BCE only (foreground weight ``pos_weight``, e.g. 10), mean over counted pixels."""

    def __init__(self, pos_weight: Union[float, Tensor] = 1.0, ignore_index: Optional[float] = None,
                 reduction: str = "mean"):
        super().__init__(pos_weight=pos_weight, lambda_dice=0.0, ignore_index=ignore_index, reduction=reduction)


class DiceLoss(BCEDiceLoss):
    """Soft Dice only."""

    def __init__(self, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: Optional[bool] = None,
                 squared: bool = False, log_dice: bool = False, include_background: bool = True,
                 channels: Optional[Sequence[int]] = None, ignore_index: Optional[float] = None,
                 reduction: str = "mean", *, batch_dice: Optional[bool] = None):
        if batch is not None and batch_dice is not None:
            raise ValueError("DiceLoss: give batch or its alias batch_dice, not both")
        super().__init__(lambda_ce=0.0, lambda_dice=1.0, smooth_nr=smooth_nr, smooth_dr=smooth_dr,
                         batch=batch if batch is not None else batch_dice, squared=squared, log_dice=log_dice,
                         include_background=include_background, channels=channels, ignore_index=ignore_index,
                         reduction=reduction)


class BoundaryBCELoss(BCEDiceLoss):
    """BCE whose boundary pixels weigh ``1 + boundary_weight``."""

    def __init__(self, boundary_weight: float = 2.0, boundary_radius: int = 1,
                 pos_weight: Union[float, Tensor] = 1.0, ignore_index: Optional[float] = None,
                 reduction: str = "mean"):
        super().__init__(pos_weight=pos_weight, boundary_weight=boundary_weight, boundary_radius=boundary_radius,
                         lambda_dice=0.0, ignore_index=ignore_index, reduction=reduction)
