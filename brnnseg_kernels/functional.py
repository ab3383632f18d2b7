"""Functional forms of the layers: ``renet`` (a ReNet block), ``bigru2d``/``bilstm2d`` and the single
``sweep``. Weights are stacked per direction, (w_ih (2, G*hid, C), w_hh (2, G*hid, hid), b_ih, b_hh)."""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import ops, reference
from .losses.seg_loss import bce_dice_loss  # noqa: F401  (fused BCE + boundary + Dice loss)

__all__ = ["sweep", "renet", "bigru2d", "bilstm2d", "check_feature_map", "bce_dice_loss"]

AXES = {"rows": 3, "cols": 2}
_CPU_DTYPES = (torch.float32, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# The fused CUDA kernel runs one thread per hidden unit (csrc/cuda/line_scan_launch.h); larger
# hidden sizes take the per-step path (reference.sweep: one GEMM + pointwise ops per step).
CUDA_MAX_HIDDEN = 512


def _has_kernel(device: torch.device) -> bool:
    if device.type in ("cpu", "meta"):
        return True
    if device.type == "cuda":
        from . import build_info

        return bool(build_info().get("with_cuda"))
    return False


def check_feature_map(who: str, x, in_channels: Optional[int] = None, params: Sequence[Tensor] = ()) -> None:
    """Raise a clear error for input a sweep cannot take."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{who}: input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{who}: input must be 4-D (N, C, H, W), got {x.dim()}-D with shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{who}: input must be a floating point tensor, got dtype {x.dtype}")
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(f"{who}: expected input with in_channels={in_channels} channels (dim 1), "
                         f"got shape {tuple(x.shape)}")
    for p in params:
        if p is not None and p.device != x.device:
            raise ValueError(f"{who}: input is on {x.device} but the layer's parameters are on {p.device}; "
                             "move them to the same device")


def sweep(x: Tensor, weights: Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]], cell: str = "gru",
          axis: int = 3, channels_last: Optional[bool] = None) -> Tensor:
    """One bidirectional sweep along every row (axis=3) or column (axis=2): (N, C, H, W) -> (N, 2*hid, H, W).

    Runs the fused kernel where one exists (float32/float64; float16/bfloat16 are computed in float32
    and cast back), the plain-PyTorch reference elsewhere. ``channels_last`` picks the output's
    memory format (default: that of ``x``)."""
    w_ih, w_hh, b_ih, b_hh = weights
    if channels_last is None:
        channels_last = ops._is_channels_last(x)
    if x.device.type == "cuda":
        if torch.is_autocast_enabled("cuda"):
            # Under autocast the sweep runs in the autocast dtype (weights cast like nn.GRU's under cuDNN).
            dt = torch.get_autocast_dtype("cuda")
            x, w_ih, w_hh = x.to(dt), w_ih.to(dt), w_hh.to(dt)
        if not _has_kernel(x.device) or w_hh.shape[-1] > CUDA_MAX_HIDDEN or x.dtype not in _CUDA_DTYPES:
            return reference.sweep(cell, x, w_ih, w_hh, b_ih, b_hh, axis)
        cast = [None if t is None else t.to(x.dtype) for t in (w_ih, w_hh, b_ih, b_hh)]
        return ops.sweep(cell, x, *cast, axis=axis, channels_last=channels_last)
    if not _has_kernel(x.device):
        return reference.sweep(cell, x, w_ih, w_hh, b_ih, b_hh, axis)
    if x.dtype not in _CPU_DTYPES:
        f32 = [None if t is None else t.float() for t in (x, w_ih, w_hh, b_ih, b_hh)]
        return ops.sweep(cell, *f32, axis=axis, channels_last=channels_last).to(x.dtype)
    return ops.sweep(cell, x, w_ih, w_hh, b_ih, b_hh, axis=axis, channels_last=channels_last)


def _pair_kernel_applies(x: Tensor, weights: Dict[str, Tuple]) -> bool:
    """The pair op takes the inputs as they are: no autocast casts, kernel dtypes, fused-kernel sizes."""
    hid = weights["rows"][1].shape[-1]
    same_dtype = all(t is None or t.dtype == x.dtype for w in weights.values() for t in w)
    if x.device.type == "cpu":
        return same_dtype and x.dtype in _CPU_DTYPES
    if x.device.type == "cuda":
        return (same_dtype and _has_kernel(x.device) and x.dtype in _CUDA_DTYPES and hid <= CUDA_MAX_HIDDEN
                and not torch.is_autocast_enabled("cuda"))
    return False


def renet(x: Tensor, weights: Dict[str, Tuple], cell: str = "gru", order: Tuple[str, str] = ("rows", "cols"),
          mode: str = "sequential") -> Tensor:
    """A ReNet block. ``mode="sequential"``: sweep ``order[0]``, then ``order[1]`` over its output,
    giving 2*hid channels. ``mode="parallel"``: both sweeps read ``x``, outputs concatenated in
    ``order`` (4*hid channels). The output keeps the memory format of ``x``."""
    out_cl = ops._is_channels_last(x)
    if mode == "parallel":
        if order == ("rows", "cols") and _pair_kernel_applies(x, weights):
            # Both sweeps in one op (one launch on a GPU).
            return ops.sweep_pair(cell, x, weights["rows"], weights["cols"], channels_last=out_cl)
        return torch.cat([sweep(x, weights[name], cell, AXES[name], channels_last=out_cl) for name in order], dim=1)
    # The intermediate map is channels_last: the next sweep's input GEMM then reads it row-major.
    y = sweep(x, weights[order[0]], cell, AXES[order[0]], channels_last=True)
    return sweep(y, weights[order[1]], cell, AXES[order[1]], channels_last=out_cl)


def bigru2d(x: Tensor, rows: Tuple, cols: Tuple, order=("rows", "cols"), mode="sequential") -> Tensor:
    """GRU ReNet block; ``rows``/``cols`` are stacked weight tuples."""
    return renet(x, {"rows": rows, "cols": cols}, "gru", tuple(order), mode)


def bilstm2d(x: Tensor, rows: Tuple, cols: Tuple, order=("rows", "cols"), mode="sequential") -> Tensor:
    """LSTM ReNet block; ``rows``/``cols`` are stacked weight tuples."""
    return renet(x, {"rows": rows, "cols": cols}, "lstm", tuple(order), mode)
