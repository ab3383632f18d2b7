"""The CUDA sweep kernels: parity with the float64 reference and with the cuDNN nn.GRU/nn.LSTM block,
gradients against the float64 reference (the CUDA kernels have no float64, so no gradcheck),
float16/bfloat16 against float32, torch.compile, pair mode, the tensor-core recurrence.

On a GPU (and the CUDA build) they run on it. Without one they run through the SIMT simulator
(brnnseg_kernels.testing.simulated_cuda: CPU tensors take the CUDA dispatch rules, and the sweep ops
run the CUDA kernels compiled for the simulator, with the same host code and launch planner), so no
GPU test is code that CI never ran. Tests marked gpu_only need what the simulator does not model
(streams, a second device, CUDA autocast, compiled Triton, cuDNN, the drop-ins' device rules) and are
skipped there, saying why."""
import contextlib
import functools

import pytest
import torch

import brnnseg_kernels as bk
import brnnseg_kernels.testing
from brnnseg_kernels import reference
from tests.utils import assert_verbose_allclose, assert_within_reference_error, stacked_weights

HAS_GPU = torch.cuda.is_available() and bool(bk.build_info().get("with_cuda"))
SIMULATED = not HAS_GPU and bk.testing.simulator_available()
DEV = "cuda" if HAS_GPU else "cpu"  # the device the tests' tensors live on

pytestmark = pytest.mark.skipif(not HAS_GPU and not SIMULATED,
                                reason="needs a GPU and the CUDA build, or the simulator extension")


def sized(gpu, simulated):
    """A test's input size: the GPU's, or a smaller one under the simulator (every CUDA thread is an OS
    thread there; the same launch variants -- several CTAs, a partial last one -- at a CI-sized cost)."""
    return simulated if SIMULATED else gpu


def gpu_only(why):
    return pytest.mark.skipif(not HAS_GPU, reason=f"needs a real GPU: {why}")


CELLS = list(bk.cells.kernel_cells())


def _with_nonlinearity(cls, cell):
    """A layer/module class of a kernel cell's family, with the nonlinearity that selects that cell bound
    (BiRNN2d runs rnn_tanh by default: rnn_relu needs nonlinearity="relu")."""
    nl = bk.cells.family_of_cell(cell).nonlinearity_of(cell)
    return functools.partial(cls, nonlinearity=nl) if nl else cls


LAYERS = {cell: _with_nonlinearity(getattr(bk, bk.cells.family_of_cell(cell).layer2d), cell) for cell in CELLS}
LAYERS3D = {cell: _with_nonlinearity(getattr(bk.nn, bk.cells.family_of_cell(cell).layer3d), cell) for cell in CELLS}
TORCH_RNN = {cell: _with_nonlinearity(bk.cells.family_of_cell(cell).torch_module, cell) for cell in CELLS}


@pytest.fixture(autouse=True)
def _device():
    """The whole test runs on the GPU, or under the simulator (cpu_kernels() steps out of it)."""
    if SIMULATED:
        with bk.testing.simulated_cuda("h100"):
            yield
    else:
        yield


@pytest.fixture(autouse=True)
def _our_kernels(monkeypatch):
    """These tests test our CUDA kernels: BRNNSEG_CUDA_BACKEND=kernel keeps the layers on them where the
    default (auto) would hand a measured-slower configuration to cuDNN (tests/test_cuda_backend.py)."""
    monkeypatch.setenv("BRNNSEG_CUDA_BACKEND", "kernel")


