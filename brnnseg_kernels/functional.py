"""Functional forms of the layers: ``renet`` (a ReNet block), ``bigru2d``/``bilstm2d`` and the single
``sweep``. Weights are stacked per direction, (w_ih (2, G*hid, C), w_hh (2, G*hid, hid), b_ih, b_hh).
Which kernel runs (and in which dtype) is decided in :mod:`brnnseg_kernels.dispatch`."""
from __future__ import annotations

import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from . import dispatch, ops, reference
from .checks import check_feature_map  # noqa: F401  (re-exported: older import path)
from .losses.seg_loss import bce_dice_loss  # noqa: F401  (fused BCE + boundary + Dice loss)
from .losses.ce_dice import ce_dice_loss  # noqa: F401  (fused cross-entropy + boundary + Dice loss)

__all__ = ["sweep", "renet", "bigru2d", "bilstm2d", "check_feature_map", "bce_dice_loss", "ce_dice_loss"]

AXES = {"rows": 3, "cols": 2}


def sweep(x: Tensor, weights: Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]], cell: str = "gru",
          axis: int = 3, channels_last: Optional[bool] = None) -> Tensor:
    """One bidirectional sweep along every row (axis=3) or column (axis=2): (N, C, H, W) -> (N, 2*hid, H, W).

    Runs the fused kernel where one exists, the plain-PyTorch reference elsewhere (the rules:
    :mod:`brnnseg_kernels.dispatch`). ``channels_last`` picks the output's memory format (default: that
    of ``x``)."""
    w_ih, w_hh, b_ih, b_hh = weights
    if channels_last is None:
        channels_last = ops.is_channels_last(x)
    dt = dispatch.autocast_dtype(x)
    autocast = dt is not None and x.dtype == torch.float32
    if autocast:  # autocast casts float32 only, as torch's does
        x, w_ih, w_hh = x.to(dt), w_ih.to(dt), w_hh.to(dt)
    training = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w_ih, w_hh, b_ih, b_hh))
    path = dispatch.sweep_path(x, w_hh.shape[-1], cell, axis, training, autocast)
    if path == "reference":
        return reference.sweep(cell, x, w_ih, w_hh, b_ih, b_hh, axis)
    if path == "torch":
        cast = [None if t is None else t.to(x.dtype) for t in (w_ih, w_hh, b_ih, b_hh)]
        y = _torch_rnn_sweep(x, *cast, axis, cell)
        return y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if path == "kernel-float32":
        f32 = [None if t is None else t.float() for t in (x, w_ih, w_hh, b_ih, b_hh)]
        return ops.sweep(cell, *f32, axis=axis, channels_last=channels_last).to(x.dtype)
    cast = [None if t is None else t.to(x.dtype) for t in (w_ih, w_hh, b_ih, b_hh)]
    return ops.sweep(cell, x, *cast, axis=axis, channels_last=channels_last)


_TORCH_RNN_OPS = {"gru": torch.gru, "rnn_tanh": torch.rnn_tanh, "rnn_relu": torch.rnn_relu}


def _torch_rnn_sweep(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
                     axis: int, cell: str = "lstm") -> Tensor:
    """The sweep through torch's fused bidirectional RNN op (``torch.gru/lstm/rnn_tanh/rnn_relu``: cuDNN's
    on a GPU, oneDNN's or ATen's on the CPU), the lines of x as a batch of sequences: what
    ``reference.ReNetBaseline`` runs, with our stacked weights (the same gate order as torch's). cuDNN
    copies the weights into one buffer per call (they are not one flat chunk, as an nn.GRU's are after
    ``flatten_parameters``): a copy of the weights, microseconds against milliseconds."""
    n, c, h, w = x.shape
    hid = w_hh.shape[-1]
    seq = (x.permute(0, 2, 3, 1).reshape(n * h, w, c) if axis == 3 else
           x.permute(0, 3, 2, 1).reshape(n * w, h, c))
    has_bias = b_ih is not None or b_hh is not None
    params = []
    for d in range(2):
        params += [w_ih[d], w_hh[d]]
        if has_bias:
            params += [t[d] if t is not None else w_ih.new_zeros(w_ih.shape[1]) for t in (b_ih, b_hh)]
    h0 = seq.new_zeros(2, seq.shape[0], hid)
    train = torch.is_grad_enabled()

    def run():
        if cell == "lstm":
            return torch.lstm(seq, (h0, h0), params, has_bias, 1, 0.0, train, True, True)[0]
        return _TORCH_RNN_OPS[cell](seq, h0, params, has_bias, 1, 0.0, train, True, True)[0]

    if torch.compiler.is_compiling():
        y = run()
    else:
        with warnings.catch_warnings():  # "RNN module weights are not part of single contiguous chunk": above
            warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")
            y = run()
    if axis == 3:
        return y.reshape(n, h, w, 2 * hid).permute(0, 3, 1, 2)
    return y.reshape(n, w, h, 2 * hid).permute(0, 3, 2, 1)


def renet(x: Tensor, weights: Dict[str, Tuple], cell: str = "gru", order: Tuple[str, str] = ("rows", "cols"),
          mode: str = "sequential") -> Tensor:
    """A ReNet block. ``mode="sequential"``: sweep ``order[0]``, then ``order[1]`` over its output,
    giving 2*hid channels. ``mode="parallel"``: both sweeps read ``x``, outputs concatenated in
    ``order`` (4*hid channels). The output keeps the memory format of ``x``."""
    out_cl = ops.is_channels_last(x)
    if mode == "parallel":
        flat = [t for w in weights.values() for t in w]
        if order == ("rows", "cols") and dispatch.pair_kernel_applies(x, flat, weights["rows"][1].shape[-1], cell):
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
