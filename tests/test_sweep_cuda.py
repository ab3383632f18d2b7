"""The CUDA sweep kernels on a real GPU (skipped without one): parity with the reference and with
the cuDNN nn.GRU/nn.LSTM block, float64 gradcheck through the float32 kernels' CPU twin is not
possible (the CUDA kernel has no float64), so gradients are checked against the float64 reference;
float16/bfloat16 against the float32 kernel; autocast; torch.compile; the large-hidden fallback."""
import pytest
import torch

import brnnseg_kernels as bk
from brnnseg_kernels import reference
from tests.utils import assert_verbose_allclose, stacked_weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or not bk.build_info().get("with_cuda"),
                                reason="needs a GPU and the CUDA build")

CELLS = list(bk.cells.kernel_cells())
LAYERS = {cell: getattr(bk, bk.cells.family_of_cell(cell).layer2d) for cell in CELLS}


@pytest.fixture(autouse=True)
def _no_tf32():
    """Full float32 on both sides: matmul's TF32 switch covers our input-projection GEMMs, cuDNN's
    (True by default) covers nn.GRU/nn.LSTM in the baseline block. Either left on costs ~1e-3."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("axis", [2, 3])
@pytest.mark.parametrize("shape", [(2, 5, 37, 29, 3), (1, 3, 1, 9, 40), (2, 4, 70, 3, 64), (1, 8, 16, 16, 128),
                                   (1, 4, 9, 7, 200), (2, 8, 13, 11, 256)], ids=lambda s: "x".join(map(str, s)))
def test_cuda_sweep_matches_reference(cell, axis, shape):
    n, c, h, w, hid = shape
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    weights = stacked_weights(cell, c, hid, requires_grad=False)
    xd = x.clone().requires_grad_()
    wd = [t.clone().requires_grad_() for t in weights]
    expected = reference.sweep(cell, xd, *wd, axis=axis)
    g = torch.randn_like(expected)
    exp_grads = torch.autograd.grad(expected, [xd] + wd, g)
    xc = x.float().cuda().requires_grad_()
    wc = [t.float().cuda().requires_grad_() for t in weights]
    y = bk.ops.sweep(cell, xc, *wc, axis=axis)
    assert_verbose_allclose(y.double().cpu(), expected, rtol=1e-4, atol=1e-5)
    grads = torch.autograd.grad(y, [xc] + wc, g.float().cuda())
    for got, exp in zip(grads, exp_grads):
        assert_verbose_allclose(got.double().cpu(), exp, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_layer_matches_cudnn_block(cell):
    base = reference.ReNetBaseline(16, 32, cell).cuda()
    ours = LAYERS[cell](16, 32).cuda()
    ours.load_state_dict(base.state_dict())
    x = torch.randn(2, 16, 20, 24, device="cuda")
    assert_verbose_allclose(ours(x), base(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_reduced_precision(cell, dtype):
    layer = LAYERS[cell](8, 64).cuda()
    x = torch.randn(2, 8, 24, 20, device="cuda")
    ref32 = reference.renet(cell, x.double(), {"rows": [t.double() for t in layer.rows.stacked()],
                                                "cols": [t.double() for t in layer.cols.stacked()]})
    y = layer.to(dtype)(x.to(dtype))
    assert y.dtype == dtype
    # Within 2x the error of the reference run in that dtype (flash-attention's rule), or 3e-2.
    ref_lp = reference.renet(cell, x.to(dtype), {"rows": layer.rows.stacked(), "cols": layer.cols.stacked()})
    err = (y.double() - ref32).abs().max().item()
    err_ref = (ref_lp.double() - ref32).abs().max().item()
    assert err <= max(2 * err_ref, 3e-2)


def test_cuda_autocast():
    layer = bk.BiGRU2d(8, 32).cuda()
    x = torch.randn(2, 8, 16, 16, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_cuda_compile_fullgraph():
    layer = bk.BiLSTM2d(4, 16).cuda()
    x = torch.randn(2, 4, 12, 10, device="cuda")
    assert_verbose_allclose(torch.compile(layer, fullgraph=True)(x), layer(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_opcheck(cell):
    x = torch.randn(2, 3, 5, 4, device="cuda", requires_grad=True)
    w = [t.float().cuda().requires_grad_() for t in stacked_weights(cell, 3, 4, requires_grad=False)]
    torch.library.opcheck(torch.ops.brnnseg.sweep, (cell, x, *w, 3, False, True))


def test_cuda_seg_loss_triton_matches_cpu():
    x = torch.randn(2, 3, 37, 29)
    y = (torch.rand(2, 3, 37, 29) > 0.6)
    kw = dict(pos_weight=10.0, boundary_weight=2.0, boundary_radius=1)
    xc = x.cuda().requires_grad_()
    loss = bk.functional.bce_dice_loss(xc, y.cuda(), **kw)
    loss.backward()
    xr = x.clone().requires_grad_()
    ref = bk.functional.bce_dice_loss(xr, y, **kw)
    ref.backward()
    assert_verbose_allclose(loss.cpu(), ref, rtol=1e-5, atol=1e-6)
    assert_verbose_allclose(xc.grad.cpu(), xr.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_volume_layer_and_models_match_cpu(cell):
    """The 3-D layer (2-D sweeps on channels_last views) and a model on the GPU equal the CPU."""
    layer = (bk.nn.BiGRU3d if cell == "gru" else bk.nn.BiLSTM3d)(3, 8)
    x = torch.randn(2, 3, 4, 6, 5)
    expected = layer(x)
    got = layer.cuda()(x.cuda())
    assert_verbose_allclose(got.cpu(), expected, rtol=1e-4, atol=1e-5)
    model = bk.models.BRNNUNet(3, 2, base_channels=8, depth=2, rnn=cell).eval()
    img = torch.randn(1, 3, 16, 12)
    with torch.no_grad():
        expected = model(img)
        got = model.cuda()(img.cuda())
    assert_verbose_allclose(got.cpu(), expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_dropin_rnn_runs_torch_path(cell):
    """On CUDA the drop-in GRU/LSTM run torch's cuDNN path: identical to torch's module."""
    torch_cls = torch.nn.GRU if cell == "gru" else torch.nn.LSTM
    ref = torch_cls(4, 6, num_layers=2, bidirectional=True).cuda()
    ours = (bk.nn.GRU if cell == "gru" else bk.nn.LSTM)(4, 6, num_layers=2, bidirectional=True).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(7, 3, 4, device="cuda")
    assert not ours.fused_kernel_applies(x)
    assert_verbose_allclose(ours(x)[0], ref(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("cell", CELLS)
def test_cuda_pair_mode_every_dtype(cell, dtype):
    """mode="parallel" (both sweeps in one launch) equals the two sweeps run one by one."""
    layer = LAYERS[cell](8, 40, mode="parallel").cuda().to(dtype)
    x = torch.randn(2, 8, 19, 23, device="cuda", dtype=dtype, requires_grad=True)
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


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_non_default_stream(cell):
    """Kernels go on the current stream: results on a side stream equal the default stream's."""
    layer = LAYERS[cell](8, 64).cuda()
    x = torch.randn(2, 8, 17, 21, device="cuda", requires_grad=True)
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
@pytest.mark.parametrize("hid", [3, 20, 40, 100, 128])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_cuda_tensor_core_recurrence_matches_reference(cell, hid, dtype, monkeypatch):
    """BRNNSEG_CUDA_RECURRENCE=mma against the float64 reference, tolerances as in the simulator's tests
    (tests/test_sweep_sim_mma.py): TF32 2 u sqrt(hid) on y; half precision within 3e-2 / 5e-2."""
    if dtype == torch.float32 and hid > 64:
        pytest.skip("no TF32 register-resident plan above hidden 64 (the FP32-core kernel runs)")
    monkeypatch.setenv("BRNNSEG_CUDA_RECURRENCE", "mma")
    n, c, h, w = 2, 8, 37, 29
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    weights = stacked_weights(cell, c, hid, scale=hid ** -0.5, requires_grad=False)
    for axis in (2, 3):
        xd = x.clone().requires_grad_()
        wd = [t.clone().requires_grad_() for t in weights]
        expected = reference.sweep(cell, xd, *wd, axis=axis)
        g = torch.randn_like(expected)
        exp_grads = torch.autograd.grad(expected, [xd] + wd, g)
        xc = x.to("cuda", dtype).requires_grad_()
        wc = [t.to("cuda", dtype).requires_grad_() for t in weights]
        y = bk.ops.sweep(cell, xc, *wc, axis=axis)
        grads = torch.autograd.grad(y, [xc] + wc, g.to("cuda", dtype))
        err = (y.double().cpu() - expected).abs().max().item()
        tol = 2 * 2.0 ** -11 * hid ** 0.5 if dtype == torch.float32 else 3e-2
        assert err <= tol, (axis, err, tol)
        for got, exp in zip(grads, exp_grads):
            gerr = (got.double().cpu() - exp).abs().max().item()
            assert gerr <= (4 * tol if dtype == torch.float32 else 5e-2) * (exp.abs().max().item() + 1e-6), gerr