@contextlib.contextmanager
def cpu_kernels():
    """The CPU kernels, for expected values computed with our own CPU ops (also under the simulator)."""
    if not SIMULATED:
        yield
        return
    bk.testing._suspend()
    try:
        yield
    finally:
        bk.testing._resume()


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full float32 on both sides: matmul's TF32 switch covers our input-projection GEMMs, cuDNN's
    (True by default) covers nn.GRU/nn.LSTM in the baseline block. Either left on costs ~1e-3. cuDNN's
    through its flags() context: torch.testing's common_utils (imported by other test files) disables
    setting the cuDNN flags directly."""
    cudnn = torch.backends.cudnn
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with cudnn.flags(enabled=cudnn.enabled, benchmark=cudnn.benchmark, deterministic=cudnn.deterministic,
                         allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("axis", [2, 3])
@pytest.mark.parametrize("shape", [(2, 5, 37, 29, 3), (1, 3, 1, 9, 40), (2, 4, 70, 3, 64), (1, 8, 16, 16, 128),
                                   (1, 4, 9, 7, 200), (2, 8, 13, 11, 256)], ids=lambda s: "x".join(map(str, s)))
def test_cuda_sweep_matches_reference(cell, axis, shape):
    """float32 kernels against float64 with weights whose recurrence contracts (W_hh randn x 0.5 / sqrt(hid),
    spectral radius ~0.5, as nn.GRU's initialisation gives), by flash-attention's rule: within 2x the error
    of the plain-PyTorch float32 reference (same inputs and weights) against float64, plus a floor (the
    float32 rounding of one step). With W_hh randn x 0.5 unscaled (radius ~0.5 sqrt(hid): an expanding
    recurrence) rounding is amplified chaotically: at hidden 64..256 torch's own float32 misses rtol 1e-4
    by as much as the kernels do (1e-3 relative, on an H200 and in the simulator), and which float32
    implementation lands closer to float64 is chance."""
    n, c, h, w, hid = shape
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    weights = stacked_weights(cell, c, hid, requires_grad=False)
    weights[1] = weights[1] * hid ** -0.5  # contracting recurrence

    def run_reference(dtype):
        xr = x.to(dtype).requires_grad_()
        wr = [t.to(dtype).requires_grad_() for t in weights]
        with cpu_kernels():
            out = reference.sweep(cell, xr, *wr, axis=axis)
        return out, [xr] + wr

    expected, inputs64 = run_reference(torch.float64)
    g = torch.randn_like(expected)
    exp_grads = torch.autograd.grad(expected, inputs64, g)
    ref32, inputs32 = run_reference(torch.float32)
    ref32_grads = torch.autograd.grad(ref32, inputs32, g.float())
    xc = x.float().to(DEV).requires_grad_()
    wc = [t.float().to(DEV).requires_grad_() for t in weights]
    y = bk.ops.sweep(cell, xc, *wc, axis=axis)
    assert_within_reference_error(y.cpu(), expected, ref32, atol=1e-5, name="y")
    grads = torch.autograd.grad(y, [xc] + wc, g.float().to(DEV))
    for name, got, exp, r32 in zip(["x", "w_ih", "w_hh", "b_ih", "b_hh"], grads, exp_grads, ref32_grads):
        # Weight gradients sum over every position: the floor scales with their size.
        assert_within_reference_error(got.cpu(), exp, r32, atol=1e-5 * (1 + exp.abs().max().item()),
                                      name=f"grad {name}")


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_layer_matches_cudnn_block(cell):
    base = reference.ReNetBaseline(16, 32, cell).to(DEV)
    ours = LAYERS[cell](16, 32).to(DEV)
    ours.load_state_dict(base.state_dict())
    x = torch.randn(2, 16, 20, 24, device=DEV)
    assert_verbose_allclose(ours(x), base(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_reduced_precision(cell, dtype):
    layer = LAYERS[cell](8, 64).to(DEV)
    x = torch.randn(2, 8, 24, 20, device=DEV)
    ref32 = reference.renet(cell, x.double(), {"rows": [t.double() for t in layer.rows.stacked()],
                                                "cols": [t.double() for t in layer.cols.stacked()]})
    y = layer.to(dtype)(x.to(dtype))
    assert y.dtype == dtype
    # Within 2x the error of the reference run in that dtype (flash-attention's rule), or 3e-2.
    ref_lp = reference.renet(cell, x.to(dtype), {"rows": layer.rows.stacked(), "cols": layer.cols.stacked()})
    err = (y.double() - ref32).abs().max().item()
    err_ref = (ref_lp.double() - ref32).abs().max().item()
    assert err <= max(2 * err_ref, 3e-2)


@gpu_only("CUDA autocast (torch.autocast(\"cuda\") is off without a GPU)")
def test_cuda_autocast():
    layer = bk.BiGRU2d(8, 32).to(DEV)
    x = torch.randn(2, 8, 16, 16, device=DEV, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_cuda_compile_fullgraph():
    layer = bk.BiLSTM2d(4, 16).to(DEV)
    x = torch.randn(2, 4, 12, 10, device=DEV)
    assert_verbose_allclose(torch.compile(layer, fullgraph=True)(x), layer(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_opcheck(cell):
    x = torch.randn(2, 3, 5, 4, device=DEV, requires_grad=True)
    w = [t.float().to(DEV).requires_grad_() for t in stacked_weights(cell, 3, 4, requires_grad=False)]
    torch.library.opcheck(torch.ops.brnnseg.sweep, (cell, x, *w, 3, False, True))


@gpu_only("the compiled Triton loss (tests/test_seg_loss.py runs it in the interpreter)")
def test_cuda_seg_loss_triton_matches_cpu():
    x = torch.randn(2, 3, 37, 29)
    y = (torch.rand(2, 3, 37, 29) > 0.6)
    kw = dict(pos_weight=10.0, boundary_weight=2.0, boundary_radius=1)
    xc = x.to(DEV).requires_grad_()
    loss = bk.functional.bce_dice_loss(xc, y.to(DEV), **kw)
    loss.backward()
    xr = x.clone().requires_grad_()
    ref = bk.functional.bce_dice_loss(xr, y, **kw)
    ref.backward()
    assert_verbose_allclose(loss.cpu(), ref, rtol=1e-5, atol=1e-6)
    assert_verbose_allclose(xc.grad.cpu(), xr.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_volume_layer_and_models_match_cpu(cell):
    """The 3-D layer (2-D sweeps on channels_last views) and a model on the GPU equal the CPU."""
    layer = LAYERS3D[cell](3, 8)
    x = torch.randn(2, 3, 4, 6, 5)
    with cpu_kernels():
        expected = layer(x)
    got = layer.to(DEV)(x.to(DEV))
    assert_verbose_allclose(got.cpu(), expected, rtol=1e-4, atol=1e-5)
    # Models take the family name ("rnn"; its default nonlinearity), not the kernel cell's.
    model = bk.models.BRNNUNet(3, 2, base_channels=8, depth=2, rnn=bk.cells.family_of_cell(cell).name).eval()
    img = torch.randn(1, 3, 16, 12)
    with torch.no_grad():
        with cpu_kernels():
            expected = model(img)
        got = model.to(DEV)(img.to(DEV))
    assert_verbose_allclose(got.cpu(), expected, rtol=1e-3, atol=1e-4)


@gpu_only("the drop-ins' CUDA rule (cuDNN) and cuDNN itself")
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_dropin_rnn_runs_torch_path(cell):
    """On CUDA the drop-in GRU/LSTM run torch's cuDNN path: identical to torch's module."""
    ref = TORCH_RNN[cell](4, 6, num_layers=2, bidirectional=True).to(DEV)
    ours = _with_nonlinearity(getattr(bk.nn, bk.cells.family_of_cell(cell).dropin), cell)(
        4, 6, num_layers=2, bidirectional=True).to(DEV)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(7, 3, 4, device=DEV)
    assert not ours.fused_kernel_applies(x)
    assert_verbose_allclose(ours(x)[0], ref(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_pair_mode_every_dtype(cell, dtype):
    """mode="parallel" (both sweeps in one launch) equals the two sweeps run one by one."""
    layer = LAYERS[cell](8, 40, mode="parallel").to(DEV).to(dtype)
    x = torch.randn(*sized((2, 8, 19, 23), (1, 8, 11, 9)), device=DEV, dtype=dtype, requires_grad=True)
    y = layer(x)
    w = {"rows": layer.rows.stacked(), "cols": layer.cols.stacked()}
    expected = torch.cat([bk.ops.sweep(cell, x, *w["rows"], axis=3), bk.ops.sweep(cell, x, *w["cols"], axis=2)], 1)
    assert y.dtype == dtype
    assert_verbose_allclose(y.float(), expected.float(), rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, [x], g)
    (ex,) = torch.autograd.grad(expected, [x], g)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    assert_verbose_allclose(gx.float(), ex.float(), rtol=tol, atol=tol)


@gpu_only("CUDA streams")
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_non_default_stream(cell):
    """Kernels go on the current stream: results on a side stream equal the default stream's."""
    layer = LAYERS[cell](8, 64).to(DEV)
    x = torch.randn(2, 8, 17, 21, device=DEV, requires_grad=True)
    expected = layer(x)
    (eg,) = torch.autograd.grad(expected.sum(), [x])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        y = layer(x)
        (g,) = torch.autograd.grad(y.sum(), [x])
    torch.cuda.current_stream().wait_stream(side)
    assert_verbose_allclose(y, expected, rtol=0, atol=0)
    assert_verbose_allclose(g, eg, rtol=0, atol=0)


@gpu_only("a second GPU")
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_cuda_second_device():
    """A layer on cuda:1 runs there (device guard), and equals the same layer on cuda:0."""
    layer = bk.BiGRU2d(4, 32)
    x = torch.randn(1, 4, 9, 11)
    y0 = layer.to("cuda:0")(x.to("cuda:0"))
    y1 = layer.to("cuda:1")(x.to("cuda:1"))
    assert y1.device == torch.device("cuda:1")
    assert_verbose_allclose(y1.cpu(), y0.cpu(), rtol=0, atol=0)


# ---- the tensor-core recurrence (sweep_{fwd,bwd}_mma_kernel.cuh) on the GPU ----------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
# Under the simulator kt = 1, 4 and 8 only (tests/test_sweep_sim_mma.py runs 3, 20, 40, 100 there too).
@pytest.mark.parametrize("hid", [3, 20, 40, 100, 128] if not SIMULATED else [3, 40, 128])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_cuda_tensor_core_recurrence_matches_reference(cell, hid, dtype, monkeypatch):
    """BRNNSEG_CUDA_RECURRENCE=mma against the float64 reference, tolerances as in the simulator's tests
    (tests/test_sweep_sim_mma.py): TF32 2 u sqrt(hid) on y; half precision within 3e-2 / 5e-2."""
    if dtype == torch.float32 and hid > 64:
        pytest.skip("no TF32 register-resident plan above hidden 64 (the FP32-core kernel runs)")
    monkeypatch.setenv("BRNNSEG_CUDA_RECURRENCE", "mma")
    n, c, h, w = sized((2, 8, 37, 29), (1, 5, 17, 6))  # simulated: 17 lines = 2 CTAs of 16, the second partial
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    weights = stacked_weights(cell, c, hid, scale=hid ** -0.5, requires_grad=False)
    for axis in (2, 3):
        xd = x.clone().requires_grad_()
        wd = [t.clone().requires_grad_() for t in weights]
        expected = reference.sweep(cell, xd, *wd, axis=axis)
        g = torch.randn_like(expected)
        exp_grads = torch.autograd.grad(expected, [xd] + wd, g)
        xc = x.to(DEV, dtype).requires_grad_()
        wc = [t.to(DEV, dtype).requires_grad_() for t in weights]
        y = bk.ops.sweep(cell, xc, *wc, axis=axis)
        grads = torch.autograd.grad(y, [xc] + wc, g.to(DEV, dtype))
        err = (y.double().cpu() - expected).abs().max().item()
        tol = 2 * 2.0 ** -11 * hid ** 0.5 if dtype == torch.float32 else 3e-2
        assert err <= tol, (axis, err, tol)
        for got, exp in zip(grads, exp_grads):
            gerr = (got.double().cpu() - exp).abs().max().item()
            assert gerr <= (4 * tol if dtype == torch.float32 else 5e-2) * (exp.abs().max().item() + 1e-6), gerr


# Under the simulator one case and one axis (tests/test_sweep_sim_mma.py covers the rest there).
@pytest.mark.parametrize("cell,hid", [("gru", 40), ("lstm", 20), ("rnn_tanh", 40)] if not SIMULATED else [("lstm", 20)])
def test_cuda_tf32x3_has_float32_accuracy(cell, hid, monkeypatch):
    """BRNNSEG_CUDA_RECURRENCE=tf32x3 (3xTF32 on tensor cores): forward and every gradient within 2x the
    error of torch's float32 reference against float64, plus 8 float32 ulps of the largest value (as in
    tests/test_sweep_sim_mma.py, where the simulator's accumulation rounds every addition; a GPU's tensor
    cores are checked here)."""
    monkeypatch.setenv("BRNNSEG_CUDA_RECURRENCE", "tf32x3")
    n, c, h, w = sized((2, 8, 37, 29), (1, 4, 17, 9))
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    weights = stacked_weights(cell, c, hid, scale=hid ** -0.5, requires_grad=False)
    g = None
    for axis in (2, 3) if not SIMULATED else (3,):
        results = {}
        for name, dtype, dev in (("float64", torch.float64, "cpu"), ("torch32", torch.float32, "cpu"),
                                 ("ours", torch.float32, DEV)):
            xi = x.to(dev, dtype).requires_grad_()
            wi = [t.to(dev, dtype).requires_grad_() for t in weights]
            if name == "ours":
                y = bk.ops.sweep(cell, xi, *wi, axis=axis)
            else:
                with cpu_kernels():
                    y = reference.sweep(cell, xi, *wi, axis=axis)
            g = torch.randn(y.shape, dtype=torch.float64) if name == "float64" else g
            grads = torch.autograd.grad(y, [xi] + wi, g.to(dev, dtype))
            results[name] = [t.detach().double().cpu() for t in (y, *grads)]
        for i, (ours, ref, exp) in enumerate(zip(results["ours"], results["torch32"], results["float64"])):
            err, ref_err = (ours - exp).abs().max().item(), (ref - exp).abs().max().item()
            assert err <= 2 * ref_err + 8 * 2.0 ** -24 * exp.abs().max().item(), (axis, i, err, ref_err)


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_tensor_core_and_fp32_core_blocks_agree(cell, monkeypatch):
    """A bfloat16 ReNet block (pair mode, channels_last) through both recurrences."""
    layer = LAYERS[cell](16, 64, mode="parallel").to(DEV).to(torch.bfloat16)
    shape = sized((2, 16, 33, 40), (1, 16, 17, 9))
    x = torch.randn(*shape, device=DEV, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    outs = []
    for kind in ("fma", "mma"):
        monkeypatch.setenv("BRNNSEG_CUDA_RECURRENCE", kind)
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.float().square().mean().backward()
        outs.append((y.float(), xi.grad.float()))
    assert (outs[0][0] - outs[1][0]).abs().max().item() <= 3e-2
    assert (outs[0][1] - outs[1][1]).abs().max().item() <= 5e-2 * (outs[0][1].abs().max().item() + 1e-6)


@gpu_only("cuDNN and the profiler's CUDA kernels")
def test_cuda_bench_records_the_cudnn_algorithm():
    """bench on CUDA records which cuDNN RNN algorithm the baseline asked for and which kernels ran."""
    from brnnseg_kernels import bench

    records: list = []
    rows = bench.run("cuda", ["latency-128"], ["gru"], repeat=1, memory=False, cudnn_records=records)
    assert len(rows) == 6 and len(records) == 1
    rec = records[0]
    assert rec["predicted"]["rows fwd"] == "persist_static_small_h"  # hidden 128
    assert rec["observed"]["algorithm"] in ("persistent", "standard") and rec["observed"]["kernels"]
    assert rec["us_per_step"]["torch fwd+bwd"] > 0


def test_cuda_deterministic_algorithms_repeat_bit_for_bit(monkeypatch):
    """Under torch.use_deterministic_algorithms(True) a ReNet forward+backward and both losses repeat bit for
    bit: the sweep kernels have no atomics (every line is one CTA's), weight gradients are cuBLAS GEMMs and
    torch reductions (torch enforces CUBLAS_WORKSPACE_CONFIG itself), the Triton losses reduce in a fixed
    order."""
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        def step():
            torch.manual_seed(0)
            layer = bk.BiGRU2d(16, 24).to(DEV)
            x = torch.randn(2, 16, 37, 29, device=DEV, requires_grad=True)
            y = layer(x)
            labels = torch.randint(0, 4, (2, 37, 29), device=DEV)
            loss = (bk.functional.ce_dice_loss(y[:, :4], labels, boundary_weight=1.0)
                    + bk.functional.bce_dice_loss(y[:, 4:5], (labels > 1).float()[:, None], boundary_weight=2.0))
            loss.backward()
            return torch.cat([t.flatten() for t in [y, loss.reshape(1), x.grad] + [p.grad for p in layer.parameters()]])
        first, second = step(), step()
    finally:
        torch.use_deterministic_algorithms(was)
    assert torch.equal(first, second)
