"""The CUDA recurrence kernels executed on the CPU: built by g++ under the SIMT simulator
(csrc/include/brnnseg/simt_sim.h), driven through the same host code as the CUDA build
(csrc/cuda/line_scan_host.h), compared with the float64 reference. Select with `pytest -k sim`.

Executed here: forward and backward kernels of GRU and LSTM, with W_hh in shared memory and
through the cache (the large-hidden-size path), several CTAs per sweep, partial last tiles, T = 1,
hidden sizes that are not multiples of 32, strided/channels_last outputs and gradients. Not
executed: the nvcc-specific launch lines (cudaFuncSetAttribute, <<<>>>, launch checks) and the
cuBLAS GEMMs (the simulator build runs the same at::matmul calls on CPU tensors)."""
import pytest
import torch

from brnnseg_kernels import reference
from tests.utils import assert_verbose_allclose, stacked_weights

sim = pytest.importorskip("brnnseg_kernels._sim")
H100_SMEM = 227 * 1024

# (N, C, H, W, hidden): several CTAs (tile = 32 lines for hidden <= 32, 16 for 33..64), partial
# last tiles, T = 1 both ways, hidden not a multiple of 32.
SHAPES = [(2, 3, 37, 5, 3), (1, 4, 6, 70, 5), (1, 2, 1, 9, 2), (2, 3, 7, 1, 4), (1, 5, 9, 20, 40)]


def _run(cell, shape, axis, global_weights, channels_last=False):
    n, c, h, w, hid = shape
    x = torch.randn(n, c, h, w)
    weights = [t.float() for t in stacked_weights(cell, c, hid, requires_grad=False)]
    op = getattr(torch.ops.brnnseg_sim, f"bi{cell}_sweep")
    bop = getattr(torch.ops.brnnseg_sim, f"bi{cell}_sweep_backward")
    y, ws = op(x, *weights, axis, channels_last, True, H100_SMEM, global_weights)
    xd = x.double().requires_grad_()
    wd = [t.double().requires_grad_() for t in weights]
    expected = reference.sweep(cell, xd, *wd, axis=axis)
    assert_verbose_allclose(y.double(), expected, rtol=1e-4, atol=2e-6, name="y")
    g = torch.randn_like(expected)
    exp_grads = torch.autograd.grad(expected, [xd] + wd, g)
    grad_y = g.float()
    if channels_last:
        grad_y = grad_y.to(memory_format=torch.channels_last)
    grads = bop(grad_y, x, weights[0], weights[1], y, ws, axis, H100_SMEM, global_weights)
    for name, got, exp in zip(["x", "w_ih", "w_hh", "b_ih", "b_hh"], grads, exp_grads):
        # float32 kernels against float64: weight gradients sum over every position.
        assert_verbose_allclose(got.double(), exp, rtol=1e-4, atol=2e-4, name=f"grad {name}")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("axis", [2, 3])
