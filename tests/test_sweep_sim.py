"""The CUDA recurrence kernels executed on the CPU: built by g++ under the SIMT simulator
(csrc/include/brnnseg/simt_sim.h), driven through the same host code as the CUDA build
(csrc/cuda/sweep_registration.h, sweep_host.h), compared with the float64 reference. Select with `pytest -k sim`.

Executed here: forward and backward kernels of every cell in float32/float16/bfloat16, one sweep or
the pair per launch, with W_hh in shared memory, split, and through L2; several CTAs per sweep, partial
last tiles, T = 1, hidden sizes that are not multiples of 32, hidden 64/128/256 with the launch plan of
an H100 and an A100, strided/channels_last outputs and gradients. Each launch is checked against the
simulated GPU's rules (launch bounds, grid limits, the emulated cudaFuncSetAttribute opt-in above
48 KiB, the opt-in limit), shared memory against out-of-bounds and unwritten reads, and outputs are
NaN-filled first. Not executed: the <<<>>> launch line and cuBLAS (the simulator build runs the same
at::matmul calls on CPU tensors)."""
import functools
import os

import pytest
import torch

import brnnseg_kernels as bk
from brnnseg_kernels import reference
from tests.utils import assert_verbose_allclose, stacked_weights, sweep_reference

# BRNNSEG_SIM_MODULE=brnnseg_kernels._sim_asan runs the same tests through the AddressSanitizer + UBSan
# build of the simulator (make test-sim-asan).
sim = pytest.importorskip(os.environ.get("BRNNSEG_SIM_MODULE", "brnnseg_kernels._sim"))
CELLS = list(bk.cells.kernel_cells())
H100 = ("h100", 0)


@pytest.fixture(autouse=True)
def fp32_core_recurrence(monkeypatch):
    """These tests are the FP32-core kernels' (sweep_{fwd,bwd}_kernel.cuh): half precision would take the
    tensor-core ones by default (tests/test_sweep_sim_mma.py covers those)."""
    monkeypatch.setenv("BRNNSEG_CUDA_RECURRENCE", "fma")  # the GPU to simulate, and the planner's smem budget (0: its opt-in limit)

# (N, C, H, W, hidden): several CTAs (tile = 32 lines for hidden <= 32, 16 for 33..64), partial
# last tiles, T = 1 both ways, hidden not a multiple of 32.
SHAPES = [(2, 3, 37, 5, 3), (1, 4, 6, 70, 5), (1, 2, 1, 9, 2), (2, 3, 7, 1, 4), (1, 5, 9, 20, 40)]


# float32 kernels against float64: each step rounds a (C + hidden)-term dot product, and the error carries
# through the recurrence, so the absolute error grows with the fan-in and the step count. At C + hidden = 45
# and 20 steps about one GRU run in 60 exceeded 2e-6 (seen failing in CI); with 1e-5 the worst of 600 seeded
# runs over SHAPES, both cells and both axes used 16% of the tolerance.
Y_TOL = dict(rtol=1e-4, atol=1e-5)


