"""Typed wrappers over ``torch.ops.brnnseg.*``, each op's fake (meta) kernel and autograd written out
next to it, one section per op (grep an op's name to find all of it).

Schemas: csrc/registration.cpp; shapes and letters: csrc/include/brnnseg/conventions.h. Every op takes
the kernel cell by name (``cell``: a row of ``brnnseg_kernels.cells``: "gru", "lstm", ...).

* ``sweep(cell, x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training) -> (y, workspace)``: one
  bidirectional sweep along every row (axis 3) or column (axis 2) of x (N, C, H, W); y (N, 2*hid, H, W),
  forward direction first. ``workspace`` holds what backward needs when ``training`` (else it is empty):
  (2, T, lines, S*hid), time-major per direction, T = W, lines = N*H for axis 3 and T = H, lines = N*W
  for axis 2, S = the cell's saved slots (``cells.spec(cell).saved``).
* ``sweep_pair``: mode="parallel", the row and the column sweep of one x in one launch.
* ``sequence``: one layer of the drop-in nn.GRU/LSTM/RNN over a batch of sequences.
* ``kernel_gemm``: the CPU kernels' per-step GEMM, for benchmarks and tests.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loads the library that registers the ops)
from .cells import spec

__all__ = ["sweep", "sweep_pair", "sequence", "kernel_gemm", "no_double_backward", "is_channels_last"]


def is_channels_last(t: Tensor) -> bool:
    return (not t.is_contiguous()) and t.is_contiguous(memory_format=torch.channels_last)


_is_channels_last = is_channels_last  # older name, kept for callers


def no_double_backward(op: str) -> None:
    """The backward ops have no derivative of their own. Under create_graph=True (grad mode on
    inside backward) refuse, rather than hand back gradients whose own gradients would silently be
    missing (e.g. in a gradient penalty)."""
    if torch.is_grad_enabled():
        raise NotImplementedError(f"{op}: double backward (create_graph=True through this op) is not supported")


def _check_devices(op: str, x: Tensor, *others: Optional[Tensor]) -> None:
    # The fake kernel runs for any meta/fake argument, so it repeats the C++ device check.
    for t in others:
        if t is not None and t.device != x.device:
            raise RuntimeError(f"{op}: weights must be on the device of x ({x.device}), got {t.device}")


def _needs_workspace(*tensors: Optional[Tensor]) -> bool:
    """Save for backward: "autograd will need it"."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _workspace_dtype(x: Tensor, sweep: bool = False) -> torch.dtype:
    """The dtype of the saved slots: float32 (float64 for float64 input): half/bfloat16 ops keep float32
    state. bfloat16 ops on the CPU save theirs in bfloat16 (csrc/cpu/recurrence/tile_engine.h, SavedSlot:
    half the largest tensor a training step keeps). Under simulated_cuda, CPU sweeps run the CUDA
    kernels and follow their rule (float32)."""
    if x.dtype == torch.float64:
        return torch.float64
    if x.dtype == torch.bfloat16 and x.device.type == "cpu":
        from . import dispatch

        if not (sweep and dispatch._SIMULATED_CUDA):
            return torch.bfloat16
    return torch.float32


def _missing_workspace(op: str) -> RuntimeError:
    return RuntimeError(
        f"{op}: backward needs the state saved by a forward run with training=True; this output was computed "
        "with training=False (e.g. under torch.no_grad or with no input requiring grad)")


# ---- brnnseg::sweep ---------------------------------------------------------------------------------

def sweep(cell: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
          axis: int, channels_last: bool = False, training: Optional[bool] = None) -> Tensor:
    """Bidirectional sweep of ``cell`` along every line of ``x``; returns y (N, 2*hid, H, W).

    ``training`` (saving the workspace for backward) defaults to "autograd will need it"."""
    if training is None:
        training = _needs_workspace(x, w_ih, w_hh, b_ih, b_hh)
    y, _ = torch.ops.brnnseg.sweep(cell, x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training)
    return y


def _sweep_workspace_fake(cell: str, x: Tensor, hid: int, axis: int, training: bool) -> Tensor:
    n, _, h, w = x.shape
    steps, lines = (w, n * h) if axis == 3 else (h, n * w)
    shape = (2, steps, lines, spec(cell).saved * hid) if training else (0,)
    return x.new_empty(shape, dtype=_workspace_dtype(x, sweep=True))