@pytest.mark.parametrize("global_weights", [False, True], ids=["smem_weights", "l2_weights"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sim_kernels_match_reference(cell, axis, global_weights, shape):
    _run(cell, shape, axis, global_weights)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_sim_kernels_channels_last_output(cell):
    _run(cell, (2, 3, 6, 7, 4), 3, False, channels_last=True)


def test_sim_no_grad_forward_saves_nothing():
    x = torch.randn(1, 2, 3, 4)
    w = [t.float() for t in stacked_weights("gru", 2, 3, requires_grad=False)]
    y, ws = torch.ops.brnnseg_sim.bigru_sweep(x, *w, 3, False, False, H100_SMEM, False)
    assert ws.numel() == 0
    expected = reference.sweep("gru", x.double(), *[t.double() for t in w], axis=3)
    assert_verbose_allclose(y.double(), expected, rtol=1e-4, atol=2e-6)


def test_sim_rejects_what_does_not_fit():
    x = torch.randn(1, 2, 3, 4)
    w = [t.float() for t in stacked_weights("gru", 2, 3, requires_grad=False)]
    with pytest.raises(ValueError, match="shared memory"):
        torch.ops.brnnseg_sim.bigru_sweep(x, *w, 3, False, False, 16, False)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("global_weights", [False, True], ids=["smem_weights", "l2_weights"])
def test_sim_pair_kernels_one_launch_match_reference(cell, global_weights):
    """mode="parallel": row and column sweeps in one launch (grid.z = 2, different tile counts)."""
    n, c, h, w, hid = 2, 3, 37, 6, 3
    x = torch.randn(n, c, h, w)
    rows = [t.float() for t in stacked_weights(cell, c, hid, requires_grad=False)]
    cols = [t.float() for t in stacked_weights(cell, c, hid, requires_grad=False)]
    op = getattr(torch.ops.brnnseg_sim, f"bi{cell}_sweep_pair")
    bop = getattr(torch.ops.brnnseg_sim, f"bi{cell}_sweep_pair_backward")
    y, ws_r, ws_c = op(x, *rows, *cols, False, True, H100_SMEM, global_weights)
    xd = x.double().requires_grad_()
    rd = [t.double().requires_grad_() for t in rows]
    cd = [t.double().requires_grad_() for t in cols]
    expected = torch.cat([reference.sweep(cell, xd, *rd, axis=3), reference.sweep(cell, xd, *cd, axis=2)], dim=1)
    assert_verbose_allclose(y.double(), expected, rtol=1e-4, atol=2e-6, name="y")
    g = torch.randn_like(expected)
    exp_grads = torch.autograd.grad(expected, [xd] + rd + cd, g)
    grads = bop(g.float(), x, rows[0], rows[1], cols[0], cols[1], y, ws_r, ws_c, H100_SMEM, global_weights)
    for i, (got, exp) in enumerate(zip(grads, exp_grads)):
        assert_verbose_allclose(got.double(), exp, rtol=1e-4, atol=2e-4, name=f"grad {i}")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_sim_kernels_some_gates_in_shared_memory(cell):
    """The mixed path (a float32 LSTM at hidden 128 on an H100): the shared-memory budget holds only
    part of W_hh, the other gates are read through L2."""
    n, c, h, w, hid = 1, 3, 9, 20, 40   # tile 16 lines; one gate of W_hh is 40*40*4 = 6400 bytes
    g = 3 if cell == "gru" else 4
    # Forward: buffers 2*16*40*4 = 5120 + 2 gates; backward: 16*g*40*4 + 1 gate. Neither holds all.
    limit = max(5120 + 2 * 6400, 16 * g * 40 * 4 + 6400) + 100
    x = torch.randn(n, c, h, w)
    weights = [t.float() for t in stacked_weights(cell, c, hid, requires_grad=False)]
    op = getattr(torch.ops.brnnseg_sim, f"bi{cell}_sweep")
    bop = getattr(torch.ops.brnnseg_sim, f"bi{cell}_sweep_backward")
    y_full, ws = op(x, *weights, 3, False, True, H100_SMEM, False)
    y_part, ws_part = op(x, *weights, 3, False, True, limit, False)
    assert torch.equal(y_full, y_part) and torch.equal(ws, ws_part)  # same math, same order
    gy = torch.randn_like(y_full)
    full = bop(gy, x, weights[0], weights[1], y_full, ws, 3, H100_SMEM, False)
    part = bop(gy, x, weights[0], weights[1], y_part, ws_part, 3, limit, False)
    for a, b in zip(full, part):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_sim_kernels_reduced_precision(cell, dtype):
    """The float16/bfloat16 instantiations (fp32 math, fp32 saved gates): within twice the error of the
    reference run in that dtype, or 3e-2 (flash-attention's rule)."""
    n, c, h, w, hid = 2, 3, 7, 9, 5
    x = torch.randn(n, c, h, w)
    weights = [t.float() for t in stacked_weights(cell, c, hid, requires_grad=False)]
    op = getattr(torch.ops.brnnseg_sim, f"bi{cell}_sweep")
    bop = getattr(torch.ops.brnnseg_sim, f"bi{cell}_sweep_backward")
    lp = [t.to(dtype) for t in weights]
    # The weight block in shared memory is 3*5*5*2 = 150 bytes for the GRU (200 for the LSTM) in half
    # precision, so the float buffers after it start at a padded, 16-byte aligned offset.
    y, ws = op(x.to(dtype), *lp, 3, False, True, H100_SMEM, False)
    assert y.dtype == dtype and ws.dtype == torch.float32
    exact = reference.sweep(cell, x.double(), *[t.double() for t in weights], axis=3)
    ref_lp = reference.sweep(cell, x.to(dtype), *lp, axis=3)
    err = (y.double() - exact).abs().max().item()
    assert err <= max(2 * (ref_lp.double() - exact).abs().max().item(), 3e-2)
    g = torch.randn_like(exact)
    grads = bop(g.to(dtype), x.to(dtype), lp[0], lp[1], y, ws, 3, H100_SMEM, False)
    xd = x.double().requires_grad_()
    wd = [t.double().requires_grad_() for t in weights]
    exp = torch.autograd.grad(reference.sweep(cell, xd, *wd, axis=3), [xd] + wd, g)
    for got, e in zip(grads, exp):
        assert got.dtype == dtype
        scale = e.abs().max().item() + 1e-6
        assert (got.double() - e).abs().max().item() <= 5e-2 * scale