def _run(cell, shape, axis, global_weights, channels_last=False):
    n, c, h, w, hid = shape
    x = torch.randn(n, c, h, w)
    weights = [t.float() for t in stacked_weights(cell, c, hid, requires_grad=False)]
    op = functools.partial(torch.ops.brnnseg_sim.sweep, cell)
    bop = functools.partial(torch.ops.brnnseg_sim.sweep_backward, cell)
    y, ws = op(x, *weights, axis, channels_last, True, *H100, global_weights)
    xd = x.double().requires_grad_()
    wd = [t.double().requires_grad_() for t in weights]
    expected = sweep_reference(cell, xd, *wd, axis, ws)
    assert_verbose_allclose(y.double(), expected, **Y_TOL, name="y")
    g = torch.randn_like(expected)
    exp_grads = torch.autograd.grad(expected, [xd] + wd, g)
    grad_y = g.float()
    if channels_last:
        grad_y = grad_y.to(memory_format=torch.channels_last)
    grads = bop(grad_y, x, weights[0], weights[1], y, ws, axis, *H100, global_weights)
    for name, got, exp in zip(["x", "w_ih", "w_hh", "b_ih", "b_hh"], grads, exp_grads):
        # float32 kernels against float64: weight gradients sum over every position.
        assert_verbose_allclose(got.double(), exp, rtol=1e-4, atol=2e-4, name=f"grad {name}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("axis", [2, 3])
@pytest.mark.parametrize("global_weights", [False, True], ids=["smem_weights", "l2_weights"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sim_kernels_match_reference(cell, axis, global_weights, shape):
    _run(cell, shape, axis, global_weights)


@pytest.mark.parametrize("cell", CELLS)
def test_sim_kernels_channels_last_output(cell):
    _run(cell, (2, 3, 6, 7, 4), 3, False, channels_last=True)


def test_sim_no_grad_forward_saves_nothing():
    x = torch.randn(1, 2, 3, 4)
    w = [t.float() for t in stacked_weights("gru", 2, 3, requires_grad=False)]
    y, ws = torch.ops.brnnseg_sim.sweep("gru", x, *w, 3, False, False, *H100, False)
    assert ws.numel() == 0
    expected = reference.sweep("gru", x.double(), *[t.double() for t in w], axis=3)
    assert_verbose_allclose(y.double(), expected, **Y_TOL)


def test_sim_rejects_what_does_not_fit():
    x = torch.randn(1, 2, 3, 4)
    w = [t.float() for t in stacked_weights("gru", 2, 3, requires_grad=False)]
    with pytest.raises(ValueError, match="shared memory"):
        torch.ops.brnnseg_sim.sweep("gru", x, *w, 3, False, False, "h100", 16, False)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("global_weights", [False, True], ids=["smem_weights", "l2_weights"])
def test_sim_pair_kernels_one_launch_match_reference(cell, global_weights):
    """mode="parallel": row and column sweeps in one launch (grid.z = 2, different tile counts)."""
    n, c, h, w, hid = 2, 3, 37, 6, 3
    x = torch.randn(n, c, h, w)
    rows = [t.float() for t in stacked_weights(cell, c, hid, requires_grad=False)]
    cols = [t.float() for t in stacked_weights(cell, c, hid, requires_grad=False)]
    op = functools.partial(torch.ops.brnnseg_sim.sweep_pair, cell)
    bop = functools.partial(torch.ops.brnnseg_sim.sweep_pair_backward, cell)
    y, ws_r, ws_c = op(x, *rows, *cols, False, True, *H100, global_weights)
    xd = x.double().requires_grad_()
    rd = [t.double().requires_grad_() for t in rows]
    cd = [t.double().requires_grad_() for t in cols]
    expected = torch.cat([sweep_reference(cell, xd, *rd, 3, ws_r), sweep_reference(cell, xd, *cd, 2, ws_c)], dim=1)
    assert_verbose_allclose(y.double(), expected, **Y_TOL, name="y")
    g = torch.randn_like(expected)
    exp_grads = torch.autograd.grad(expected, [xd] + rd + cd, g)
    grads = bop(g.float(), x, rows[0], rows[1], cols[0], cols[1], y, ws_r, ws_c, *H100, global_weights)
    for i, (got, exp) in enumerate(zip(grads, exp_grads)):
        assert_verbose_allclose(got.double(), exp, rtol=1e-4, atol=2e-4, name=f"grad {i}")


@pytest.mark.parametrize("cell", CELLS)
def test_sim_kernels_some_gates_in_shared_memory(cell):
    """The mixed path (a float32 LSTM at hidden 128 on an H100): the shared-memory budget holds only
    part of W_hh, the other gates are read through L2."""
    n, c, h, w, hid = 1, 3, 9, 20, 40   # tile 16 lines; one gate of W_hh is 40*40*4 = 6400 bytes
    g = bk.cells.spec(cell).gates
    # Forward: buffers 2*16*40*4 = 5120 + 2 gates; backward: 16*g*40*4 + 1 gate. Neither holds all.
    limit = max(5120 + 2 * 6400, 16 * g * 40 * 4 + 6400) + 100
    x = torch.randn(n, c, h, w)
    weights = [t.float() for t in stacked_weights(cell, c, hid, requires_grad=False)]
    op = functools.partial(torch.ops.brnnseg_sim.sweep, cell)
    bop = functools.partial(torch.ops.brnnseg_sim.sweep_backward, cell)
    y_full, ws = op(x, *weights, 3, False, True, *H100, False)
    y_part, ws_part = op(x, *weights, 3, False, True, "h100", limit, False)
    assert torch.equal(y_full, y_part) and torch.equal(ws, ws_part)  # same math, same order
    gy = torch.randn_like(y_full)
    full = bop(gy, x, weights[0], weights[1], y_full, ws, 3, *H100, False)
    part = bop(gy, x, weights[0], weights[1], y_part, ws_part, 3, "h100", limit, False)
    for a, b in zip(full, part):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cell", CELLS)
def test_sim_kernels_reduced_precision(cell, dtype):
    """The float16/bfloat16 instantiations (fp32 math, fp32 saved gates): within twice the error of the
    reference run in that dtype, or 3e-2 (flash-attention's rule)."""
    n, c, h, w, hid = 2, 3, 7, 9, 5
    x = torch.randn(n, c, h, w)
    weights = [t.float() for t in stacked_weights(cell, c, hid, requires_grad=False)]
    op = functools.partial(torch.ops.brnnseg_sim.sweep, cell)
    bop = functools.partial(torch.ops.brnnseg_sim.sweep_backward, cell)
    lp = [t.to(dtype) for t in weights]
    # The weight block in shared memory is 3*5*5*2 = 150 bytes for the GRU (200 for the LSTM) in half
    # precision, so the float buffers after it start at a padded, 16-byte aligned offset.
    y, ws = op(x.to(dtype), *lp, 3, False, True, *H100, False)
    assert y.dtype == dtype and ws.dtype == torch.float32
    exact = sweep_reference(cell, x.double(), *[t.double() for t in weights], 3, ws)
    ref_lp = sweep_reference(cell, x.to(dtype), *lp, 3, ws)
    err = (y.double() - exact).abs().max().item()
    assert err <= max(2 * (ref_lp.double() - exact).abs().max().item(), 3e-2)
    g = torch.randn_like(exact)
    grads = bop(g.to(dtype), x.to(dtype), lp[0], lp[1], y, ws, 3, *H100, False)
    xd = x.double().requires_grad_()
    wd = [t.double().requires_grad_() for t in weights]
    exp = torch.autograd.grad(sweep_reference(cell, xd, *wd, 3, ws), [xd] + wd, g)
    for got, e in zip(grads, exp):
        assert got.dtype == dtype
        _assert_reduced_precision_grad(got, e)


# ---- realistic sizes: the GPU benchmark shapes' hidden sizes with the launch the planner picks ------

# Lines per CTA the planner picks at hidden 64/128/256 (one thread per unit, 256 threads a CTA).
TILE = {64: 16, 128: 8, 256: 4}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _realistic_weights(cell, c, hid, dtype):
    """nn.GRU/nn.LSTM's init scale (1/sqrt(hid)): pre-activations stay out of saturation at hid 256."""
    return [t.to(dtype) for t in stacked_weights(cell, c, hid, scale=hid ** -0.5, requires_grad=False)]


def _assert_reduced_precision_grad(got, exp):
    """float16/bfloat16 gradients against float64: within 5 % of the largest gradient."""
    err = (got.double() - exp).abs().max().item()
    assert err <= 5e-2 * (exp.abs().max().item() + 1e-6), err


def _check_against_reference(cell, x, weights_list, axes, got_y, got_grads, g, dtype, workspaces):
    """got_y/got_grads from the simulated kernels vs the float64 reference of the same sweeps (one or
    two, concatenated on channels; workspaces: theirs, for rnn_relu's activation pattern). float32:
    tight; float16/bfloat16: within twice the error of the reference computed in that dtype, or 3e-2
    of the largest value (flash-attention's rule)."""
    xd = x.double().requires_grad_()
    wd = [[t.double().requires_grad_() for t in ws] for ws in weights_list]
    expected = torch.cat([sweep_reference(cell, xd, *w, a, s) for w, a, s in zip(wd, axes, workspaces)], dim=1)
    exp_grads = torch.autograd.grad(expected, [xd] + [t for w in wd for t in w], g)
    assert not torch.isnan(got_y).any(), "unwritten output elements (NaN-filled before the launch)"
    if dtype == torch.float32:
        assert_verbose_allclose(got_y.double(), expected, **Y_TOL, name="y")
        for i, (got, exp) in enumerate(zip(got_grads, exp_grads)):
            assert_verbose_allclose(got.double(), exp, rtol=1e-4, atol=2e-4, name=f"grad {i}")
        return
    with torch.no_grad():
        ref_lp = torch.cat([sweep_reference(cell, x, *w, a, s) for w, a, s in zip(weights_list, axes, workspaces)], 1)
    err = (got_y.double() - expected).abs().max().item()
    assert err <= max(2 * (ref_lp.double() - expected).abs().max().item(), 3e-2), err
    for got, exp in zip(got_grads, exp_grads):
        assert got.dtype == dtype and not torch.isnan(got).any()
        _assert_reduced_precision_grad(got, exp)


@pytest.mark.parametrize("gpu", ["h100", "a100"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("hid", [64, 128, 256])
@pytest.mark.parametrize("cell", CELLS)
def test_sim_realistic_hidden_sizes(cell, hid, dtype, gpu):
    """hidden 64/128/256 as on the GPU benchmark shapes, with the planner's configuration for that GPU
    (W_hh wholly in shared memory, split, or through L2), 2 full CTAs and a partial one, T = 3."""
    dt = DTYPES[dtype]
    tile = TILE[hid]
    n, c, h, w = 1, 8, 2 * tile + 1, 3
    x = torch.randn(n, c, h, w).to(dt)
    weights = _realistic_weights(cell, c, hid, dt)
    op = functools.partial(torch.ops.brnnseg_sim.sweep, cell)
    bop = functools.partial(torch.ops.brnnseg_sim.sweep_backward, cell)
    torch.ops.brnnseg_sim.launch_log(True)
    y, ws = op(x, *weights, 3, False, True, gpu, 0, False)
    g = torch.randn(y.shape, dtype=torch.float64)
    grads = bop(g.to(dt), x, weights[0], weights[1], y, ws, 3, gpu, 0, False)
    launches = torch.ops.brnnseg_sim.launch_log(True)
    assert len(launches) == 2 and all("grid=(3, 2, 1) block=256" in s and f"gpu={gpu}" in s for s in launches), launches
    _check_against_reference(cell, x, [weights], [3], y, grads, g, dt, [ws])


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("cell", CELLS)
def test_sim_pair_mode_every_dtype(cell, dtype):
    """mode="parallel" (both sweeps in one launch) in float32, float16 and bfloat16."""
    dt = DTYPES[dtype]
    n, c, h, w, hid = 1, 8, 2 * TILE[64] + 1, 5, 64
    x = torch.randn(n, c, h, w).to(dt)
    rows, cols = _realistic_weights(cell, c, hid, dt), _realistic_weights(cell, c, hid, dt)
    op = functools.partial(torch.ops.brnnseg_sim.sweep_pair, cell)
    bop = functools.partial(torch.ops.brnnseg_sim.sweep_pair_backward, cell)
    torch.ops.brnnseg_sim.launch_log(True)
    y, ws_r, ws_c = op(x, *rows, *cols, False, True, "h100", 0, False)
    assert y.dtype == dt
    g = torch.randn(y.shape, dtype=torch.float64)
    grads = bop(g.to(dt), x, rows[0], rows[1], cols[0], cols[1], y, ws_r, ws_c, "h100", 0, False)
    launches = torch.ops.brnnseg_sim.launch_log(True)
    assert len(launches) == 2 and all("grid=(3, 2, 2)" in s for s in launches), launches  # rows: 3 CTAs, cols: 1
    _check_against_reference(cell, x, [rows, cols], [3, 2], y, grads, g, dt, [ws_r, ws_c])


def test_sim_refuses_what_the_gpu_refuses():
    """A launch planned past the A100's opt-in limit (a budget forced above it) fails the way the GPU
    would: cudaFuncSetAttribute refuses the size, with a message naming the rule."""
    x = torch.randn(1, 4, 9, 3)
    w = _realistic_weights("gru", 4, 128, torch.float32)
    y, ws = torch.ops.brnnseg_sim.sweep("gru", x, *w, 3, False, False, "h100", 0, False)  # 204800 B: fits
    with pytest.raises(ValueError, match="opt-in limit of 166912 bytes"):
        torch.ops.brnnseg_sim.sweep("gru", x, *w, 3, False, False, "a100", 230000, False)
    with pytest.raises(ValueError, match="unknown GPU"):
        torch.ops.brnnseg_sim.sweep("gru", x, *w, 3, False, False, "v100", 0, False)


def _smem_bytes(g_in_smem, hid, tile, elem, gates, backward):
    """The planner's shared-memory formula (csrc/cuda/sweep_plan.h), restated for the test."""
    weights = (g_in_smem * hid * hid * elem + 15) // 16 * 16
    return weights + (tile * gates * hid * 4 if backward else 2 * tile * hid * 4)


@pytest.mark.parametrize("pair", [False, True], ids=["one_sweep", "pair"])
@pytest.mark.parametrize("weights", ["smem", "split", "l2"])
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("cell", CELLS)
def test_sim_every_launch_variant(cell, dtype, weights, pair):
    """Every launch variant the CUDA op can take -- kernel (forward, backward) x cell x storage dtype x
    where W_hh lives (all in shared memory, one gate there and the rest through L2, all through L2) x
    one sweep or the pair -- executed and compared with the float64 reference; the launch log shows the
    planned shared memory and grid."""
    dt, gates, hid, tile = DTYPES[dtype], bk.cells.spec(cell).gates, 40, 16
    elem = 4 if dt == torch.float32 else 2
    n, c, h, w = 1, 3, 17, 5  # rows: 17 lines = 2 CTAs; columns: 5 lines
    x = torch.randn(n, c, h, w).to(dt)
    rows, cols = _realistic_weights(cell, c, hid, dt), _realistic_weights(cell, c, hid, dt)
    limit = {False: 0, True: 0}
    if weights == "split":
        limit = {b: _smem_bytes(1, hid, tile, elem, gates, b) for b in (False, True)}
    glob = weights == "l2"
    torch.ops.brnnseg_sim.launch_log(True)
    g_shape = (n, (4 if pair else 2) * hid, h, w)
    g = torch.randn(g_shape, dtype=torch.float64)
    if pair:
        y, ws_r, ws_c = functools.partial(torch.ops.brnnseg_sim.sweep_pair, cell)(x, *rows, *cols, False, True, "h100",
                                                                               limit[False], glob)
        grads = functools.partial(torch.ops.brnnseg_sim.sweep_pair_backward, cell)(
            g.to(dt), x, rows[0], rows[1], cols[0], cols[1], y, ws_r, ws_c, "h100", limit[True], glob)
        _check_against_reference(cell, x, [rows, cols], [3, 2], y, grads, g, dt, [ws_r, ws_c])
    else:
        y, ws = functools.partial(torch.ops.brnnseg_sim.sweep, cell)(x, *rows, 3, False, True, "h100", limit[False], glob)
        grads = functools.partial(torch.ops.brnnseg_sim.sweep_backward, cell)(g.to(dt), x, rows[0], rows[1], y, ws, 3,
                                                                           "h100", limit[True], glob)
        _check_against_reference(cell, x, [rows], [3], y, grads, g, dt, [ws])
    log = torch.ops.brnnseg_sim.launch_log(True)
    in_smem = {"smem": gates, "split": 1, "l2": 0}[weights]
    for line, backward in zip(log, (False, True)):
        kernel = "bwd" if backward else "fwd"
        assert line.startswith(f"sweep_{kernel}_kernel<{cell}>"), log
        assert f"grid=(2, 2, {2 if pair else 1}) block=256" in line, log
        assert f"smem={_smem_bytes(in_smem, hid, tile, elem, gates, backward)} " in line, log
