"""Test helpers."""
import torch


def assert_verbose_allclose(actual, expected, rtol=1e-5, atol=1e-8, max_print=5, name="tensor"):
    """torch.testing.assert_close, plus the indices and values of the worst mismatches."""
    actual = actual.detach()
    expected = expected.detach().to(actual.dtype)
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    bad = ~torch.isclose(actual, expected, rtol=rtol, atol=atol)
    if bad.any():
        err = (actual - expected).abs()
        idx = torch.nonzero(bad)[:max_print]
        lines = [f"  at {tuple(i.tolist())}: got {actual[tuple(i)].item():.8g}, expected {expected[tuple(i)].item():.8g}"
                 for i in idx]
        raise AssertionError(f"{name}: {int(bad.sum())} of {bad.numel()} elements differ (max abs err "
                             f"{err.max().item():.3g}, rtol={rtol}, atol={atol})\n" + "\n".join(lines))


def assert_within_reference_error(actual, expected, reference_lowp, factor=2.0, atol=0.0, name="tensor"):
    """flash-attention's rule: the max abs error of `actual` against the high-precision `expected` is at most
    `factor` times that of a reference computed in the low precision (same inputs), plus `atol`."""
    actual, expected, reference_lowp = (t.detach().double() for t in (actual, expected, reference_lowp))
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual - expected).abs()
    ref_err = (reference_lowp - expected).abs().max().item() if expected.numel() else 0.0
    bound = factor * ref_err + atol
    worst = err.max().item() if err.numel() else 0.0
    if not worst <= bound:  # also catches NaN
        i = tuple(torch.nonzero(~(err <= bound))[0].tolist())
        raise AssertionError(f"{name}: max abs error {worst:.3g} exceeds {factor} x the low-precision reference's "
                             f"{ref_err:.3g} + {atol:.3g} (first at {i}: got {actual[i].item():.8g}, expected "
                             f"{expected[i].item():.8g})")


def stacked_weights(cell, in_channels, hidden, dtype=torch.float64, bias=True, scale=0.5, requires_grad=True):
    """Random weights stacked per direction: (w_ih, w_hh, b_ih, b_hh)."""
    from brnnseg_kernels.cells import spec

    g = spec(cell).gates * hidden
    # Gate-less cells (nn.RNN's Elman cell): W_hh scaled to spectral radius ~0.5. An expanding Elman
    # recurrence (radius > 1; ReLU without bound) multiplies every rounding error at each step, so no
    # float32 implementation -- ours, torch's, cuDNN's -- can be compared with float64 there. Gated
    # cells keep `scale` (their gates contract the state).
    hh_scale = min(scale, 0.5 * hidden ** -0.5) if spec(cell).gates == 1 else scale
    ws = [torch.randn(2, g, in_channels, dtype=dtype) * scale, torch.randn(2, g, hidden, dtype=dtype) * hh_scale]
    if bias:
        ws += [torch.randn(2, g, dtype=dtype) * scale, torch.randn(2, g, dtype=dtype) * scale]
    else:
        ws += [None, None]
    return [None if w is None else w.requires_grad_(requires_grad) for w in ws]


def sweep_reference(cell, x, w_ih, w_hh, b_ih, b_hh, axis, workspace=None):
    """reference.sweep, except for rnn_relu given the kernel's workspace (2, T, lines, hid): then the
    ReLU's on/off pattern is the kernel's own (its saved h > 0). Where a pre-activation lies within
    rounding of 0 the derivative of a ReLU is not defined by the math, and a float32 or float16 kernel
    may take the other side than a float64 reference; with the kernel's pattern the reference is the
    exact function the kernel computed, so its values and gradients can be held to tight tolerances."""
    from brnnseg_kernels import reference

    if cell != "rnn_relu" or workspace is None:
        return reference.sweep(cell, x, w_ih, w_hh, b_ih, b_hh, axis)
    seq = reference._lines(x, axis)  # (lines, T, C), line order as the kernels' geometry
    steps, hid = seq.shape[1], w_hh.shape[2]
    outs = []
    for d in range(2):
        gx = seq @ w_ih[d].t() + (b_ih[d] if b_ih is not None else 0)
        h = seq.new_zeros(seq.shape[0], hid)
        out = [None] * steps
        for t in (range(steps - 1, -1, -1) if d else range(steps)):
            a = gx[:, t] + h @ w_hh[d].t() + (b_hh[d] if b_hh is not None else 0)
            h = a * (workspace[d, t] > 0).to(a.dtype)
            out[t] = h
        outs.append(torch.stack(out, dim=1))
    return reference._unlines(torch.cat(outs, dim=-1), x.shape, axis)


def torch_sweep3d(x, weights_module, cell, axis):
    """Independent reference of one volumetric sweep: every line of x (N, C, D, H, W) along ``axis``
    ("depth", "height", "width") is one sequence of a torch nn.GRU/LSTM/RNN holding the weights of
    ``weights_module`` (a BidirectionalRNNWeights)."""
    import brnnseg_kernels as bk

    fam = bk.cells.family_of_cell(cell)
    nl = fam.nonlinearity_of(cell)
    rnn = fam.torch_module(weights_module.input_size, weights_module.hidden_size, bidirectional=True,
                           batch_first=True, **({"nonlinearity": nl} if nl else {})).to(x.dtype)
    rnn.load_state_dict(weights_module.state_dict())
    time_dim = {"depth": 2, "height": 3, "width": 4}[axis]
    v = x.movedim(1, -1).movedim(time_dim - 1, -2)        # (..., T, C)
    lead = v.shape[:-2]
    y, _ = rnn(v.reshape(-1, v.shape[-2], v.shape[-1]))
    y = y.reshape(*lead, y.shape[-2], y.shape[-1])
    return y.movedim(-2, time_dim - 1).movedim(-1, 1)


class _LibraryAutogradCtx:
    """What torch.library's autograd hands setup_context and backward, for calling them directly."""

    def mark_non_differentiable(self, *ts):
        pass

    def set_materialize_grads(self, value):
        pass

    def save_for_backward(self, *ts):
        self.saved_tensors = ts


def check_python_autograd_matches_cpu(op, setup_context, backward, args, x):
    """A loss op whose CPU autograd is C++ (AutogradCPU) and whose autograd on every other device is the
    Python formula (setup_context / backward, registered through torch.library): the Python one, called
    directly on CPU tensors, gives the C++ one's gradient with respect to x (args[0]), None for every
    other input; both refuse double backward."""
    import pytest

    loss, fac = op(*args)
    assert loss.grad_fn is not None and not fac.requires_grad
    g = torch.randn_like(loss)
    (gx,) = torch.autograd.grad(loss, x, g)
    ctx = _LibraryAutogradCtx()
    setup_context(ctx, args, (loss.detach(), fac))
    with torch.no_grad():
        got = backward(ctx, g, None)
    assert len(got) == len(args) and all(v is None for v in got[1:])
    torch.testing.assert_close(got[0], gx, rtol=1e-12, atol=1e-14)
    loss = op(*args)[0]
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(loss.sum(), x, create_graph=True)
