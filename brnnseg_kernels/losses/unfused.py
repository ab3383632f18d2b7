"""The unfused path of both losses: the same formula as the fused ops, written as plain PyTorch tensor ops
(the plain-PyTorch references of :mod:`brnnseg_kernels.reference`, computed in float32, float64 for float64
logits) and differentiated by autograd. It is what a user composes by hand, with every option of the fused
loss, and it is what a CUDA call of :func:`bce_dice_loss` / :func:`ce_dice_loss` runs wherever the fused op
is not measured faster on that GPU ("never slower than what users have": :func:`brnnseg_kernels.tuning.loss_choice`,
``BRNNSEG_CUDA_LOSS=auto|fused|unfused``). Nothing in it waits for the GPU unless ``channels`` is given.
Half-precision logits are computed in float32 and the loss returned in their dtype, as the fused op does."""
from __future__ import annotations

import torch
from torch import Tensor

from .. import reference

__all__ = ["bce_dice_loss", "ce_dice_loss"]


def _compute_dtype(logits: Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


def bce_dice_loss(logits: Tensor, target: Tensor, weight, pos_weight, boundary_weight: float, boundary_radius: int,
                  lambda_dice: float, lambda_ce: float, smooth_nr: float, smooth_dr: float, batch: bool, squared: bool,
                  log_dice: bool, include_background: bool, channels, ignore_index, reduction: str) -> Tensor:
    """:func:`brnnseg_kernels.losses.seg_loss.bce_dice_loss`'s arguments, resolved (MONAI names)."""
    return reference.seg_loss(logits, target, weight, pos_weight=pos_weight, boundary_weight=boundary_weight,
                              boundary_radius=boundary_radius, dice_weight=lambda_dice, bce_weight=lambda_ce,
                              smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch_dice=batch, squared=squared,
                              log_dice=log_dice, include_background=include_background, channels=channels,
                              ignore_index=ignore_index, reduction=reduction, compute_dtype=_compute_dtype(logits))


def ce_dice_loss(logits: Tensor, target: Tensor, weight, class_weights, ignore_index: int, label_smoothing: float,
                 boundary_weight: float, boundary_radius: int, lambda_ce: float, lambda_dice: float, smooth_nr: float,
                 smooth_dr: float, batch: bool, squared: bool, log_dice: bool, include_background: bool, average: str,
                 reduction: str) -> Tensor:
    """:func:`brnnseg_kernels.losses.ce_dice.ce_dice_loss`'s arguments, checked."""
    return reference.ce_dice_loss(logits, target, weight, class_weights=class_weights, ignore_index=ignore_index,
                                  label_smoothing=label_smoothing, boundary_weight=boundary_weight,
                                  boundary_radius=boundary_radius, lambda_ce=lambda_ce, lambda_dice=lambda_dice,
                                  smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch, squared=squared,
                                  log_dice=log_dice, include_background=include_background, average=average,
                                  reduction=reduction, compute_dtype=_compute_dtype(logits))
