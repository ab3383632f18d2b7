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

The loss is one custom op, ``brnnseg::bce_dice_loss``, and its backward one more. Both rest on the
pixel pass of ``brnnseg::seg_loss_sums`` (C++ on the CPU, Triton on CUDA), which produces five sums per
(sample, channel). On CUDA the forward is two launches, the pixel pass and a one-program finish
kernel that turns the sums into the loss and into the factors of its derivative in them; the backward
is one launch that writes the logits' gradient from those factors. Nothing waits for the GPU: float
options travel as kernel arguments, and a ``channels`` mask is put on the device once and cached. On
the H200 the old path, with its 47 small tensor ops, ran 0.42-0.70x the unfused composition (issue 22).
On the CPU, the same factors come from ``finish_from_sums`` in tensor ops. Targets, ``weight`` and
``pos_weight`` are constants (no gradient).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import _C  # noqa: F401  (registers the op schemas and CPU kernels)
from .. import dispatch, ops
from . import unfused
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


@torch.library.register_fake("brnnseg::bce_dice_loss")
def _bce_dice_loss_fake(logits, target, weight, pos_weight, pos_weight_value, dice_mask, dice_from, boundary_weight,
                        boundary_radius, ignore_index, squared, lambda_ce, lambda_dice, smooth_nr, smooth_dr, batch,
                        log_dice, reduction):
    n, c = logits.shape[:2]
    loss = logits.new_empty((n, c) if reduction == "none" else ())
    return loss, logits.new_empty((n * c * 3 + 1,), dtype=_sums_dtype(logits))


@torch.library.register_fake("brnnseg::bce_dice_loss_backward")
def _bce_dice_loss_backward_fake(grad, factors, logits, target, weight, pos_weight, pos_weight_value,
                                 boundary_weight, boundary_radius, ignore_index, squared, batch, reduction):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _loss_setup_context(ctx, inputs, output):
    (logits, target, weight, pos_weight, pos_weight_value, _mask, _from, boundary_weight, boundary_radius,
     ignore_index, squared, _lce, _ldice, _snr, _sdr, batch, _log, reduction) = inputs
    factors = output[1]
    ctx.mark_non_differentiable(factors)
    ctx.set_materialize_grads(False)  # no zeros for the factors' gradient: one allocation and launch less
    ctx.save_for_backward(factors, logits, target, weight, pos_weight)
    ctx.params = (pos_weight_value, boundary_weight, boundary_radius, ignore_index, squared, batch, reduction)


def _loss_backward(ctx, grad, _grad_factors):
    ops.no_double_backward("brnnseg::bce_dice_loss")
    if grad is None:  # the loss's own gradient undefined (grads are not materialised): none for the logits
        return (None,) * 18
    factors, logits, target, weight, pos_weight = ctx.saved_tensors
    dx = torch.ops.brnnseg.bce_dice_loss_backward(grad, factors, logits, target, weight, pos_weight, *ctx.params)
    return (dx,) + (None,) * 17


# The op's autograd on every device. CPU tensors take the same formula written in C++ (AutogradCPU,
# csrc/cpu/seg_loss_cpu.cpp), registered directly to that key, which takes precedence there.
# tests/test_seg_loss.py holds the two formulas together.
torch.library.register_autograd("brnnseg::bce_dice_loss", _loss_backward, setup_context=_loss_setup_context)


def _dice_terms(inter: Tensor, pred: Tensor, ysum: Tensor, sel: Tensor, smooth_nr: float, smooth_dr: float,
                log_dice: bool):
    """Dice loss per (sample or batch, channel) times sel, and its derivatives in sum p*y and sum p
    (p^2); a 0/0 score is 1 (and constant). The Triton finish kernel's _dice_terms, in tensor ops."""
    den = pred + ysum + smooth_dr
    ok = den > 0
    safe = torch.where(ok, den, torch.ones_like(den))
    num = 2 * inter + smooth_nr
    score = torch.where(ok, num / safe, torch.ones_like(den))
    ds_di = torch.where(ok, 2 / safe, torch.zeros_like(den))
    ds_dp = torch.where(ok, -num / (safe * safe), torch.zeros_like(den))
    if log_dice:
        clamped = score.clamp_min(1e-7)
        dice = -torch.log(clamped)
        dd = torch.where(score >= 1e-7, -1 / clamped, torch.zeros_like(score))
    else:
        dice = 1 - score
        dd = -torch.ones_like(score)
    return sel * dice, sel * dd * ds_di, sel * dd * ds_dp


def _dice_selection(c: int, dice_mask: Optional[Tensor], dice_from: int, dtype, device) -> Tensor:
    sel = (torch.arange(c, device=device) >= dice_from).to(dtype)
    return sel if dice_mask is None else sel * (dice_mask.to(device) != 0).to(dtype)


