"""Fused multi-class segmentation loss: softmax cross-entropy + boundary weighting + softmax Dice, from
one pass over the logits.

Per pixel, with p = softmax(x) over the C classes, y the one-hot of the integer label (or the soft
target), w the ``class_weights`` and eps the ``label_smoothing``:

    ce = sum_c w_c * ((1 - eps) * y_c + eps / C) * (-log p_c)

which is exactly ``torch.nn.functional.cross_entropy`` per pixel (with ``weight=w``,
``label_smoothing=eps``; soft targets as its class-probability targets). A pixel is a *boundary* pixel
when its (2r+1)^d neighbourhood, clipped at the border, holds more than one label (ignored pixels count
as no label; soft targets use their argmax); its CE term is multiplied by ``1 + boundary_weight``, and an
optional per-pixel ``weight`` multiplies on top. Pixels labelled ``ignore_index`` count nowhere.

* CE: ``reduction="mean"`` divides the sum by the sum of the labels' class weights over counted
  pixels (the number of pixels for soft targets) -- ``cross_entropy``'s own mean; 0 when none counts.
* Dice per (sample, class): ``1 - (2*sum(p*y) + smooth_nr) / (sum(p) + sum(y) + smooth_dr)``;
  ``squared`` uses p^2 and y^2, ``log_dice`` uses ``-log(max(score, 1e-7))``, ``batch`` sums over the
  batch first; ``include_background=False`` leaves class 0 out. ``average="present"`` (default) averages
  over the (sample, class) pairs whose class occurs in the target (over the batch with ``batch=True``),
  so absent classes do not dilute the score; ``average="all"`` over every pair, as MONAI's ``DiceLoss``.
* Total = ``lambda_ce * CE + lambda_dice * Dice``. ``reduction="sum"``: CE summed over pixels (not
  normalised) + Dice summed over the averaged pairs; ``"none"``: per sample (N,).

Why a sibling of :class:`BCEDiceLoss` rather than a ``mode=`` switch: the target is a different thing
(an integer label map with no class dimension, or a distribution over classes, against a per-channel
binary mask), the activation couples the channels (softmax, not sigmoid), and the options differ
(``class_weights``, ``label_smoothing`` versus ``pos_weight``) -- as MONAI keeps ``DiceCELoss`` apart.

The loss is one custom op, ``brnnseg::ce_dice_loss``, and its backward one more, both on the pixel pass
of ``brnnseg::ce_dice_sums`` (C++ on the CPU, Triton on CUDA; per-(sample, class) Dice sums and
per-sample CE sums). On CUDA the forward is two launches, the pixel pass and a one-program finish
kernel that turns the sums into the loss and the factors of its derivative; the backward is one launch.
Nothing waits for the GPU there: float options travel as kernel arguments, and labels outside [0, C)
are counted by the kernel (never read through) and make the loss NaN -- checking them on the host
would wait for the GPU on every call; ``BRNNSEG_CHECK_LABELS=1`` does it anyway and raises a
ValueError naming the label, as the CPU always does. On the H200 the old path, with a label check and
a parameter copy each way and ~48 small tensor ops, ran 0.42-0.50x the unfused composition (issue 22).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .. import _C  # noqa: F401  (registers the op schemas and CPU kernels)
from .. import dispatch, ops
from . import unfused

__all__ = ["ce_dice_loss", "ce_dice_sums", "CEDiceLoss"]

_REDUCED = (torch.float16, torch.bfloat16)


def _sums_dtype(logits: Tensor) -> torch.dtype:
    return torch.float32 if logits.dtype in _REDUCED else logits.dtype


@torch.library.register_fake("brnnseg::ce_dice_sums")
def _ce_dice_sums_fake(logits, target, weight, class_weights, boundary_weight, boundary_radius, ignore_index,
                       label_smoothing, squared):
    n, c = logits.shape[0], logits.shape[1]
    dt = _sums_dtype(logits)
    return logits.new_empty((n, c, 3), dtype=dt), logits.new_empty((n, 2), dtype=dt)


@torch.library.register_fake("brnnseg::ce_dice_sums_backward")
def _ce_dice_sums_backward_fake(grad_dice, grad_ce, logits, target, weight, class_weights, boundary_weight,
                                boundary_radius, ignore_index, label_smoothing, squared):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _setup_context(ctx, inputs, output):
    logits, target, weight, class_weights, boundary_weight, boundary_radius, ignore_index, label_smoothing, squared = \
        inputs
    ctx.save_for_backward(logits, target, weight, class_weights)
    ctx.params = (boundary_weight, boundary_radius, ignore_index, label_smoothing, squared)


def _backward(ctx, grad_dice, grad_ce):
    ops.no_double_backward("brnnseg::ce_dice_sums")
    logits, target, weight, class_weights = ctx.saved_tensors
    if grad_dice is None:
        grad_dice = logits.new_zeros((logits.shape[0], logits.shape[1], 3), dtype=_sums_dtype(logits))
    if grad_ce is None:
        grad_ce = logits.new_zeros((logits.shape[0], 2), dtype=_sums_dtype(logits))
    grad = torch.ops.brnnseg.ce_dice_sums_backward(grad_dice, grad_ce, logits, target, weight, class_weights,
                                                   *ctx.params)
    return grad, None, None, None, None, None, None, None, None


torch.library.register_autograd("brnnseg::ce_dice_sums", _backward, setup_context=_setup_context)


def _register_cuda_kernels() -> None:
    """The CUDA kernels of the op are the Triton launchers in ce_dice_kernels.py."""
    try:
        from . import ce_dice_kernels
    except ImportError:  # no triton: CUDA tensors then get the dispatcher's "no kernel" error
        return
    torch.library.register_kernel("brnnseg::ce_dice_sums", "cuda")(ce_dice_kernels.ce_dice_sums_triton)
    torch.library.register_kernel("brnnseg::ce_dice_sums_backward", "cuda")(
        ce_dice_kernels.ce_dice_sums_backward_triton)


_register_cuda_kernels()


def _labels_or_soft(logits: Tensor, target: Tensor, op: str) -> Tensor:
    """(N, *S) integer labels or (N, C, *S) soft targets; (N, 1, *S) integer labels (MONAI's layout) are
    squeezed. Raises a ValueError naming what was expected."""
    if logits.dim() not in (4, 5):
        raise ValueError(f"{op}: logits must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise ValueError(f"{op}: logits must be floating point, got {logits.dtype}")
    if not isinstance(target, Tensor):
        raise ValueError(f"{op}: target must be a tensor, got {type(target).__name__}")
    spatial = tuple(logits.shape[2:])
    if target.dim() == logits.dim() and target.shape[1] == 1 and not target.is_floating_point() \
            and logits.shape[1] != 1:
        target = target[:, 0]
    if target.dim() == logits.dim() - 1:
        if target.is_floating_point() or target.is_complex():
            raise ValueError(f"{op}: a target of shape (N, *spatial) must hold integer labels, got {target.dtype}")
        if tuple(target.shape) != (logits.shape[0],) + spatial:
            raise ValueError(f"{op}: target labels must have shape {(logits.shape[0],) + spatial}, got "
                             f"{tuple(target.shape)}")
        return target
    if tuple(target.shape) != tuple(logits.shape):
        raise ValueError(f"{op}: target must be integer labels of shape {(logits.shape[0],) + spatial} or one-hot/"
                         f"soft of shape {tuple(logits.shape)}, got {tuple(target.shape)}")
    if not target.is_floating_point():
        raise ValueError(f"{op}: a target with the class dimension must be one-hot or soft (floating point), got "
                         f"{target.dtype}")
    return target


def ce_dice_sums(logits: Tensor, target: Tensor, weight: Optional[Tensor], class_weights: Optional[Tensor],
                 boundary_weight: float, boundary_radius: int, ignore_index: Optional[int], label_smoothing: float,
                 squared: bool):
    """(dice_sums (N, C, 3), ce_sums (N, 2)) over counted pixels (module docstring)."""
    if logits.device.type == "cpu" and logits.dtype in _REDUCED:
        logits = logits.float()  # the CPU kernel computes in float32/float64
    if target.is_floating_point() and target.dtype != logits.dtype and logits.device.type == "cpu":
        target = target.to(logits.dtype)
    return torch.ops.brnnseg.ce_dice_sums(logits, target, weight, class_weights, float(boundary_weight),
                                         int(boundary_radius), ignore_index, float(label_smoothing), bool(squared))


def finish_from_sums(dice_sums: Tensor, ce_sums: Tensor, lambda_ce: float, lambda_dice: float, smooth_nr: float,
                     smooth_dr: float, batch: bool, log_dice: bool, include_background: bool, average: str,
                     reduction: str):
    """The loss from the op's sums, and the factors of its derivative in them (2*N*C + N + 1): per (n, c)
    [f_inter, f_psum], per n f_ce, then the scale of every f_ce. The backward takes d loss / d inter[n, c]
    = go_dice * f_inter (likewise psum) and d loss / d ce_num[n] = go * scale * f_ce, go_dice summed over
    the batch where batch Dice meets reduction "none". The specification of the Triton finish kernel and
    of the CPU op's (``ce_finish`` in csrc/cpu/ce_dice_cpu.cpp, in double; tests/test_ce_dice_loss.py,
    test_cpu_op_matches_python_finish, holds the two together)."""
    n, c = dice_sums.shape[:2]
    if batch:
        dice_sums = dice_sums.sum(0, keepdim=True)
    inter, psum, ysum = dice_sums.unbind(-1)
    den = psum + ysum + smooth_dr
    z = (den == 0).to(den.dtype)  # 0/0 (no prediction, no target, smooth_dr = 0) scores 1: finite
    safe = den + z
    num = 2 * inter + smooth_nr + z
    score = num / safe
    if log_dice:
        clamped = score.clamp_min(1e-7)
        dice = -torch.log(clamped)
        dd = torch.where(score >= 1e-7, -1 / clamped, torch.zeros_like(score))
    else:
        dice = 1 - score
        dd = -torch.ones_like(score)
    sel = (ysum > 0).to(dice.dtype) if average == "present" else torch.ones_like(dice)
    if not include_background and c > 1:
        sel[:, 0] = 0
    ce_num, ce_den = ce_sums.unbind(-1)
    scale = ce_sums.new_ones(1)
    if reduction == "none":
        w = lambda_dice / sel.sum(1, keepdim=True).clamp_min(1)
        f_ce = lambda_ce / ce_den.clamp_min(1e-12)
        loss = f_ce * ce_num + (w * sel * dice).sum(1).expand(n)
    elif reduction == "sum":
        w = torch.full_like(ce_num[:1, None], lambda_dice)
        f_ce = torch.full_like(ce_num, lambda_ce)
        loss = lambda_ce * ce_num.sum() + lambda_dice * (sel * dice).sum()
    else:
        w = lambda_dice / sel.sum().clamp_min(1).reshape(1, 1)
        f_ce = torch.full_like(ce_num, lambda_ce)
        scale = 1 / ce_den.sum().clamp_min(1e-12).reshape(1)
        loss = lambda_ce * ce_num.sum() * scale[0] + (w * sel * dice).sum()
    f_inter = (w * sel * dd * 2 / safe).expand(n, c)
    f_psum = (-w * sel * dd * num / (safe * safe)).expand(n, c)
    return loss, torch.cat([torch.stack([f_inter, f_psum], -1).reshape(-1), f_ce, scale])


@torch.library.register_fake("brnnseg::ce_dice_loss")
def _ce_dice_loss_fake(logits, target, weight, class_weights, boundary_weight, boundary_radius, ignore_index,
                       label_smoothing, squared, lambda_ce, lambda_dice, smooth_nr, smooth_dr, batch, log_dice,
                       include_background, average, reduction):
    n, c = logits.shape[:2]
    loss = logits.new_empty((n,) if reduction == "none" else ())
    return loss, logits.new_empty((2 * n * c + n + 1,), dtype=_sums_dtype(logits))


@torch.library.register_fake("brnnseg::ce_dice_loss_backward")
def _ce_dice_loss_backward_fake(grad, factors, logits, target, weight, class_weights, boundary_weight,
                                boundary_radius, ignore_index, label_smoothing, squared, batch, reduction):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


def _loss_setup_context(ctx, inputs, output):
    (logits, target, weight, class_weights, boundary_weight, boundary_radius, ignore_index, label_smoothing, squared,
     _lce, _ldice, _snr, _sdr, batch, _log, _bg, _avg, reduction) = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no zeros for the factors' gradient
    ctx.save_for_backward(output[1], logits, target, weight, class_weights)
    ctx.params = (boundary_weight, boundary_radius, ignore_index, label_smoothing, squared, batch, reduction)


def _loss_backward(ctx, grad, _grad_factors):
    ops.no_double_backward("brnnseg::ce_dice_loss")
    if grad is None:
        return (None,) * 18
    factors, logits, target, weight, class_weights = ctx.saved_tensors
    dx = torch.ops.brnnseg.ce_dice_loss_backward(grad, factors, logits, target, weight, class_weights, *ctx.params)
    return (dx,) + (None,) * 17


# The op's autograd on every device. CPU tensors take the same formula written in C++ (AutogradCPU,
# csrc/cpu/ce_dice_cpu.cpp), registered directly to that key, which takes precedence: the Python
# autograd.Function cost 0.2-0.4 ms a step there, as much as a kernel. tests/test_ce_dice_loss.py holds
# the two formulas together (test_python_autograd_formula_matches_the_cpu_one).
torch.library.register_autograd("brnnseg::ce_dice_loss", _loss_backward, setup_context=_loss_setup_context)


def _register_loss_cuda_kernels() -> None:
    try:
        from . import ce_dice_kernels
    except ImportError:
        return
    torch.library.register_kernel("brnnseg::ce_dice_loss", "cuda")(ce_dice_kernels.ce_dice_loss_triton)
    torch.library.register_kernel("brnnseg::ce_dice_loss_backward", "cuda")(ce_dice_kernels.ce_dice_loss_backward_triton)


_register_loss_cuda_kernels()


def _loss_op(*args):
    """The op call (a seam the tests use to run the Triton launchers on CPU tensors)."""
    return torch.ops.brnnseg.ce_dice_loss(*args)


def ce_dice_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                 class_weights: Optional[Union[Sequence[float], Tensor]] = None, ignore_index: int = -100,
                 label_smoothing: float = 0.0, boundary_weight: float = 0.0, boundary_radius: int = 1,
                 lambda_ce: float = 1.0, lambda_dice: float = 1.0, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, squared: bool = False, log_dice: bool = False, include_background: bool = True,
                 average: str = "present", reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy (+ boundary weighting) + softmax Dice in one fused pass; the math is in this
    module's docstring. logits (N, C, H, W) or (N, C, D, H, W); target integer labels (N, *spatial) (or
    (N, 1, *spatial)) of any integer dtype, or one-hot/soft (N, C, *spatial); weight (N, *spatial)."""
    op = "ce_dice_loss"
    target = _labels_or_soft(logits, target, op)
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if average not in ("present", "all"):
        raise ValueError(f"{op}: average must be 'present' or 'all', got {average!r}")
    if isinstance(boundary_radius, bool) or not isinstance(boundary_radius, int) or boundary_radius < 0:
        raise ValueError(f"{op}: boundary_radius must be an integer >= 0, got {boundary_radius!r}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if target.device != logits.device:
        raise ValueError(f"{op}: target must be on the device of logits ({logits.device}), got {target.device}")
    n, c = logits.shape[:2]
    cw = None
    if class_weights is not None:
        cw = class_weights if isinstance(class_weights, Tensor) else torch.as_tensor(class_weights)
        if cw.dim() != 1 or cw.numel() != c:
            raise ValueError(f"{op}: class_weights must have shape (C,) = ({c},), got {tuple(cw.shape)}")
        cw = cw.to(device=logits.device, dtype=_sums_dtype(logits), non_blocking=True)
    if weight is not None:
        want = (n,) + tuple(logits.shape[2:])
        if tuple(weight.shape) != want:
            raise ValueError(f"{op}: weight must have shape {want}, got {tuple(weight.shape)}")
        weight = weight.to(_sums_dtype(logits))
    index = target.dim() == logits.dim() - 1
    if index and target.dtype == torch.bool:
        target = target.to(torch.uint8)
    # Labels outside [0, C) that are not ignore_index: on the CPU the op raises a ValueError naming the value;
    # on CUDA the loss is NaN (raising would make every call wait for the GPU), or, with
    # BRNNSEG_CHECK_LABELS=1, the same ValueError.
    if dispatch.loss_path(logits, "ce_dice") == "unfused":  # CUDA, where the fused op is not measured faster
        if index and os.environ.get("BRNNSEG_CHECK_LABELS", "0") == "1":  # else NaN, as the fused CUDA op
            from .ce_dice_kernels import check_labels

            check_labels(op, target, c, int(ignore_index))
        return unfused.ce_dice_loss(logits, target, weight, cw, int(ignore_index), float(label_smoothing),
                                    float(boundary_weight), int(boundary_radius), float(lambda_ce), float(lambda_dice),
                                    float(smooth_nr), float(smooth_dr), bool(batch), bool(squared), bool(log_dice),
                                    bool(include_background), average, reduction)
    loss, _ = _loss_op(logits, target, weight, cw, float(boundary_weight), int(boundary_radius),
                       int(ignore_index) if index else None, float(label_smoothing), bool(squared), float(lambda_ce),
                       float(lambda_dice), float(smooth_nr), float(smooth_dr), bool(batch), bool(log_dice),
                       bool(include_background), average, reduction)
    return loss


class CEDiceLoss(nn.Module):
    """``lambda_ce * cross-entropy (class weights, label smoothing, boundary weighting) + lambda_dice *
    softmax Dice``, fused; the multi-class sibling of :class:`BCEDiceLoss`. Arguments: see
    :func:`ce_dice_loss` (MONAI's ``DiceCELoss`` names: ``lambda_ce``, ``lambda_dice``, ``batch``,
    ``include_background``, ``smooth_nr``, ``smooth_dr``, ``squared_pred`` as ``squared``).
    ``ce_weight``/``dice_weight`` are accepted as aliases of ``lambda_ce``/``lambda_dice``, ``weight``
    (MONAI's and torch's name for class weights) as an alias of ``class_weights``.

    Shapes: logits (N, C, H, W) or (N, C, D, H, W); target (N, H, W) / (N, D, H, W) integer labels (or
    with a channel of 1), or (N, C, ...) one-hot/soft; optional per-pixel ``weight`` in ``forward``."""

    def __init__(self, class_weights: Optional[Union[Sequence[float], Tensor]] = None, ignore_index: int = -100,
                 label_smoothing: float = 0.0, boundary_weight: float = 0.0, boundary_radius: int = 1,
                 lambda_ce: float = 1.0, lambda_dice: float = 1.0, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, squared: bool = False, log_dice: bool = False, include_background: bool = True,
                 average: str = "present", reduction: str = "mean", *, ce_weight: Optional[float] = None,
                 dice_weight: Optional[float] = None, weight: Optional[Union[Sequence[float], Tensor]] = None):
        super().__init__()
        if weight is not None:
            if class_weights is not None:
                raise ValueError("CEDiceLoss: give class_weights or its alias weight, not both")
            class_weights = weight
        lambda_ce = lambda_ce if ce_weight is None else ce_weight
        lambda_dice = lambda_dice if dice_weight is None else dice_weight
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"CEDiceLoss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        if average not in ("present", "all"):
            raise ValueError(f"CEDiceLoss: average must be 'present' or 'all', got {average!r}")
        if isinstance(boundary_radius, bool) or not isinstance(boundary_radius, int) or boundary_radius < 0:
            raise ValueError(f"CEDiceLoss: boundary_radius must be an integer >= 0, got {boundary_radius!r}")
        if class_weights is not None:
            self.register_buffer("class_weights", torch.as_tensor(class_weights, dtype=torch.float32).clone())
        else:
            self.class_weights = None
        self.kwargs = dict(ignore_index=int(ignore_index), label_smoothing=float(label_smoothing),
                           boundary_weight=float(boundary_weight), boundary_radius=boundary_radius,
                           lambda_ce=float(lambda_ce), lambda_dice=float(lambda_dice), smooth_nr=float(smooth_nr),
                           smooth_dr=float(smooth_dr), batch=bool(batch), squared=bool(squared),
                           log_dice=bool(log_dice), include_background=bool(include_background), average=average,
                           reduction=reduction)

    def forward(self, logits: Tensor, target: Tensor, weight: Optional[Tensor] = None) -> Tensor:
        return ce_dice_loss(logits, target, weight, class_weights=self.class_weights, **self.kwargs)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.kwargs.items())
