"""Fused segmentation loss: the C++ CPU kernel (through the op) and the Triton kernels against the
plain-PyTorch reference. Without a GPU the Triton kernels run under TRITON_INTERPRET=1 on CPU tensors
(set in conftest.py); with one, compiled, on copies of the inputs on the GPU."""
import os

import pytest
import torch

import brnnseg_kernels as bk
from brnnseg_kernels import reference
from brnnseg_kernels.losses import seg_loss as sl
from tests.utils import assert_verbose_allclose, check_python_autograd_matches_cpu

triton_kernels = pytest.importorskip("brnnseg_kernels.losses._kernels")


INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_DEVICE = "cpu" if INTERPRETED else "cuda"


def _on(dev, *ts):
    return [None if t is None else t.to(dev) for t in ts]


class _TritonSums(torch.autograd.Function):
    """The loss with its sums from the Triton launchers (as the CUDA kernel of the op would): on CPU
    tensors under the interpreter, else compiled on the GPU."""

    @staticmethod
    def forward(ctx, logits, target, weight, pos_weight, bw, r, ign, sq):
        ctx.save_for_backward(logits, target, weight, pos_weight)
        ctx.params = (bw, r, ign, sq)
        sums = triton_kernels.seg_loss_sums_triton(*_on(TRITON_DEVICE, logits, target, weight, pos_weight),
                                                   bw, r, ign, sq)
        return sums.to(logits.device)

    @staticmethod
    def backward(ctx, g):
        logits, target, weight, pos_weight = ctx.saved_tensors
        dx = triton_kernels.seg_loss_sums_backward_triton(*_on(TRITON_DEVICE, g, logits, target, weight, pos_weight),
                                                          *ctx.params)
        return dx.to(logits.device), None, None, None, None, None, None, None


class _TritonLoss(torch.autograd.Function):
    """The whole loss from the Triton launchers (as the CUDA kernels of brnnseg::bce_dice_loss and its
    backward are): on CPU tensors under the interpreter, else compiled on the GPU."""

    @staticmethod
    def forward(ctx, logits, target, weight, pos_weight, *params):
        dev = logits.device
        loss, fac = triton_kernels.bce_dice_loss_triton(
            *_on(TRITON_DEVICE, logits, target, weight, pos_weight), params[0],
            *_on(TRITON_DEVICE, params[1]), *params[2:])
        ctx.save_for_backward(logits, target, weight, pos_weight, fac)
        ctx.params = params
        ctx.mark_non_differentiable(fac)
        ctx.set_materialize_grads(False)
        return loss.to(dev), fac.to(dev)

    @staticmethod
    def backward(ctx, g, _gf):
        if g is None:
            return (None,) * 18
        logits, target, weight, pos_weight, fac = ctx.saved_tensors
        pw_value, _mask, _from, bw, r, ign, sq, _lce, _ldice, _snr, _sdr, batch, _log, reduction = ctx.params
        dx = triton_kernels.bce_dice_loss_backward_triton(
            *_on(TRITON_DEVICE, g, fac, logits, target, weight, pos_weight), pw_value, bw, r, ign, sq, batch,
            reduction)
        return (dx.to(logits.device),) + (None,) * 17


@pytest.fixture(autouse=True)
def _fused(monkeypatch):
    """These tests test the fused op: on a GPU, BRNNSEG_CUDA_LOSS=fused keeps CUDA calls on it where the
    shipped table would send them to the unfused composition (tests/test_loss_backend.py tests that choice)."""
    monkeypatch.setenv("BRNNSEG_CUDA_LOSS", "fused")


@pytest.fixture(params=["cpu", "triton"])
def backend(request, monkeypatch):
    if request.param == "triton":
        monkeypatch.setattr(sl, "_loss_op", _TritonLoss.apply)
    return request.param


def _tol(backend, dtype):
    # Both compute in float64 for float64 logits, else in float32.
    if dtype != torch.float64:
        return dict(rtol=2e-5, atol=2e-6)
    return dict(rtol=1e-10, atol=1e-12)