def finish_from_sums(sums: Tensor, dice_mask: Optional[Tensor], dice_from: int, lambda_ce: float, lambda_dice: float,
                     smooth_nr: float, smooth_dr: float, batch: bool, log_dice: bool, reduction: str):
    """The loss from the (N, C, 5) sums and the factors of its derivative in them, (N*C*3 + 1): per
    (n, c) [f_bce, f_inter, f_pred], then the scale of every f_bce. The backward takes
    d loss / d sums[n, c] = go * [scale * f_bce, 0, f_inter, f_pred, 0] (go summed over the batch for
    f_inter and f_pred where batch Dice meets reduction "none"). The specification of the Triton finish
    kernel and of the CPU op's (``bce_finish`` in csrc/cpu/seg_loss_cpu.cpp, in double; held together
    by tests/test_seg_loss.py)."""
    n, c = sums.shape[:2]
    s_bce, cnt, inter, pred, ysum = sums.unbind(-1)
    if batch:
        inter, pred, ysum = inter.sum(0, keepdim=True), pred.sum(0, keepdim=True), ysum.sum(0, keepdim=True)
    sel = _dice_selection(c, dice_mask, dice_from, sums.dtype, sums.device)
    dice, f_inter, f_pred = _dice_terms(inter, pred, ysum, sel, smooth_nr, smooth_dr, log_dice)
    scale = sums.new_ones(1)
    dice_scale = lambda_dice
    if reduction == "none":
        f_bce = lambda_ce / cnt.clamp_min(1)
        loss = f_bce * s_bce + lambda_dice * dice.expand(n, c)
    elif reduction == "sum":
        f_bce = torch.full_like(s_bce, lambda_ce)
        loss = lambda_ce * s_bce.sum() + lambda_dice * dice.sum()
    else:
        f_bce = torch.full_like(s_bce, lambda_ce)
        n_sel = (sel.sum() * (1 if batch else n)).clamp_min(1)
        dice_scale = lambda_dice / n_sel
        scale = 1 / cnt.sum().clamp_min(1).reshape(1)
        loss = lambda_ce * s_bce.sum() * scale[0] + dice_scale * dice.sum()
    factors = torch.stack([f_bce, (dice_scale * f_inter).expand(n, c), (dice_scale * f_pred).expand(n, c)], -1)
    return loss, torch.cat([factors.reshape(-1), scale])


def _register_cuda_kernels() -> None:
    """The CUDA kernels of the ops are the Triton launchers (opaque to inductor, so each op compiles
    as one node under torch.compile and its fake kernel above is what tracing sees)."""
    try:
        from . import _kernels
    except ImportError:  # no triton: CUDA tensors then get the dispatcher's "no kernel" error
        return
    torch.library.register_kernel("brnnseg::seg_loss_sums", "cuda")(_kernels.seg_loss_sums_triton)
    torch.library.register_kernel("brnnseg::seg_loss_sums_backward", "cuda")(
        _kernels.seg_loss_sums_backward_triton)
    torch.library.register_kernel("brnnseg::bce_dice_loss", "cuda")(_kernels.bce_dice_loss_triton)
    torch.library.register_kernel("brnnseg::bce_dice_loss_backward", "cuda")(_kernels.bce_dice_loss_backward_triton)


_register_cuda_kernels()


def seg_loss_sums(logits: Tensor, target: Tensor, weight: Optional[Tensor], pos_weight: Tensor,
                  boundary_weight: float, boundary_radius: int, ignore_index: Optional[float],
                  squared: bool) -> Tensor:
    """(N, C, 5) sums [sum m*bce, count, sum p*y, sum p (p^2), sum y (y^2)] over counted pixels."""
    if logits.device.type == "cpu" and logits.dtype in _REDUCED:
        logits = logits.float()  # the CPU kernel computes in float32/float64
    return torch.ops.brnnseg.seg_loss_sums(logits, target, weight, pos_weight, float(boundary_weight),
                                          int(boundary_radius), ignore_index, bool(squared))


@functools.lru_cache(maxsize=64)
def _channel_mask(channels: tuple, c: int, device: torch.device) -> Tensor:
    """The Dice channel mask on the logits' device, made once per (channels, C, device): no
    host-to-device copy, and so no synchronisation, on later calls."""
    mask = torch.zeros(c, dtype=torch.float32)
    mask[list(channels)] = 1.0
    return mask.to(device)


def _loss_op(*args):
    """The op call (a seam the tests use to run the Triton launchers on CPU tensors)."""
    return torch.ops.brnnseg.bce_dice_loss(*args)


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
    pw, pw_value = None, 1.0
    if isinstance(pos_weight, Tensor):
        if pos_weight.dim() > 1 or pos_weight.numel() not in (1, c):
            raise ValueError(f"bce_dice_loss: pos_weight must be a float or a tensor of shape (C,) = ({c},), "
                             f"got shape {tuple(pos_weight.shape)}")
        pw = pos_weight.to(device=logits.device, dtype=torch.float32, non_blocking=True).expand(c).contiguous()
    else:
        pw_value = float(pos_weight)
    mask, dice_from = None, 0
    if channels is not None:
        idx = tuple(int(i) for i in channels)
        if any(not 0 <= i < c for i in idx):
            raise ValueError(f"bce_dice_loss: channels must be in [0, {c}), got {list(idx)}")
        mask = _channel_mask(idx, c, logits.device)
    elif not include_background and c > 1:
        dice_from = 1
    if dispatch.loss_path(logits, "bce_dice") == "unfused":  # CUDA, where the fused op is not measured faster
        return unfused.bce_dice_loss(logits, target, weight, pos_weight if pw is None else pw, float(boundary_weight),
                                     int(boundary_radius), float(dice_weight), float(bce_weight), float(smooth_nr),
                                     float(smooth_dr), bool(batch_dice), bool(squared), bool(log_dice),
                                     include_background, None if channels is None else idx, ignore_index, reduction)
    loss, _ = _loss_op(logits, target, weight, pw, pw_value, mask, dice_from, float(boundary_weight),
                       int(boundary_radius), None if ignore_index is None else float(ignore_index), bool(squared),
                       float(bce_weight), float(dice_weight), float(smooth_nr), float(smooth_dr), bool(batch_dice),
                       bool(log_dice), reduction)
    return loss


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