@torch.library.register_fake("brnnseg::sweep")
def _sweep_fake(cell, x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training):
    _check_devices("brnnseg::sweep", x, w_ih, w_hh, b_ih, b_hh)
    n, _, h, w = x.shape
    hid = w_hh.shape[2]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((n, 2 * hid, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    return y, _sweep_workspace_fake(cell, x, hid, axis, training)


@torch.library.register_fake("brnnseg::sweep_backward")
def _sweep_backward_fake(cell, grad_y, x, w_ih, w_hh, y, workspace, axis):
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
    gh = w_ih.shape[1]
    return (grad_x, w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), w_ih.new_empty((2, gh)),
            w_ih.new_empty((2, gh)))


def _sweep_setup_context(ctx, inputs, output):
    cell, x, w_ih, w_hh, b_ih, b_hh, axis, _channels_last, _training = inputs
    y, workspace = output
    # The workspace is internal: no gradient flows into it, and autograd must not build a zero
    # gradient of its (large) shape for every backward.
    ctx.mark_non_differentiable(workspace)
    ctx.set_materialize_grads(False)
    ctx.cell, ctx.axis = cell, axis
    ctx.has_bias = (b_ih is not None, b_hh is not None)
    ctx.save_for_backward(x, w_ih, w_hh, y, workspace)


def _sweep_backward(ctx, grad_y, _grad_workspace):
    no_double_backward("brnnseg::sweep")
    if grad_y is None:
        return (None,) * 9
    x, w_ih, w_hh, y, workspace = ctx.saved_tensors
    if workspace.numel() == 0 and y.numel() > 0:
        raise _missing_workspace("brnnseg::sweep")
    gx, gw_ih, gw_hh, gb_ih, gb_hh = torch.ops.brnnseg.sweep_backward(ctx.cell, grad_y, x, w_ih, w_hh, y, workspace,
                                                                      ctx.axis)
    return (None, gx, gw_ih, gw_hh, gb_ih if ctx.has_bias[0] else None, gb_hh if ctx.has_bias[1] else None,
            None, None, None)


torch.library.register_autograd("brnnseg::sweep", _sweep_backward, setup_context=_sweep_setup_context)


# ---- brnnseg::sweep_pair (mode="parallel") ----------------------------------------------------------

def sweep_pair(cell: str, x: Tensor, rows: Tuple, cols: Tuple, channels_last: bool = False,
               training: Optional[bool] = None) -> Tensor:
    """mode="parallel": the row sweep and the column sweep of the same ``x`` (one launch on a GPU);
    returns (N, 4*hid, H, W) = [row sweep | column sweep]. ``rows``/``cols``: stacked weight tuples."""
    if training is None:
        training = _needs_workspace(x, *rows, *cols)
    y, _, _ = torch.ops.brnnseg.sweep_pair(cell, x, *rows, *cols, channels_last, training)
    return y


@torch.library.register_fake("brnnseg::sweep_pair")
def _sweep_pair_fake(cell, x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ih_c, w_hh_c, b_ih_c, b_hh_c, channels_last,
                     training):
    _check_devices("brnnseg::sweep_pair", x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ih_c, w_hh_c, b_ih_c, b_hh_c)
    n, _, h, w = x.shape
    hid = w_hh_r.shape[2]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = torch.empty((n, 4 * hid, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
    return (y, _sweep_workspace_fake(cell, x, hid, 3, training),
            _sweep_workspace_fake(cell, x, w_hh_c.shape[2], 2, training))


@torch.library.register_fake("brnnseg::sweep_pair_backward")
def _sweep_pair_backward_fake(cell, grad_y, x, w_ih_r, w_hh_r, w_ih_c, w_hh_c, y, ws_r, ws_c):
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    out = [torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)]
    for w_ih, w_hh in ((w_ih_r, w_hh_r), (w_ih_c, w_hh_c)):
        gh = w_ih.shape[1]
        out += [w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), w_ih.new_empty((2, gh)),
                w_ih.new_empty((2, gh))]
    return out


def _sweep_pair_setup_context(ctx, inputs, output):
    cell, x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ih_c, w_hh_c, b_ih_c, b_hh_c, _cl, _training = inputs
    y, ws_r, ws_c = output
    ctx.mark_non_differentiable(ws_r, ws_c)
    ctx.set_materialize_grads(False)
    ctx.cell = cell
    ctx.has_bias = (b_ih_r is not None, b_hh_r is not None, b_ih_c is not None, b_hh_c is not None)
    ctx.save_for_backward(x, w_ih_r, w_hh_r, w_ih_c, w_hh_c, y, ws_r, ws_c)


def _sweep_pair_backward(ctx, grad_y, _g1, _g2):
    no_double_backward("brnnseg::sweep_pair")
    if grad_y is None:
        return (None,) * 12
    x, w_ih_r, w_hh_r, w_ih_c, w_hh_c, y, ws_r, ws_c = ctx.saved_tensors
    if ws_r.numel() == 0 and y.numel() > 0:
        raise _missing_workspace("brnnseg::sweep_pair")
    g = torch.ops.brnnseg.sweep_pair_backward(ctx.cell, grad_y, x, w_ih_r, w_hh_r, w_ih_c, w_hh_c, y, ws_r, ws_c)
    hb = ctx.has_bias
    return (None, g[0], g[1], g[2], g[3] if hb[0] else None, g[4] if hb[1] else None, g[5], g[6],
            g[7] if hb[2] else None, g[8] if hb[3] else None, None, None)


torch.library.register_autograd("brnnseg::sweep_pair", _sweep_pair_backward, setup_context=_sweep_pair_setup_context)


# ---- brnnseg::sequence (the drop-in nn.GRU / nn.LSTM / nn.RNN), one layer --------------------------
#
# sequence(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first, training) -> (y, h_n, c_n, workspace)
# x (T, B, C) or (B, T, C); weights stacked per direction (D = 1 or 2); h0/c0 (D, B, hid) or None (c0 only
# for cells with a cell state; c_n is empty for the others); lengths (B,) int64 CPU or None.

def sequence(cell: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
             h0: Optional[Tensor] = None, c0: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
             batch_first: bool = False, training: Optional[bool] = None):
    """One RNN layer over a batch of sequences; returns (y, h_n, c_n) for cells with a cell state
    (LSTM), else (y, h_n)."""
    if training is None:
        training = _needs_workspace(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    y, h_n, c_n, _ = torch.ops.brnnseg.sequence(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first,
                                                training)
    return (y, h_n, c_n) if spec(cell).has_cell_state else (y, h_n)


@torch.library.register_fake("brnnseg::sequence")
def _sequence_fake(cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first, training):
    _check_devices("brnnseg::sequence", x, w_ih, w_hh)
    s = spec(cell)
    t_len, b = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    d, hid = w_hh.shape[0], w_hh.shape[2]
    y = x.new_empty((x.shape[0], x.shape[1], d * hid))
    h_n = x.new_empty((d, b, hid))
    c_n = x.new_empty((d, b, hid) if s.has_cell_state else (0,))
    ws = x.new_empty((d, t_len, b, s.saved * hid) if training else (0,), dtype=_workspace_dtype(x))
    return y, h_n, c_n, ws


@torch.library.register_fake("brnnseg::sequence_backward")
def _sequence_backward_fake(cell, grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, h0, c0, lengths, y, workspace,
                            batch_first):
    d, gh, hid = w_hh.shape
    b = x.shape[0] if batch_first else x.shape[1]
    return (x.new_empty(x.shape), w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), w_ih.new_empty((d, gh)),
            w_ih.new_empty((d, gh)), x.new_empty((d, b, hid)),
            x.new_empty((d, b, hid) if spec(cell).has_cell_state else (0,)))


def _sequence_setup_context(ctx, inputs, output):
    cell, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first, _training = inputs
    y, _h_n, _c_n, workspace = output
    ctx.mark_non_differentiable(workspace)
    ctx.set_materialize_grads(False)
    ctx.cell, ctx.batch_first = cell, batch_first
    ctx.has = (b_ih is not None, b_hh is not None, h0 is not None, c0 is not None)
    ctx.save_for_backward(x, w_ih, w_hh, h0, c0, lengths, y, workspace)


def _sequence_backward(ctx, grad_y, grad_h_n, grad_c_n, _grad_workspace):
    no_double_backward("brnnseg::sequence")
    if grad_y is None and grad_h_n is None and grad_c_n is None:
        return (None,) * 11
    x, w_ih, w_hh, h0, c0, lengths, y, workspace = ctx.saved_tensors
    if workspace.numel() == 0 and y.numel() > 0:
        raise _missing_workspace("brnnseg::sequence")
    gx, gwi, gwh, gbi, gbh, gh0, gc0 = torch.ops.brnnseg.sequence_backward(
        ctx.cell, grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, h0, c0, lengths, y, workspace, ctx.batch_first)
    has_bi, has_bh, has_h0, has_c0 = ctx.has
    return (None, gx, gwi, gwh, gbi if has_bi else None, gbh if has_bh else None, gh0 if has_h0 else None,
            gc0 if has_c0 else None, None, None, None)


torch.library.register_autograd("brnnseg::sequence", _sequence_backward, setup_context=_sequence_setup_context)


# ---- brnnseg::kernel_gemm ---------------------------------------------------------------------------

@torch.library.register_fake("brnnseg::kernel_gemm")
def _kernel_gemm_fake(a, b):
    return a.new_empty((a.shape[0], b.shape[1]))


def kernel_gemm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b through the GEMM the CPU kernels call per step (no autograd; benchmarks and tests)."""
    return torch.ops.brnnseg.kernel_gemm(a, b)