def _check(backend, logits, target, weight=None, grad_out=None, dtype=torch.float64, **kw):
    x = logits.to(dtype).detach().requires_grad_()
    x_ref = logits.double().detach().requires_grad_()
    got = bk.functional.bce_dice_loss(x, target, weight, **kw)
    exp = reference.seg_loss(x_ref, target, None if weight is None else weight.double(), **kw)
    tol = _tol(backend, dtype)
    assert torch.isfinite(got).all()
    assert_verbose_allclose(got.double(), exp, name="loss", **tol)
    g = torch.randn_like(exp) if grad_out is None else grad_out
    (gx,) = torch.autograd.grad(got, x, g.to(got.dtype))
    (ex,) = torch.autograd.grad(exp, x_ref, g)
    assert torch.isfinite(gx).all()
    assert_verbose_allclose(gx.double(), ex, name="grad", **tol)


def _rand(shape, p=0.4):
    return torch.randn(shape) * 3, (torch.rand(shape) < p).float()


@pytest.mark.parametrize("shape", [(2, 3, 37, 29), (1, 1, 5, 3), (3, 1, 1, 1), (1, 2, 4, 70), (2, 2, 3, 5, 6)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("options", [
    dict(),
    dict(pos_weight=10.0, boundary_weight=2.0, boundary_radius=1),
    dict(boundary_weight=1.5, boundary_radius=2, squared=True, log_dice=True),
    dict(batch_dice=True, dice_weight=0.5, smooth_nr=0.0, smooth_dr=1.0),
    dict(include_background=False, reduction="sum", boundary_weight=1.0),
    dict(channels=[0], reduction="none", pos_weight=3.0),
], ids=["plain", "pw10-bw2", "r2-squared-log", "batch", "nobg-sum", "chan-none"])
def test_loss_matches_reference(backend, shape, options):
    x, y = _rand(shape)
    _check(backend, x, y, **options)


def test_loss_float32_and_per_pixel_weight(backend):
    x, y = _rand((2, 3, 17, 13))
    w = torch.rand(2, 3, 17, 13) * 2
    _check(backend, x, y, w, dtype=torch.float32, pos_weight=torch.tensor([1.0, 5.0, 0.5]), boundary_weight=2.0)


@pytest.mark.parametrize("target_dtype", [torch.bool, torch.uint8, torch.int64, torch.float32, torch.float64])
def test_loss_target_dtypes(backend, target_dtype):
    x, y = _rand((2, 2, 9, 11))
    _check(backend, x, y.to(target_dtype), boundary_weight=1.0, pos_weight=2.0)


def test_loss_soft_targets(backend):
    x = torch.randn(2, 2, 9, 8) * 2
    _check(backend, x, torch.rand(2, 2, 9, 8), boundary_weight=1.0, pos_weight=4.0, squared=True)


@pytest.mark.parametrize("value", [1e4, -1e4, 100.0, -100.0, 0.0])
def test_loss_extreme_logits_are_finite(backend, value):
    x = torch.full((2, 1, 6, 7), value)
    x[0, 0, 0, 0] = -value
    _, y = _rand((2, 1, 6, 7), 0.5)
    _check(backend, x, y, boundary_weight=2.0, pos_weight=10.0, log_dice=True)


@pytest.mark.parametrize("mask", ["empty", "full"])
def test_loss_empty_and_full_masks(backend, mask):
    x = torch.randn(2, 2, 8, 9)
    y = torch.zeros_like(x) if mask == "empty" else torch.ones_like(x)
    _check(backend, x, y, boundary_weight=2.0)
    _check(backend, x, y, smooth_nr=0.0, smooth_dr=0.0)          # empty mask + smooth 0: finite, defined
    _check(backend, x, y, smooth_nr=0.0, smooth_dr=0.0, log_dice=True)


def test_loss_smooth_zero_empty_mask_value():
    x = torch.randn(1, 1, 4, 4)
    loss = bk.functional.bce_dice_loss(x, torch.zeros_like(x), smooth_nr=0.0, smooth_dr=0.0, bce_weight=0.0)
    assert loss.item() == pytest.approx(1.0)  # score 0: Dice loss 1
    loss = bk.functional.bce_dice_loss(x, torch.zeros_like(x), smooth_nr=0.0, smooth_dr=0.0, bce_weight=0.0,
                                       log_dice=True)
    assert loss.item() == pytest.approx(-torch.log(torch.tensor(1e-7)).item(), rel=1e-5)


def test_loss_ignore_index(backend):
    x, y = _rand((2, 2, 10, 7))
    y[0, :, :3] = 255
    _check(backend, x, y, ignore_index=255, boundary_weight=2.0, pos_weight=3.0)
    y_all = torch.full_like(y, 255.0)
    _check(backend, x, y_all, ignore_index=255, boundary_weight=2.0)
    _check(backend, x, y_all, ignore_index=255, smooth_nr=0.0, smooth_dr=0.0)
    loss = bk.functional.bce_dice_loss(x, y_all.to(torch.uint8), ignore_index=255, smooth_nr=0.0, smooth_dr=0.0)
    assert loss.item() == 0.0  # nothing counted: BCE 0, Dice 0/0 counts as a perfect score


def test_loss_pos_weight_zero(backend):
    x, y = _rand((2, 1, 7, 7))
    _check(backend, x, y, pos_weight=0.0, boundary_weight=1.0)


def test_loss_non_contiguous_inputs(backend):
    x, y = _rand((2, 3, 12, 10))
    x_nc = x.transpose(2, 3)
    y_nc = y.transpose(2, 3)
    assert not x_nc.is_contiguous()
    _check(backend, x_nc, y_nc, boundary_weight=2.0)
    _check(backend, x.to(memory_format=torch.channels_last), y, boundary_weight=1.0)


def test_loss_grad_output_not_one_and_two_losses_on_same_logits(backend):
    x, y = _rand((2, 2, 9, 9))
    _check(backend, x, y, grad_out=torch.tensor(3.7, dtype=torch.float64), boundary_weight=1.0)
    xg = x.double().requires_grad_()
    total = bk.functional.bce_dice_loss(xg, y, boundary_weight=2.0) + 0.5 * bk.functional.bce_dice_loss(
        xg, y, pos_weight=10.0, squared=True)
    (g,) = torch.autograd.grad(total, xg)
    xr = x.double().requires_grad_()
    ref = reference.seg_loss(xr, y, boundary_weight=2.0) + 0.5 * reference.seg_loss(xr, y, pos_weight=10.0,
                                                                                    squared=True)
    (gr,) = torch.autograd.grad(ref, xr)
    assert_verbose_allclose(g, gr, **_tol(backend, torch.float64))


GRADCHECK_OPTIONS = [dict(boundary_weight=2.0, pos_weight=5.0), dict(squared=True, log_dice=True, batch_dice=True),
                     dict(reduction="none", ignore_index=1.0), dict(reduction="none", batch=True, channels=[1]),
                     dict(reduction="sum", include_background=False, smooth_nr=0.0, log_dice=True),
                     dict(pos_weight=torch.tensor([2.0, 0.5]), lambda_ce=0.3, lambda_dice=1.7, batch=True)]


@pytest.mark.parametrize("kw", GRADCHECK_OPTIONS, ids=range(len(GRADCHECK_OPTIONS)))
def test_loss_gradcheck_float64(backend, kw):
    """The backward from the forward's factors (finish kernel / finish_from_sums) against finite
    differences, every reduction, batch Dice with reduction "none" (the gradient summed over the batch)."""
    x = torch.randn(2, 2, 5, 4, dtype=torch.float64, requires_grad=True)
    y = torch.rand(2, 2, 5, 4, dtype=torch.float64)
    w = torch.rand(2, 2, 5, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: bk.functional.bce_dice_loss(x, y, w, **kw), (x,),
                                    fast_mode=backend == "triton")  # (the interpreter is slow)


def _census_of_one_step(loss_fn, x):
    from brnnseg_kernels.bench.census import census

    loss_fn(x).sum().backward()  # warm: the channel mask is made on the first call only
    x.grad = None  # (else the step's gradient is added into it: one more op)
    with census(triton_kernels) as c:
        loss = loss_fn(x)
        loss.backward(torch.ones_like(loss))
    return c


def _census_device(backend, monkeypatch):
    """Where the census runs: CPU tensors (the C++ op; or the Triton launchers under the interpreter,
    through the test seam), or with a GPU the real CUDA op on CUDA tensors (no seam: its copies would
    count)."""
    if backend == "triton" and not INTERPRETED:
        monkeypatch.setattr(sl, "_loss_op", lambda *args: torch.ops.brnnseg.bce_dice_loss(*args))
        return "cuda"
    return "cpu"


def _expect_step(c, backend, dev):
    assert c.syncs == []
    if backend == "triton":
        assert c.launches == ["_seg_loss_fwd_kernel", "_bce_dice_finish_kernel", "_seg_loss_bwd_kernel"]
    if dev == "cuda" or backend == "cpu":  # the op seen whole (its launches inside)
        assert c.work == ["bce_dice_loss.default", "ones_like.default", "bce_dice_loss_backward.default"]
    else:  # the seam: the launchers' own ATen calls are seen, and there are none but allocations
        assert c.work == ["ones_like.default"]  # the caller's own grad_output


@pytest.mark.parametrize("kw", [dict(pos_weight=10.0, boundary_weight=2.0), dict(reduction="none", batch=True),
                                dict(channels=[0, 2], log_dice=True), dict(include_background=False)],
                         ids=["pw-boundary", "none-batch", "channels", "nobg"])
def test_loss_step_costs_three_launches_and_no_sync(backend, kw, monkeypatch):
    """Issue 22: on the H200 the fused loss spent 1.8 ms per forward+backward in launches and host
    synchronisations. The CUDA path (the Triton launchers) is now two launches forward and one
    backward, with no other device work and nothing that makes the host wait; the CPU op is one
    op each way."""
    dev = _census_device(backend, monkeypatch)
    x = torch.randn(2, 3, 20, 33, device=dev, requires_grad=True)
    y = (torch.rand(2, 3, 20, 33, device=dev) > 0.5).float()
    c = _census_of_one_step(lambda x: bk.functional.bce_dice_loss(x, y, **kw), x)
    _expect_step(c, backend, dev)


def test_loss_module_step_with_tensor_pos_weight_has_no_sync(backend, monkeypatch):
    dev = _census_device(backend, monkeypatch)
    loss_fn = bk.losses.BCEDiceLoss(pos_weight=torch.tensor([1.0, 4.0]), boundary_weight=1.0).to(dev)
    x = torch.randn(3, 2, 9, 17, device=dev, requires_grad=True)
    y = (torch.rand(3, 2, 9, 17, device=dev) > 0.3).float()
    c = _census_of_one_step(lambda x: loss_fn(x, y), x)
    _expect_step(c, backend, dev)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_loss_step_does_not_synchronise_on_gpu():
    """The ground truth for the census above: CUDA's own sync detector, set to raise."""
    x = torch.randn(4, 2, 64, 96, device="cuda", requires_grad=True)
    y = (torch.rand(4, 2, 64, 96, device="cuda") > 0.5).float()
    loss_fn = bk.losses.BCEDiceLoss(pos_weight=torch.tensor([1.0, 3.0]), boundary_weight=2.0, channels=[1]).cuda()
    loss_fn(x, y).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_fn(x, y).backward()
        bk.functional.bce_dice_loss(x, y, pos_weight=10.0, reduction="none", batch=True).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_loss_is_bit_identical_run_to_run(backend):
    x, y = _rand((2, 3, 33, 47))
    runs = []
    for _ in range(3):
        xg = x.clone().requires_grad_()
        loss = bk.functional.bce_dice_loss(xg, y, boundary_weight=2.0, pos_weight=10.0)
        (g,) = torch.autograd.grad(loss, xg)
        runs.append((loss, g))
    for loss, g in runs[1:]:
        assert torch.equal(loss, runs[0][0]) and torch.equal(g, runs[0][1])


def test_loss_gradient_is_a_new_buffer():
    x, y = _rand((1, 1, 6, 6))
    x.requires_grad_()
    loss = bk.functional.bce_dice_loss(x, y)
    before = x.detach().clone()
    loss.backward()
    assert torch.equal(x.detach(), before) and x.grad.data_ptr() != x.data_ptr()


def test_loss_opcheck():
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(2, 3, 6, 5) > 0.5).float()
    w = torch.rand(2, 3, 6, 5, dtype=torch.float64)
    pw = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    torch.library.opcheck(torch.ops.brnnseg.seg_loss_sums, (x, y, w, pw, 2.0, 1, None, False))
    torch.library.opcheck(torch.ops.brnnseg.seg_loss_sums, (x, y.to(torch.uint8), None, pw, 0.0, 2, 1.0, True))
    g = torch.randn(2, 3, 5, dtype=torch.float64)
    torch.library.opcheck(torch.ops.brnnseg.seg_loss_sums_backward, (g, x.detach(), y, w, pw, 2.0, 1, None, False),
                          test_utils=("test_schema", "test_faketensor"))
    for reduction, batch, mask, dice_from in [("mean", False, None, 0), ("none", True, torch.tensor([0.0, 1.0, 1.0]), 0),
                                              ("sum", False, None, 1)]:
        args = (x, y, w, None if batch else pw, 3.0, mask, dice_from, 2.0, 1, None, False, 0.7, 1.3, 1e-5, 1e-5, batch,
                reduction == "sum", reduction)
        torch.library.opcheck(torch.ops.brnnseg.bce_dice_loss, args)
        loss, fac = torch.ops.brnnseg.bce_dice_loss(*args)
        grad = torch.randn_like(loss)
        torch.library.opcheck(torch.ops.brnnseg.bce_dice_loss_backward,
                              (grad, fac, x.detach(), y, w, None if batch else pw, 3.0, 2.0, 1, None, False, batch,
                               reduction), test_utils=("test_schema", "test_faketensor"))


BCE_FINISH_CASES = [(r, b, log, mask) for r in ("mean", "sum", "none") for b in (False, True)
                    for log, mask in ((False, None), (True, (0.0, 1.0, 2.0)))]


@pytest.mark.parametrize("reduction,batch,log_dice,mask", BCE_FINISH_CASES)
def test_cpu_op_matches_python_finish(reduction, batch, log_dice, mask):
    """The CPU op's finish and backward (C++, bce_finish) against their specification in Python
    (finish_from_sums, the Triton finish kernel's spec too) over the same sums: the loss, every factor,
    and the gradient through the sums' backward op. Channel 2 of sample 0 is empty, and dice_from /
    dice_mask leave channels out."""
    x = torch.randn(3, 3, 7, 6, dtype=torch.float64)
    y = (torch.rand(3, 3, 7, 6) > 0.6).double()
    y[0, 2] = 0
    w = torch.rand(3, 3, 7, 6, dtype=torch.float64)
    pw = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    dice_mask = None if mask is None else torch.tensor(mask, dtype=torch.float64)
    dice_from = 1 if mask is None else 0
    fin = (0.6, 1.7, 1e-5, 2e-5, batch, log_dice, reduction)
    loss, fac = torch.ops.brnnseg.bce_dice_loss(x, y, w, pw, 0.0, dice_mask, dice_from, 1.5, 1, None, True, *fin)
    sums = torch.ops.brnnseg.seg_loss_sums(x, y, w, pw, 1.5, 1, None, True)
    e_loss, e_fac = sl.finish_from_sums(sums, dice_mask, dice_from, *fin)
    torch.testing.assert_close(loss, e_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fac, e_fac, rtol=1e-12, atol=1e-14)
    go = torch.randn_like(loss)
    dx = torch.ops.brnnseg.bce_dice_loss_backward(go, fac, x, y, w, pw, 0.0, 1.5, 1, None, True, batch, reduction)
    ds = torch.zeros_like(sums, requires_grad=True)
    (g_sums,) = torch.autograd.grad(sl.finish_from_sums(sums + ds, dice_mask, dice_from, *fin)[0], ds, go)
    expect = torch.ops.brnnseg.seg_loss_sums_backward(g_sums, x, y, w, pw, 1.5, 1, None, True)
    torch.testing.assert_close(dx, expect, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("reduction,batch", [("mean", False), ("none", True), ("sum", False)])
def test_python_autograd_formula_matches_the_cpu_one(reduction, batch):
    """CPU tensors take the op's autograd in C++ (AutogradCPU); every other device the Python formula
    (_loss_setup_context / _loss_backward). The Python one, called directly on CPU tensors, gives the C++
    one's gradient; and both refuse double backward."""
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64, requires_grad=True)
    y = (torch.rand(2, 3, 7, 5) > 0.5).to(torch.uint8)
    args = (x, y, torch.rand(2, 3, 7, 5, dtype=torch.float64), None if batch else torch.rand(3, dtype=torch.float64),
            4.0, None, 0, 1.5, 1, None, True, 0.7, 1.3, 1e-5, 1e-5, batch, False, reduction)
    check_python_autograd_matches_cpu(torch.ops.brnnseg.bce_dice_loss, sl._loss_setup_context, sl._loss_backward,
                                      args, x)


def test_loss_torch_compile_fullgraph():
    loss_fn = bk.losses.BCEDiceLoss(pos_weight=10.0, boundary_weight=2.0)
    x, y = _rand((2, 1, 16, 16))
    x.requires_grad_()
    compiled = torch.compile(loss_fn, fullgraph=True)
    got = compiled(x, y)
    exp = loss_fn(x, y)
    assert_verbose_allclose(got, exp, rtol=1e-6, atol=1e-7)
    (g1,) = torch.autograd.grad(got, x)
    (g2,) = torch.autograd.grad(exp, x)
    assert_verbose_allclose(g1, g2, rtol=1e-6, atol=1e-7)


def test_single_purpose_losses_match_reference():
    x, y = _rand((2, 2, 9, 9))
    cases = [
        (bk.losses.WeightedBCEWithLogitsLoss(pos_weight=10.0), dict(pos_weight=10.0, dice_weight=0.0)),
        (bk.losses.DiceLoss(squared=True), dict(bce_weight=0.0, squared=True)),
        (bk.losses.BoundaryBCELoss(boundary_weight=2.0, boundary_radius=1), dict(boundary_weight=2.0, dice_weight=0.0)),
        (bk.losses.BCEDiceLoss(pos_weight=10.0, boundary_weight=2.0, boundary_radius=1, dice_weight=1.0,
                               smooth_nr=1e-5, smooth_dr=1e-5),
         dict(pos_weight=10.0, boundary_weight=2.0)),
    ]
    for mod, kw in cases:
        assert_verbose_allclose(mod(x, y).double(), reference.seg_loss(x.double(), y, **kw), rtol=2e-5, atol=2e-6)
    # Plain weighted BCE equals torch's own.
    pw = torch.full((2, 1, 1), 10.0)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(x, y, pos_weight=pw)
    assert_verbose_allclose(bk.losses.WeightedBCEWithLogitsLoss(pos_weight=10.0)(x, y), expected, rtol=1e-5)


def test_loss_reduced_precision_logits_cpu():
    x, y = _rand((1, 2, 8, 8))
    for dt in (torch.bfloat16, torch.float16):
        got = bk.functional.bce_dice_loss(x.to(dt), y, boundary_weight=1.0)
        assert got.dtype == dt
        exp = reference.seg_loss(x.to(dt).double(), y, boundary_weight=1.0)
        assert_verbose_allclose(got.double(), exp, rtol=1e-2, atol=1e-2)


def test_loss_bad_input():
    x, y = _rand((2, 2, 5, 5))
    f = bk.functional.bce_dice_loss
    with pytest.raises(ValueError, match="shape of logits"):
        f(x, y[:, :1])
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        f(x[0], y[0])
    with pytest.raises(TypeError, match="floating point"):
        f(x.long(), y)
    with pytest.raises(ValueError, match="reduction"):
        f(x, y, reduction="avg")
    with pytest.raises(ValueError, match="boundary_radius"):
        f(x, y, boundary_radius=-1)
    with pytest.raises(ValueError, match="pos_weight"):
        f(x, y, pos_weight=torch.ones(3))
    with pytest.raises(ValueError, match="channels"):
        f(x, y, channels=[5])
    with pytest.raises(ValueError, match="target is on"):
        f(x, y.to("meta"))
    with pytest.raises(ValueError, match="reduction"):
        bk.losses.BCEDiceLoss(reduction="avg")
    with pytest.raises(RuntimeError, match="target dtype"):
        torch.ops.brnnseg.seg_loss_sums(x, y.to(torch.complex64), None, torch.ones(2), 0.0, 1, None, False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_triton_sums_dtype_matches_fake(dtype):
    """The Triton launcher returns the dtype the op's fake kernel promises (float64 for float64 logits,
    accumulated in float64), so a CUDA float64 loss is float64 end to end."""
    x = torch.randn(2, 2, 9, 33).to(dtype).to(TRITON_DEVICE)
    y = (torch.rand(2, 2, 9, 33) > 0.5).float().to(TRITON_DEVICE)
    pw = torch.ones(2, device=TRITON_DEVICE)
    sums = triton_kernels.seg_loss_sums_triton(x, y, None, pw, 1.0, 1, None, False)
    assert sums.dtype == sl._sums_dtype(x)
    dx = triton_kernels.seg_loss_sums_backward_triton(torch.ones_like(sums), x, y, None, pw, 1.0, 1, None, False)
    assert dx.dtype == dtype


def test_triton_grid_fits_gpu_limits(backend):
    """One program per (slice, tile) on grid axis 0: a 3-D batch with N*C*D > 65535 slices launches
    (axis 1 would refuse it on a GPU; the interpreter would not notice), and a grid past 2^31-1 is a
    clear error."""
    assert triton_kernels.launch_grid(3, 70000) == (210000,)
    with pytest.raises(ValueError, match="split the batch"):
        triton_kernels.launch_grid(2**20, 2**12)
    # The same indexing at a size the interpreter runs: slice-major programs cover every pixel once.
    x, y = _rand((3, 2, 5, 4, 3))
    _check(backend, x, y, boundary_weight=1.0, boundary_radius=1)


def test_monai_names_are_primary_and_old_names_aliases():
    """lambda_ce / lambda_dice / batch (MONAI's) and bce_weight / dice_weight / batch_dice give the same loss;
    both spellings at once are refused."""
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    y = torch.rand(2, 3, 9, 7) > 0.6
    new = bk.losses.BCEDiceLoss(lambda_ce=0.3, lambda_dice=2.0, batch=True, boundary_weight=1.0)(x, y)
    old = bk.losses.BCEDiceLoss(bce_weight=0.3, dice_weight=2.0, batch_dice=True, boundary_weight=1.0)(x, y)
    torch.testing.assert_close(new, old)
    torch.testing.assert_close(bk.functional.bce_dice_loss(x, y, lambda_dice=0.5, batch=True),
                               reference.seg_loss(x, y, dice_weight=0.5, batch_dice=True))
    torch.testing.assert_close(bk.losses.DiceLoss(batch=True)(x, y), bk.losses.DiceLoss(batch_dice=True)(x, y))
    with pytest.raises(ValueError, match="lambda_dice or its alias dice_weight"):
        bk.losses.BCEDiceLoss(lambda_dice=1.0, dice_weight=1.0)
    with pytest.raises(ValueError, match="batch or its alias batch_dice"):
        bk.functional.bce_dice_loss(x, y, batch=True, batch_dice=True)
