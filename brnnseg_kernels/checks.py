"""Argument checks of the public API, in one place. Every check raises ``TypeError``/``ValueError``
naming the caller (``who``), the argument and what was expected; the C++ ops repeat their own checks
(csrc/include/brnnseg/checks.h) for callers that reach them directly."""
from __future__ import annotations

from typing import Optional, Sequence

from torch import Tensor

from . import cells
from .cells import one_of

__all__ = ["check_positive_ints", "check_feature_map", "check_divisible", "check_spatial_dims", "check_rnn",
           "check_seg_loss_inputs"]


def check_positive_ints(who: str, **values) -> None:
    """ValueError naming the argument unless every value is a positive int (bools rejected)."""
    for arg, val in values.items():
        if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
            raise ValueError(f"{who}: {arg} must be a positive integer, got {val!r}")


def check_feature_map(who: str, x, in_channels: Optional[int] = None, params: Sequence[Tensor] = (),
                      spatial_dims: int = 2) -> None:
    """Raise a clear error for input a sweep cannot take: (N, C, H, W), or (N, C, D, H, W) for volumes."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: input must be a torch.Tensor, got {type(x).__name__}")
    names = "(N, C, H, W)" if spatial_dims == 2 else "(N, C, D, H, W)"
    if x.dim() != spatial_dims + 2:
        raise ValueError(f"{who}: input must be {spatial_dims + 2}-D {names}, got {x.dim()}-D with shape "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: input must be a floating point tensor, got dtype {x.dtype}")
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(f"{who}: expected input with in_channels={in_channels} channels (dim 1), "
                         f"got shape {tuple(x.shape)}")
    for p in params:
        if p is not None and p.device != x.device:
            raise ValueError(f"{who}: input is on {x.device} but the layer's parameters are on {p.device}; "
                             "move them to the same device")


def check_divisible(who: str, x: Tensor, in_channels: int, spatial_dims: int, stride: int) -> None:
    """Input checks shared by the models: rank, dtype, channels, sizes the encoder's stride divides."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: input must be a torch.Tensor, got {type(x).__name__}")
    names = "(N, C, H, W)" if spatial_dims == 2 else "(N, C, D, H, W)"
    if x.dim() != spatial_dims + 2:
        raise ValueError(f"{who}: input must be {spatial_dims + 2}-D {names}, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: input must be a floating point tensor, got dtype {x.dtype}")
    if x.shape[1] != in_channels:
        raise ValueError(f"{who}: expected {in_channels} input channels (dim 1), got shape {tuple(x.shape)}")
    bad = [s for s in x.shape[2:] if s % stride]
    if bad:
        raise ValueError(f"{who}: spatial sizes {tuple(x.shape[2:])} must be divisible by the encoder's stride "
                         f"{stride}; pad or crop the input, or call model.predict(x), which pads and crops back")


def check_spatial_dims(who: str, spatial_dims) -> None:
    if spatial_dims not in (2, 3):
        raise ValueError(f"{who}: spatial_dims must be 2 or 3, got {spatial_dims!r}")


def check_rnn(who: str, rnn) -> None:
    """``rnn`` must name a row of the cell table (brnnseg_kernels.cells)."""
    if rnn not in cells.names():
        raise ValueError(f"{who}: rnn must be {one_of(cells.names())}, got {rnn!r}")



def check_seg_loss_inputs(who: str, logits, target, weight, reduction, boundary_radius) -> None:
    """The fused segmentation loss's arguments (brnnseg_kernels.losses)."""
    if not isinstance(logits, Tensor) or not isinstance(target, Tensor):
        raise TypeError(f"{who}: logits and target must be tensors")
    if logits.dim() not in (4, 5):
        raise ValueError(f"{who}: logits must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(logits.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"{who}: logits must be floating point, got {logits.dtype}")
    if target.shape != logits.shape:
        raise ValueError(f"{who}: target must have the shape of logits {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    if target.device != logits.device:
        raise ValueError(f"{who}: target is on {target.device}, logits on {logits.device}")
    if weight is not None and weight.shape != logits.shape:
        raise ValueError(f"{who}: weight must have the shape of logits {tuple(logits.shape)}, got "
                         f"{tuple(weight.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{who}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if isinstance(boundary_radius, bool) or not isinstance(boundary_radius, int) or boundary_radius < 0:
        raise ValueError(f"{who}: boundary_radius must be an integer >= 0, got {boundary_radius!r}")
