"""The sweep ops (torch.ops.brnnseg.sweep / sweep_pair and their backward ops) against the
plain-PyTorch reference: values, gradients, gradcheck, opcheck, bad input."""
import functools
import os

import pytest
import torch

import brnnseg_kernels as bk
from brnnseg_kernels import reference
from tests.utils import assert_verbose_allclose, stacked_weights

CELLS = list(bk.cells.kernel_cells())  # every kernel cell the extension was built with
SWEEP = torch.ops.brnnseg.sweep

# (N, C, H, W, hidden): T=1 both ways, batch 1, odd sizes, hidden 1 and not a multiple of 8.
SHAPES = [
    (2, 5, 7, 6, 4),
    (1, 3, 1, 9, 3),
    (3, 2, 8, 1, 1),
    (1, 1, 1, 1, 2),
    (1, 4, 37, 29, 3),
    (2, 6, 5, 70, 5),   # more lines than one tile (64) along H
    (1, 3, 66, 4, 2),   # ... and along W
]


def _layouts(x):
    yield "contiguous", x
    yield "channels_last", x.to(memory_format=torch.channels_last)
    # A non-contiguous view: every other column of a wider map.
    wide = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype)
    wide[..., ::2] = x.detach()
    yield "strided", wide[..., ::2].requires_grad_(x.requires_grad)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("axis", [2, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_sweep_matches_reference_float64(cell, axis, shape):
    n, c, h, w, hid = shape
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    weights = stacked_weights(cell, c, hid)
    expected = reference.sweep(cell, x, *weights, axis=axis)
    grad_out = torch.randn_like(expected)
    exp_grads = torch.autograd.grad(expected, weights, grad_out)
    for layout, xin in _layouts(x.clone().requires_grad_()):
        y = bk.ops.sweep(cell, xin, *weights, axis=axis)
        assert_verbose_allclose(y, expected, rtol=1e-10, atol=1e-12, name=f"y ({layout})")
        grads = torch.autograd.grad(y, [xin] + weights, grad_out)
        x_ref = x.clone().requires_grad_()
        (gx_ref,) = torch.autograd.grad(reference.sweep(cell, x_ref, *weights, axis=axis), [x_ref], grad_out)
        assert_verbose_allclose(grads[0], gx_ref, rtol=1e-10, atol=1e-12, name=f"grad x ({layout})")
        for name, g, e in zip(["w_ih", "w_hh", "b_ih", "b_hh"], grads[1:], exp_grads):
            assert_verbose_allclose(g, e, rtol=1e-10, atol=1e-12, name=f"grad {name} ({layout})")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_sweep_output_layout(cell, channels_last):
    x = torch.randn(2, 3, 5, 4)
    y = bk.ops.sweep(cell, x, *stacked_weights(cell, 3, 4, torch.float32, requires_grad=False), axis=3,
                     channels_last=channels_last)
    assert y.shape == (2, 8, 5, 4)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("axis", [2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_sweep_float32_close_to_float64_reference(cell, axis, bias):
    x = torch.randn(2, 6, 9, 11, dtype=torch.float64)
    weights = stacked_weights(cell, 6, 7, bias=bias, requires_grad=False)
    expected = reference.sweep(cell, x, *weights, axis=axis)
    y = bk.ops.sweep(cell, x.float(), *[None if w is None else w.float() for w in weights], axis=axis)
    assert y.dtype == torch.float32
    assert_verbose_allclose(y, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("axis", [2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_sweep_gradcheck(cell, axis, bias):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    weights = stacked_weights(cell, 3, 3, bias=bias)

    def f(x, *ws):
        ws = list(ws) + [None] * (4 - len(ws))
        return bk.ops.sweep(cell, x, *ws, axis=axis)

    inputs = [x] + [w for w in weights if w is not None]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("training", [False, True])
def test_sweep_opcheck(cell, training):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=training)
    w_ih, w_hh, b_ih, b_hh = stacked_weights(cell, 3, 3, requires_grad=training)
    for axis, cl in [(3, False), (2, True)]:
        torch.library.opcheck(SWEEP, (cell, x, w_ih, w_hh, b_ih, b_hh, axis, cl, training))
    torch.library.opcheck(SWEEP, (cell, x.to(memory_format=torch.channels_last), w_ih, w_hh, None, None, 3,
                                  True, training))


@pytest.mark.parametrize("cell", CELLS)
def test_sweep_backward_opcheck(cell):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    w_ih, w_hh, b_ih, b_hh = stacked_weights(cell, 3, 3, requires_grad=False)
    y, ws = SWEEP(cell, x, w_ih, w_hh, b_ih, b_hh, 3, False, True)
    torch.library.opcheck(torch.ops.brnnseg.sweep_backward, (cell, torch.randn_like(y), x, w_ih, w_hh, y, ws, 3),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("cell", CELLS)
def test_sweep_without_workspace_cannot_backward(cell):
    x = torch.randn(1, 2, 3, 3, requires_grad=True)
    weights = stacked_weights(cell, 2, 2, torch.float32)
    y = bk.ops.sweep(cell, x, *weights, axis=3, training=False)
    with pytest.raises(RuntimeError, match="training=True"):
        y.sum().backward()


def test_sweep_no_grad_saves_nothing():
    x = torch.randn(1, 2, 3, 3)
    w = stacked_weights("gru", 2, 2, torch.float32)
    with torch.no_grad():
        _, ws = SWEEP("gru", x, *w, 3, False, False)
    assert ws.numel() == 0


@pytest.mark.parametrize("cell", CELLS)
def test_sweep_bad_input_names_the_argument(cell):
    op = functools.partial(SWEEP, cell)
    x = torch.randn(2, 3, 4, 5)
    w_ih, w_hh, b_ih, b_hh = stacked_weights(cell, 3, 4, torch.float32, requires_grad=False)
    g = w_hh.shape[1]
    cases = [
        ((x[0], w_ih, w_hh, b_ih, b_hh, 3, False, False), "x must be 4-D"),
        ((x.long(), w_ih, w_hh, b_ih, b_hh, 3, False, False), "floating point"),
        ((x, w_ih[:, :, :2], w_hh, b_ih, b_hh, 3, False, False), "w_ih must have shape"),
        ((x, w_ih, w_hh[:, :-1], b_ih, b_hh, 3, False, False), "w_hh must have shape"),
        ((x, w_ih, w_hh, b_ih[:, :g - 1], b_hh, 3, False, False), "b_ih must have shape"),
        ((x, w_ih, w_hh, b_ih, b_hh.double(), 3, False, False), "b_hh must match x"),
        ((x, w_ih.double(), w_hh, b_ih, b_hh, 3, False, False), "weights must have the dtype of x"),
        ((x, w_ih, w_hh, b_ih, b_hh, 1, False, False), "axis must be 2"),
        ((x.half(), w_ih.half(), w_hh.half(), b_ih.half(), b_hh.half(), 3, False, False), "float32 and float64"),
        ((x, w_ih.to("meta"), w_hh, b_ih, b_hh, 3, False, False), "device"),
    ]
    for args, msg in cases:
        with pytest.raises((RuntimeError, NotImplementedError), match=msg):
            op(*args)


def test_sweep_empty_batch():
    x = torch.randn(0, 3, 4, 5)
    y = bk.ops.sweep("gru", x, *stacked_weights("gru", 3, 2, torch.float32, requires_grad=False), axis=3)
    assert y.shape == (0, 4, 4, 5)


@pytest.mark.parametrize("cell", CELLS)
def test_sweep_pair_matches_two_sweeps_and_opcheck(cell):
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    rows = stacked_weights(cell, 3, 3)
    cols = stacked_weights(cell, 3, 3, bias=False)
    y = bk.ops.sweep_pair(cell, x, rows, cols)
    expected = torch.cat([reference.sweep(cell, x, *rows, axis=3), reference.sweep(cell, x, *cols, axis=2)], 1)
    assert_verbose_allclose(y, expected, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(y)
    params = [x] + [t for t in rows + cols if t is not None]
    for a, b in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(expected, params, g)):
        assert_verbose_allclose(a, b, rtol=1e-10, atol=1e-12)
    op = torch.ops.brnnseg.sweep_pair
    torch.library.opcheck(op, (cell, x, *rows, *cols, False, True))
    torch.library.opcheck(op, (cell, x.detach().to(memory_format=torch.channels_last),
                               *[None if t is None else t.detach() for t in rows + cols], True, False))


@pytest.mark.parametrize("env", [{"BRNNSEG_NO_BLAS": "1"}, {"BRNNSEG_GEMM": "blas"}, {"BRNNSEG_CPU_CACHE_MB": "0"},
                                 {}], ids=["plain-loop", "blas", "no-buffer-cache", "default"])
def test_cpu_kernel_variants(env):
    """Every GEMM path (the plain loop used when libtorch exports no Fortran BLAS, the BLAS, and the
    default -- the AVX-512 kernel for float32 where the CPU has it), and the buffer cache switched
    off, give the reference's results, for the sweeps and the sequence ops, float64 and float32."""
    import subprocess
    import sys
    import os
    code = (
        "import torch, brnnseg_kernels as bk\n"
        "from brnnseg_kernels import reference\n"
        "from tests.utils import stacked_weights\n"
        "for dt, tol in ((torch.float64, 1e-10), (torch.float32, 2e-4)):\n"
        "  for cell in bk.cells.kernel_cells():\n"
        "    x = torch.randn(2, 19, 5, 6, dtype=dt, requires_grad=True)\n"
        "    w = stacked_weights(cell, 19, 37, dtype=dt)\n"
        "    runs = [(bk.ops.sweep(cell, x, *w, axis=a), reference.sweep(cell, x, *w, axis=a)) for a in (2, 3)]\n"
        "    s = torch.randn(7, 13, 19, dtype=dt, requires_grad=True)\n"
        "    lens = torch.tensor([7, 3, 1, 7, 5, 2, 6, 7, 4, 1, 7, 2, 3])\n"
        "    runs.append((bk.ops.sequence(cell, s, *w, lengths=lens)[0], reference.sequence(cell, s, *w, lengths=lens)[0]))\n"
        "    for y, r in runs:\n"
        "        g = torch.randn_like(y)\n"
        "        a = torch.autograd.grad(y, [x, s] + w, g, allow_unused=True)\n"
        "        b = torch.autograd.grad(r, [x, s] + w, g, allow_unused=True)\n"
        "        pairs = [(y, r)] + [(p, q) for p, q in zip(a, b) if p is not None]\n"
        "        err = max(((p - q).abs().max() / (1 + q.abs().max())).item() for p, q in pairs)\n"
        "        assert err < tol, (dt, cell, err)\n"
        "print('gemm path ok')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, **env)
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "gemm path ok" in out.stdout, out.stderr[-2000:]


def test_fma_peak_probe_and_roof_column():
    """The FMA peak the benchmarks report: a positive rate where the CPU has AVX2+FMA or AVX-512
    (0 -> NaN elsewhere); and the report's "% peak" and "roof" columns are the stated arithmetic
    (roof = torch's time over the floor FLOPs / peak)."""
    from brnnseg_kernels import bench
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    peak = bench.fma_peak_gflops(0.05)
    if " avx512f" in flags or (" avx2" in flags and " fma" in flags):
        assert peak > 1.0
    else:
        assert peak != peak  # NaN
    flops = 1e9  # forward FLOPs; ours at 5 ms no_grad = 200 GFLOP/s; peak 400 -> floor 2.5 ms
    rows = [bench.Row("s", "lstm", "torch", "fwd no_grad", 10.0, flops / 10.0 / 1e6, float("nan")),
            bench.Row("s", "lstm", "brnnseg", "fwd no_grad", 5.0, flops / 5.0 / 1e6, float("nan"))]
    line = bench.report(rows, sgemm=100.0, kernel_gemm=250.0, peak=400.0).splitlines()[1].split()
    assert line[6:12] == ["2.00x", "200.0", "200%", "80%", "50%", "4.00x"], line


def test_cell_step_rate_and_roof_plus_cell_column():
    """The gate math's measured rate (bench.cell_step_ns: ns per hidden unit and step, one thread) and the
    "roof+cell" column built from it: torch's time over (products at the peak + the gate math at that
    rate), 4 x positions x hidden unit-steps over the threads."""
    from brnnseg_kernels import bench
    lstm = bench.cell_step_ns("lstm", 32, 64, 0.03)
    elman = bench.cell_step_ns("rnn_tanh", 32, 64, 0.03)
    assert len(lstm) == 3 and all(0 < v < 1e4 for v in lstm + elman), (lstm, elman)
    # four gates, five activations a unit against one: the LSTM's forward costs more per unit
    assert lstm[0] > 1.5 * elman[0], (lstm, elman)
    # the forward as bfloat16 ops run it (their gate math to bfloat16's accuracy where the CPU has AVX-512)
    fast = bench.cell_step_ns("lstm", 32, 64, 0.03, bf16_gates=True)
    assert len(fast) == 3 and all(0 < v < 1e4 for v in fast), fast
    with pytest.raises(ValueError, match="cell must be one of"):
        bench.cell_step_ns("gruu", 8)
    with pytest.raises(ValueError, match="hidden and lines must be positive"):
        bench.cell_step_ns("gru", 0)
    floor = bench.cell_floor_ms((2, 3, 10, 20, 8), "lstm", 2, rates=(1.0, 2.0, 3.0))
    units = 4 * 2 * 10 * 20 * 8 / 2 / 1e6  # ms at 1 ns per unit-step
    assert floor == pytest.approx({"fwd no_grad": units, "fwd grad": 2 * units, "fwd+bwd": 5 * units})
    flops = 1e9  # products 2.5 ms at the peak (as above) + 2.5 ms of gate math: roof+cell 10 / 5 = 2x
    rows = [bench.Row("s", "lstm", "torch", "fwd no_grad", 10.0, flops / 10.0 / 1e6, float("nan")),
            bench.Row("s", "lstm", "brnnseg", "fwd no_grad", 5.0, flops / 5.0 / 1e6, float("nan"))]
    text = bench.report(rows, sgemm=100.0, kernel_gemm=250.0, peak=400.0, cell_ms={("s", "lstm", "fwd no_grad"): 2.5})
    assert "roof+cell" in text.splitlines()[0]
    assert text.splitlines()[1].split()[11:13] == ["4.00x", "2.00x"], text


def test_report_processes_spread():
    """bench --processes: per (shape, cell, mode), the median and range over processes of each
    side's time and of the per-process speed-up (not the ratio of the medians)."""
    from brnnseg_kernels import bench
    runs = [[bench.Row("s", "lstm", "torch", "fwd+bwd", t, 1.0, 3.5),
             bench.Row("s", "lstm", "brnnseg", "fwd+bwd", o, 1.0, 2.5)]
            for t, o in ((10.0, 5.0), (20.0, 5.0), (12.0, 4.0))]
    assert bench.rows_from_json(bench.rows_to_json(runs[0])) == runs[0]
    line = bench.report_processes(runs).splitlines()[2].split()
    assert line[3:] == ["12.0", "[10.0-20.0]", "5.0", "[4.0-5.0]", "3.00x", "[2.00x-4.00x]"], line


def test_bench_cli_processes_smoke(tmp_path):
    """The --processes path end to end: fresh child processes, their rows back as JSON, one table, and
    the --json / --plot outputs of the whole run."""
    import json
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "brnnseg_kernels", "bench", "--processes", "2", "--repeat", "1",
                          "--shapes", "cpu-wide", "--cells", "gru", "--json", str(tmp_path / "r.json"), "--plot",
                          str(tmp_path / "r.png")], cwd=root, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=root))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("cpu-wide")]
    assert [line.split()[2] for line in lines] == ["fwd+bwd", "fwd", "fwd"], out.stdout
    assert [line.split()[3] for line in lines[1:]] == ["grad", "no_grad"], out.stdout
    assert "2 processes" in out.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert len(data["runs"]) == 2 and {r["provider"] for r in data["runs"][0]} == {"torch", "brnnseg"}
    m = data["machine"]
    assert m["torch"] == torch.__version__ and m["cores"] >= 1 and m["cpu"] and "build" in m and "commit" in m
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_speedups_and_plot(tmp_path):
    """The chart's numbers: torch ms / ours ms per (shape, cell, mode), one value per run."""
    from brnnseg_kernels import bench
    runs = [[bench.Row("s", "gru", "torch", "fwd+bwd", 9.0, 1.0, 1.0), bench.Row("s", "gru", "brnnseg", "fwd+bwd", 3.0,
                                                                               1.0, 1.0)],
            [bench.Row("s", "gru", "torch", "fwd+bwd", 8.0, 1.0, 1.0), bench.Row("s", "gru", "brnnseg", "fwd+bwd", 4.0,
                                                                               1.0, 1.0)]]
    assert bench.speedups(runs) == {("s", "gru", "fwd+bwd"): [3.0, 2.0]}
    bench.plot_speedups(runs, str(tmp_path / "p.png"), "t")
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mkn", [(1, 1, 1), (37, 29, 13), (200, 64, 130), (5, 0, 7)])
def test_kernel_gemm_matches_mm(dtype, mkn):
    m, k, n = mkn
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_verbose_allclose(bk.ops.kernel_gemm(a, b), a @ b, rtol=tol, atol=tol * (1 + k))
    assert_verbose_allclose(bk.ops.kernel_gemm(a.t().contiguous().t(), b), a @ b, rtol=tol, atol=tol * (1 + k))
    torch.library.opcheck(torch.ops.brnnseg.kernel_gemm, (a, b))
    with pytest.raises(RuntimeError, match="kernel_gemm: a and b must be matrices"):
        bk.ops.kernel_gemm(a, b.t() if n != k else b[:, None])


@pytest.mark.parametrize("hw", [64, 23], ids=["2MiB-blocks", "256KiB-blocks"])
def test_buffer_cache_outputs_are_ordinary_tensors(hw):
    """Outputs of 256 KiB and more come from the buffer cache (2 MiB blocks from 2 MiB up, 256 KiB
    blocks below): they must behave like at::empty tensors (resizable, freed blocks reused without
    stale data leaking into results), and release_cpu_buffers() frees the idle blocks."""
    x = torch.randn(2, 16, hw, hw)
    w = [t.detach() for t in stacked_weights("gru", 16, 32, dtype=torch.float32)]
    first = bk.ops.sweep("gru", x, *w, axis=3, training=False)
    assert first.nbytes >= 256 << 10 and (first.nbytes >= 2 << 20) == (hw == 64)
    expected = first.clone()
    del first
    again = bk.ops.sweep("gru", x, *w, axis=3, training=False)  # likely the same block, reused
    assert torch.equal(again, expected)
    again.resize_(4, 64, hw + 1, hw + 1)  # larger than the block: the storage grows like any tensor's
    again.fill_(1.0)
    assert again.sum().item() == again.numel()
    del again
    assert bk.release_cpu_buffers() > 0
    assert bk.release_cpu_buffers() == 0