@pytest.mark.parametrize("cell", CELLS)
def test_cuda_tensor_core_and_fp32_core_blocks_agree(cell, monkeypatch):
    """A bfloat16 ReNet block (pair mode, channels_last) through both recurrences."""
    layer = LAYERS[cell](16, 64, mode="parallel").cuda().to(torch.bfloat16)
    x = torch.randn(2, 16, 33, 40, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    outs = []
    for kind in ("fma", "mma"):
        monkeypatch.setenv("BRNNSEG_CUDA_RECURRENCE", kind)
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.float().square().mean().backward()
        outs.append((y.float(), xi.grad.float()))
    assert (outs[0][0] - outs[1][0]).abs().max().item() <= 3e-2
    assert (outs[0][1] - outs[1][1]).abs().max().item() <= 5e-2 * (outs[0][1].abs().max().item() + 1e-6)


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
            layer = bk.BiGRU2d(16, 24).cuda()
            x = torch.randn(2, 16, 37, 29, device="cuda", requires_grad=True)
            y = layer(x)
            labels = torch.randint(0, 4, (2, 37, 29), device="cuda")
            loss = (bk.functional.ce_dice_loss(y[:, :4], labels, boundary_weight=1.0)
                    + bk.functional.bce_dice_loss(y[:, 4:5], (labels > 1).float()[:, None], boundary_weight=2.0))
            loss.backward()
            return torch.cat([t.flatten() for t in [y, loss.reshape(1), x.grad] + [p.grad for p in layer.parameters()]])
        first, second = step(), step()
    finally:
        torch.use_deterministic_algorithms(was)
    assert torch.equal(first, second)
