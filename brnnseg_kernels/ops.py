"""Typed wrappers over ``torch.ops.brnnseg.*``, with their fake (meta) kernels and autograd.

Sweep ops (schemas in csrc/registration.cpp, shapes in csrc/include/brnnseg/conventions.h):

* ``bigru_sweep(x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training) -> (y, workspace)``
* ``bilstm_sweep(...)`` likewise, and ``*_backward`` ops used by autograd.

x (N, C, H, W); w_ih (2, G*hid, C); w_hh (2, G*hid, hid); b_* (2, G*hid) or None, G = 3 (GRU) or
4 (LSTM); axis 3 sweeps every row (along W), axis 2 every column (along H). y is (N, 2*hid, H, W),
forward direction first, in channels_last memory when ``channels_last``. ``workspace`` holds the
gates autograd saves for backward when ``training`` (else it is empty): (2, T, lines, S*hid), time-major
per direction, with T = W, lines = N*H for axis 3 and T = H, lines = N*W for axis 2, and S = 4 (GRU: r, z,
n, W_hn h + b_hn) or 5 (LSTM: i, f, g, o, c).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loads the library that registers the ops)

__all__ = ["bigru_sweep", "bilstm_sweep", "sweep", "sweep_pair", "sequence", "kernel_gemm"]

_GATES = {"gru": 3, "lstm": 4}
_SAVED = {"gru": 4, "lstm": 5}
_OPS = {"gru": "bigru_sweep", "lstm": "bilstm_sweep"}


def _is_channels_last(t: Tensor) -> bool:
    return (not t.is_contiguous()) and t.is_contiguous(memory_format=torch.channels_last)


def sweep(cell: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
          axis: int, channels_last: bool = False, training: Optional[bool] = None) -> Tensor:
    """Bidirectional GRU/LSTM sweep along every line of ``x``; returns y (N, 2*hid, H, W).

    ``training`` (saving the workspace for backward) defaults to "autograd will need it"."""
    if training is None:
        training = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, w_ih, w_hh, b_ih, b_hh))
    op = getattr(torch.ops.brnnseg, _OPS[cell])
    y, _ = op(x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training)
    return y


def sweep_pair(cell: str, x: Tensor, rows: Tuple, cols: Tuple, channels_last: bool = False,
               training: Optional[bool] = None) -> Tensor:
    """mode="parallel": the row sweep and the column sweep of the same ``x`` (one launch on a GPU);
    returns (N, 4*hid, H, W) = [row sweep | column sweep]. ``rows``/``cols``: stacked weight tuples."""
    if training is None:
        training = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, *rows, *cols))
    op = getattr(torch.ops.brnnseg, f"{_OPS[cell]}_pair")
    y, _, _ = op(x, *rows, *cols, channels_last, training)
    return y


def bigru_sweep(x, w_ih, w_hh, b_ih=None, b_hh=None, axis: int = 3, channels_last: bool = False,
                training: Optional[bool] = None) -> Tensor:
    """GRU sweep; see :func:`sweep`."""
    return sweep("gru", x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training)


def bilstm_sweep(x, w_ih, w_hh, b_ih=None, b_hh=None, axis: int = 3, channels_last: bool = False,
                 training: Optional[bool] = None) -> Tensor:
    """LSTM sweep; see :func:`sweep`."""
    return sweep("lstm", x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training)


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


def _register(cell: str) -> None:
    name = f"brnnseg::{_OPS[cell]}"
    saved = _SAVED[cell]

    @torch.library.register_fake(name)
    def _fake(x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training):
        _check_devices(_OPS[cell], x, w_ih, w_hh, b_ih, b_hh)
        n, _, h, w = x.shape
        hid = w_hh.shape[2]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        y = torch.empty((n, 2 * hid, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
        steps, lines = (w, n * h) if axis == 3 else (h, n * w)
        shape = (2, steps, lines, saved * hid) if training else (0,)
        # Saved gates are float32 (float64 for float64 input): half/bfloat16 sweeps keep fp32 state.
        ws_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        return y, x.new_empty(shape, dtype=ws_dtype)

    @torch.library.register_fake(f"{name}_backward")
    def _fake_backward(grad_y, x, w_ih, w_hh, y, workspace, axis):
        fmt = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)
        gh = w_ih.shape[1]
        return (grad_x, w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
                w_ih.new_empty((2, gh)), w_ih.new_empty((2, gh)))

    def _setup_context(ctx, inputs, output):
        x, w_ih, w_hh, b_ih, b_hh, axis, _channels_last, _training = inputs
        y, workspace = output
        # The workspace is internal: no gradient flows into it, and autograd must not build a
        # zero gradient of its (large) shape for every backward.
        ctx.mark_non_differentiable(workspace)
        ctx.set_materialize_grads(False)
        ctx.axis = axis
        ctx.has_bias = (b_ih is not None, b_hh is not None)
        ctx.save_for_backward(x, w_ih, w_hh, y, workspace)

    def _backward(ctx, grad_y, _grad_workspace):
        no_double_backward(name)
        if grad_y is None:
            return None, None, None, None, None, None, None, None
        x, w_ih, w_hh, y, workspace = ctx.saved_tensors
        if workspace.numel() == 0 and y.numel() > 0:
            raise RuntimeError(
                f"{name}: backward needs the gates saved by a forward run with training=True; this output "
                "was computed with training=False (e.g. under torch.no_grad or with no input requiring grad)")
        backward_op = getattr(torch.ops.brnnseg, f"{_OPS[cell]}_backward")
        gx, gw_ih, gw_hh, gb_ih, gb_hh = backward_op(grad_y, x, w_ih, w_hh, y, workspace, ctx.axis)
        return (gx, gw_ih, gw_hh, gb_ih if ctx.has_bias[0] else None, gb_hh if ctx.has_bias[1] else None,
                None, None, None)

    torch.library.register_autograd(name, _backward, setup_context=_setup_context)

    # The pair op (mode="parallel").
    pair = f"{name}_pair"

    def _ws_fake(x, w_hh, axis, training):
        n, _, h, w = x.shape
        steps, lines = (w, n * h) if axis == 3 else (h, n * w)
        shape = (2, steps, lines, saved * w_hh.shape[2]) if training else (0,)
        return x.new_empty(shape, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)

    @torch.library.register_fake(pair)
    def _pair_fake(x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ih_c, w_hh_c, b_ih_c, b_hh_c, channels_last, training):
        _check_devices(_OPS[cell] + "_pair", x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ih_c, w_hh_c, b_ih_c, b_hh_c)
        n, _, h, w = x.shape
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        y = torch.empty((n, 4 * w_hh_r.shape[2], h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
        return y, _ws_fake(x, w_hh_r, 3, training), _ws_fake(x, w_hh_c, 2, training)

    @torch.library.register_fake(f"{pair}_backward")
    def _pair_backward_fake(grad_y, x, w_ih_r, w_hh_r, w_ih_c, w_hh_c, y, ws_r, ws_c):
        fmt = torch.channels_last if _is_channels_last(x) else torch.contiguous_format
        out = [torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=fmt)]
        for w_ih, w_hh in ((w_ih_r, w_hh_r), (w_ih_c, w_hh_c)):
            gh = w_ih.shape[1]
            out += [w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), w_ih.new_empty((2, gh)),
                    w_ih.new_empty((2, gh))]
        return out

    def _pair_setup(ctx, inputs, output):
        x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ih_c, w_hh_c, b_ih_c, b_hh_c, _cl, _training = inputs
        y, ws_r, ws_c = output
        ctx.mark_non_differentiable(ws_r, ws_c)
        ctx.set_materialize_grads(False)
        ctx.has_bias = (b_ih_r is not None, b_hh_r is not None, b_ih_c is not None, b_hh_c is not None)
        ctx.save_for_backward(x, w_ih_r, w_hh_r, w_ih_c, w_hh_c, y, ws_r, ws_c)

    def _pair_backward(ctx, grad_y, _g1, _g2):
        no_double_backward(pair)
        if grad_y is None:
            return (None,) * 11
        x, w_ih_r, w_hh_r, w_ih_c, w_hh_c, y, ws_r, ws_c = ctx.saved_tensors
        if ws_r.numel() == 0 and y.numel() > 0:
            raise RuntimeError(f"{pair}: backward needs the gates saved by a forward run with training=True")
        g = getattr(torch.ops.brnnseg, f"{_OPS[cell]}_pair_backward")(grad_y, x, w_ih_r, w_hh_r, w_ih_c, w_hh_c,
                                                                       y, ws_r, ws_c)
        hb = ctx.has_bias
        return (g[0], g[1], g[2], g[3] if hb[0] else None, g[4] if hb[1] else None, g[5], g[6],
                g[7] if hb[2] else None, g[8] if hb[3] else None, None, None)

    torch.library.register_autograd(pair, _pair_backward, setup_context=_pair_setup)


for _cell in _OPS:
    _register(_cell)


# ---- sequence RNN ops (the drop-in nn.GRU / nn.LSTM), one layer each --------------------------------
#
# gru_sequence(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, batch_first, training) -> (y, h_n, workspace)
# lstm_sequence(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first, training) -> (y, h_n, c_n, workspace)
# x (T, B, C) or (B, T, C); weights stacked per direction (D = 1 or 2); h0/c0 (D, B, hid) or None;
# lengths (B,) int64 CPU or None. Schema and semantics: csrc/registration.cpp.

_SEQ_OPS = {"gru": "gru_sequence", "lstm": "lstm_sequence"}


def sequence(cell: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
             h0: Optional[Tensor] = None, c0: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
             batch_first: bool = False, training: Optional[bool] = None):
    """One RNN layer over a batch of sequences; returns (y, h_n) for GRU, (y, h_n, c_n) for LSTM."""
    if training is None:
        training = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, w_ih, w_hh, b_ih, b_hh, h0, c0))
    op = getattr(torch.ops.brnnseg, _SEQ_OPS[cell])
    if cell == "gru":
        y, h_n, _ = op(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, batch_first, training)
        return y, h_n
    y, h_n, c_n, _ = op(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first, training)
    return y, h_n, c_n


def _register_sequence(cell: str) -> None:
    name = f"brnnseg::{_SEQ_OPS[cell]}"
    lstm = cell == "lstm"
    saved = _SAVED[cell]

    def _outputs(x, w_ih, w_hh, batch_first, training):
        _check_devices(_SEQ_OPS[cell], x, w_ih, w_hh)
        t_len, b = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
        d, hid = w_hh.shape[0], w_hh.shape[2]
        y = x.new_empty((x.shape[0], x.shape[1], d * hid))
        state = x.new_empty((d, b, hid))
        ws = x.new_empty((d, t_len, b, saved * hid) if training else (0,))
        return y, state, ws

    if lstm:
        @torch.library.register_fake(name)
        def _fake(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first, training):
            y, h_n, ws = _outputs(x, w_ih, w_hh, batch_first, training)
            return y, h_n, torch.empty_like(h_n), ws

        @torch.library.register_fake(f"{name}_backward")
        def _fake_backward(grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, h0, c0, lengths, y, workspace, batch_first):
            d, gh, hid = w_hh.shape
            b = x.shape[0] if batch_first else x.shape[1]
            return (x.new_empty(x.shape), w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
                    w_ih.new_empty((d, gh)), w_ih.new_empty((d, gh)), x.new_empty((d, b, hid)),
                    x.new_empty((d, b, hid)))
    else:
        @torch.library.register_fake(name)
        def _fake(x, w_ih, w_hh, b_ih, b_hh, h0, lengths, batch_first, training):
            return _outputs(x, w_ih, w_hh, batch_first, training)

        @torch.library.register_fake(f"{name}_backward")
        def _fake_backward(grad_y, grad_h_n, x, w_ih, w_hh, h0, lengths, y, workspace, batch_first):
            d, gh, hid = w_hh.shape
            b = x.shape[0] if batch_first else x.shape[1]
            return (x.new_empty(x.shape), w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape),
                    w_ih.new_empty((d, gh)), w_ih.new_empty((d, gh)), x.new_empty((d, b, hid)))

    def _setup_context(ctx, inputs, output):
        if lstm:
            x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first, _training = inputs
            y, _h_n, _c_n, workspace = output
        else:
            x, w_ih, w_hh, b_ih, b_hh, h0, lengths, batch_first, _training = inputs
            c0 = None
            y, _h_n, workspace = output
        ctx.mark_non_differentiable(workspace)
        ctx.set_materialize_grads(False)
        ctx.batch_first = batch_first
        ctx.has = (b_ih is not None, b_hh is not None, h0 is not None, c0 is not None)
        ctx.save_for_backward(x, w_ih, w_hh, h0, c0, lengths, y, workspace)

    def _backward(ctx, *grads):
        no_double_backward(name)
        grad_y, grad_h_n = grads[0], grads[1]
        grad_c_n = grads[2] if lstm else None
        n_in = 10 if lstm else 9
        if grad_y is None and grad_h_n is None and grad_c_n is None:
            return (None,) * n_in
        x, w_ih, w_hh, h0, c0, lengths, y, workspace = ctx.saved_tensors
        if workspace.numel() == 0 and y.numel() > 0:
            raise RuntimeError(
                f"{name}: backward needs the gates saved by a forward run with training=True; this output "
                "was computed with training=False (e.g. under torch.no_grad or with no input requiring grad)")
        backward_op = getattr(torch.ops.brnnseg, f"{_SEQ_OPS[cell]}_backward")
        if lstm:
            gx, gwi, gwh, gbi, gbh, gh0, gc0 = backward_op(grad_y, grad_h_n, grad_c_n, x, w_ih, w_hh, h0, c0,
                                                           lengths, y, workspace, ctx.batch_first)
        else:
            gx, gwi, gwh, gbi, gbh, gh0 = backward_op(grad_y, grad_h_n, x, w_ih, w_hh, h0, lengths, y, workspace,
                                                      ctx.batch_first)
            gc0 = None
        has_bi, has_bh, has_h0, has_c0 = ctx.has
        out = [gx, gwi, gwh, gbi if has_bi else None, gbh if has_bh else None, gh0 if has_h0 else None]
        if lstm:
            out.append(gc0 if has_c0 else None)
        return tuple(out) + (None, None, None)

    torch.library.register_autograd(name, _backward, setup_context=_setup_context)


for _cell in _SEQ_OPS:
    _register_sequence(_cell)


@torch.library.register_fake("brnnseg::kernel_gemm")
def _kernel_gemm_fake(a, b):
    return a.new_empty((a.shape[0], b.shape[1]))


def kernel_gemm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b through the GEMM the CPU kernels call per step (no autograd; benchmarks and tests)."""
    return torch.ops.brnnseg.kernel_gemm(a, b)
