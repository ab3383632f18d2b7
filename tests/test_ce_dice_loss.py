"""The fused multi-class loss (brnnseg_kernels.losses.ce_dice, op brnnseg::ce_dice_sums): against the
plain-PyTorch reference (brnnseg_kernels.reference.ce_dice_loss), torch's cross_entropy and MONAI's
DiceCELoss; float64 gradcheck, opcheck, torch.compile; the Triton kernels (under TRITON_INTERPRET=1 on CPU
tensors without a GPU, compiled with one) against the C++ op; bad input gives clear errors."""
import os

import pytest
import torch
import torch.nn.functional as F

import brnnseg_kernels as bk
from brnnseg_kernels import reference
from brnnseg_kernels.losses import ce_dice as cd
from tests.utils import check_python_autograd_matches_cpu

triton_kernels = pytest.importorskip("brnnseg_kernels.losses.ce_dice_kernels")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TRITON_DEVICE = "cpu" if INTERPRETED else "cuda"


def _on(dev, *ts):
    return [t.to(dev) if isinstance(t, torch.Tensor) else t for t in ts]


class _TritonLoss(torch.autograd.Function):
    """The whole loss from the Triton launchers (the CUDA kernels of brnnseg::ce_dice_loss and its backward):
    on CPU tensors under the interpreter, else compiled on the GPU."""

    @staticmethod
    def forward(ctx, logits, target, weight, class_weights, *params):
        dev = logits.device
        loss, fac = triton_kernels.ce_dice_loss_triton(*_on(TRITON_DEVICE, logits, target, weight, class_weights),
                                                       *params)
        ctx.save_for_backward(logits, target, weight, class_weights, fac)
        ctx.params = params
        ctx.mark_non_differentiable(fac)
        ctx.set_materialize_grads(False)
        return loss.to(dev), fac.to(dev)

    @staticmethod
    def backward(ctx, g, _gf):
        if g is None:
            return (None,) * 18
        logits, target, weight, class_weights, fac = ctx.saved_tensors
        bw, r, ign, ls, sq, _lce, _ldice, _snr, _sdr, batch, _log, _bg, _avg, reduction = ctx.params
        dx = triton_kernels.ce_dice_loss_backward_triton(
            *_on(TRITON_DEVICE, g, fac, logits, target, weight, class_weights), bw, r, ign, ls, sq, batch, reduction)
        return (dx.to(logits.device),) + (None,) * 17


@pytest.fixture(autouse=True)
def _fused(monkeypatch):
    """These tests test the fused op: on a GPU, BRNNSEG_CUDA_LOSS=fused keeps CUDA calls on it where the
    shipped table would send them to the unfused composition (tests/test_loss_backend.py tests that choice)."""
    monkeypatch.setenv("BRNNSEG_CUDA_LOSS", "fused")


@pytest.fixture(params=["cpu", "triton"])
def backend(request, monkeypatch):
    if request.param == "triton":
        monkeypatch.setattr(cd, "_loss_op", _TritonLoss.apply)
    return request.param


def _labels(n, c, spatial, ignore=None, dtype=torch.int64):
    t = torch.randint(0, c, (n,) + tuple(spatial))
    if ignore is not None:
        t[torch.rand(t.shape) < 0.15] = ignore
    return t.to(dtype)


def _soft(n, c, spatial, dtype=torch.float64):
    return torch.softmax(3 * torch.randn((n, c) + tuple(spatial), dtype=torch.float64), 1).to(dtype)


OPTIONS = [
    dict(),
    dict(class_weights=[0.5, 2.0, 1.0, 0.25, 3.0], ignore_index=255, label_smoothing=0.1),
    dict(boundary_weight=2.0, boundary_radius=1, squared=True, include_background=False),
    dict(boundary_weight=1.5, boundary_radius=2, log_dice=True, batch=True, ignore_index=-1),
    dict(average="all", lambda_ce=0.3, lambda_dice=2.0, smooth_nr=0.0, smooth_dr=1e-3, reduction="sum"),
    dict(reduction="none", boundary_weight=1.0, class_weights=[1.0, 1.0, 2.0, 2.0, 0.5]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("spatial", [(37, 29), (1, 9), (4, 5, 6)], ids=["37x29", "1x9", "4x5x6"])
@pytest.mark.parametrize("opts", OPTIONS, ids=range(len(OPTIONS)))
def test_ce_dice_loss_matches_reference(backend, opts, spatial, dtype):
    n, c = 2, 5
    x = torch.randn((n, c) + spatial, dtype=dtype, requires_grad=True)
    t = _labels(n, c, spatial, ignore=opts.get("ignore_index"))
    weight = torch.rand((n,) + spatial, dtype=dtype) if opts.get("boundary_weight") else None
    got = bk.functional.ce_dice_loss(x, t, weight, **opts)
    xd = x.detach().double().requires_grad_()
    exp = reference.ce_dice_loss(xd, t, None if weight is None else weight.double(), **opts)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.double(), exp.double(), **tol)
    g = torch.randn_like(got)
    (gx,) = torch.autograd.grad(got, x, g)
    (ex,) = torch.autograd.grad(exp, xd, g.double())
    torch.testing.assert_close(gx.double(), ex, **tol)


@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)], ids=["2d", "3d"])
def test_soft_and_one_hot_targets(spatial):
    n, c = 3, 4
    x = torch.randn((n, c) + spatial, dtype=torch.float64, requires_grad=True)
    soft = _soft(n, c, spatial)
    opts = dict(label_smoothing=0.05, class_weights=[1.0, 2.0, 0.5, 1.0], boundary_weight=1.0, squared=True)
    got = bk.functional.ce_dice_loss(x, soft, **opts)
    exp = reference.ce_dice_loss(x, soft, **opts)
    torch.testing.assert_close(got, exp)
    torch.testing.assert_close(torch.autograd.grad(got, x)[0], torch.autograd.grad(exp, x)[0])
    # One-hot targets give what the integer labels give (no ignored pixels).
    lab = _labels(n, c, spatial)
    onehot = F.one_hot(lab, c).movedim(-1, 1).double()
    torch.testing.assert_close(bk.functional.ce_dice_loss(x, onehot), bk.functional.ce_dice_loss(x, lab))


@pytest.mark.parametrize("opts", [dict(), dict(weight=torch.tensor([0.2, 1.0, 3.0, 0.7])), dict(ignore_index=2),
                                  dict(label_smoothing=0.2, weight=torch.tensor([1.0, 0.5, 2.0, 1.0])),
                                  dict(ignore_index=-100, label_smoothing=0.1)], ids=range(5))
def test_cross_entropy_part_equals_torch(opts):
    """lambda_dice = 0: exactly torch.nn.functional.cross_entropy (its mean with class weights)."""
    x = torch.randn(3, 4, 11, 13, dtype=torch.float64)
    t = _labels(3, 4, (11, 13), ignore=-100 if opts.get("ignore_index") == -100 else None)
    cw = opts.get("weight")
    got = bk.functional.ce_dice_loss(x, t, class_weights=cw, ignore_index=opts.get("ignore_index", -100),
                                     label_smoothing=opts.get("label_smoothing", 0.0), lambda_dice=0.0)
    exp = F.cross_entropy(x, t, **{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in opts.items()})
    torch.testing.assert_close(got, exp)
    soft = _soft(3, 4, (11, 13))
    got = bk.functional.ce_dice_loss(x, soft, class_weights=cw, label_smoothing=opts.get("label_smoothing", 0.0),
                                     lambda_dice=0.0)
    exp = F.cross_entropy(x, soft, weight=None if cw is None else cw.double(),
                          label_smoothing=opts.get("label_smoothing", 0.0))
    torch.testing.assert_close(got, exp)


@pytest.mark.parametrize("opts", [dict(), dict(include_background=False), dict(batch=True, squared=True),
                                  dict(lambda_ce=0.5, lambda_dice=2.0, smooth_nr=0.0, smooth_dr=1e-4),
                                  dict(label_smoothing=0.1)], ids=range(5))
def test_matches_monai_dice_ce(opts):
    monai = pytest.importorskip("monai")
    x = torch.randn(2, 4, 16, 12, dtype=torch.float64)
    t = _labels(2, 4, (16, 12))
    t[1][t[1] == 3] = 1  # class 3 absent from sample 1
    squared = opts.pop("squared", False)
    ref = monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, squared_pred=squared, **opts)
    ours = bk.losses.CEDiceLoss(average="all", squared=squared, **opts)
    torch.testing.assert_close(ours(x, t), ref(x, t[:, None]))
    torch.testing.assert_close(ours(x, t[:, None]), ref(x, t[:, None]))  # MONAI's (N, 1, H, W) labels


def test_present_average_ignores_absent_classes():
    """average="present" (default): a class absent from a sample's target does not enter its Dice; "all"
    counts it (MONAI)."""
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    t = torch.zeros(1, 8, 8, dtype=torch.long)
    t[:, :4] = 1  # class 2 absent
    d_present = bk.functional.ce_dice_loss(x, t, lambda_ce=0.0)
    d_all = bk.functional.ce_dice_loss(x, t, lambda_ce=0.0, average="all")
    xd = x.clone().requires_grad_()
    ref_present = reference.ce_dice_loss(xd, t, lambda_ce=0.0)
    torch.testing.assert_close(d_present, ref_present)
    assert d_all > d_present


GRADCHECK_OPTIONS = [dict(class_weights=[1.0, 2.0, 0.5], label_smoothing=0.1, boundary_weight=1.5, squared=True),
                     dict(reduction="none", batch=True, log_dice=True), dict(reduction="none", average="all"),
                     dict(reduction="sum", include_background=False, smooth_nr=0.0, lambda_ce=0.4)]


@pytest.mark.parametrize("opts", GRADCHECK_OPTIONS, ids=range(len(GRADCHECK_OPTIONS)))
def test_gradcheck_float64(backend, opts):
    """The backward from the forward's factors (finish kernel / finish_from_sums) against finite
    differences, every reduction, batch Dice with reduction "none"."""
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    t = _labels(2, 3, (5, 4), ignore=-100)
    w = torch.rand(2, 5, 4, dtype=torch.float64)
    fast = backend == "triton"  # (the interpreter is slow)
    assert torch.autograd.gradcheck(lambda v: bk.functional.ce_dice_loss(v, t, w, **opts), (x,), fast_mode=fast)
    if opts.get("squared"):
        soft = _soft(2, 3, (5, 4))
        assert torch.autograd.gradcheck(lambda v: bk.functional.ce_dice_loss(v, soft, log_dice=True, batch=True),
                                        (x,), fast_mode=fast)
        x3 = torch.randn(1, 3, 3, 4, 2, dtype=torch.float64, requires_grad=True)
        t3 = _labels(1, 3, (3, 4, 2))
        assert torch.autograd.gradcheck(lambda v: bk.functional.ce_dice_loss(v, t3, boundary_weight=1.0), (x3,),
                                        fast_mode=fast)


@pytest.mark.parametrize("opts", [dict(boundary_weight=2.0, label_smoothing=0.1), dict(reduction="none", batch=True),
                                  dict(average="all", include_background=False, log_dice=True)],
                         ids=["boundary-ls", "none-batch", "all-nobg"])
def test_loss_step_costs_three_launches_and_no_sync(backend, opts, monkeypatch):
    """Issue 22: on the H200 the fused CE + Dice ran 0.42-0.50x the unfused composition, its time in
    launches and host synchronisations (a label check and a parameter tensor copied to the device, both
    ways). The CUDA path is now two launches forward and one backward, nothing else, nothing that waits."""
    from brnnseg_kernels.bench.census import census

    # As on a GPU: the labels are not checked on the host (on CPU tensors the launcher would).
    monkeypatch.setattr(triton_kernels, "host_checks_labels", lambda device: False)
    dev = "cpu"
    if backend == "triton" and not INTERPRETED:  # the real CUDA op on CUDA tensors (the seam's copies would count)
        monkeypatch.setattr(cd, "_loss_op", lambda *args: torch.ops.brnnseg.ce_dice_loss(*args))
        dev = "cuda"
    x = torch.randn(2, 5, 12, 21, device=dev, requires_grad=True)
    t = _labels(2, 5, (12, 21), ignore=-100).to(dev)
    loss_fn = bk.losses.CEDiceLoss(class_weights=torch.rand(5), **opts).to(dev)
    loss_fn(x, t).sum().backward()
    x.grad = None
    with census(triton_kernels) as c:
        loss = loss_fn(x, t)
        loss.backward(torch.ones_like(loss))
    assert c.syncs == []
    if backend == "triton":
        assert c.launches == ["_ce_dice_fwd_kernel", "_ce_dice_finish_kernel", "_ce_dice_bwd_kernel"]
    if backend == "cpu" or dev == "cuda":
        assert c.work == ["ce_dice_loss.default", "ones_like.default", "ce_dice_loss_backward.default"]
    else:
        assert c.work == ["ones_like.default"]


def test_labels_are_checked_on_the_host_only_where_it_does_not_wait(monkeypatch):
    monkeypatch.delenv("BRNNSEG_CHECK_LABELS", raising=False)
    assert triton_kernels.host_checks_labels(torch.device("cpu"))
    assert not triton_kernels.host_checks_labels(torch.device("cuda", 0))
    monkeypatch.setenv("BRNNSEG_CHECK_LABELS", "1")
    assert triton_kernels.host_checks_labels(torch.device("cuda", 0))


def test_bad_labels_without_the_host_check_make_the_loss_nan(monkeypatch):
    """Where the launcher does not check the labels (CUDA, without BRNNSEG_CHECK_LABELS=1) a label
    outside [0, C) is counted by the kernel, never read through, and the loss is NaN, not garbage."""
    monkeypatch.setattr(triton_kernels, "host_checks_labels", lambda device: False)
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    t = _labels(2, 3, (4, 5))
    t[1, 2, 3] = 7
    for reduction in ("mean", "none"):
        loss = _TritonLoss.apply(x, t, None, None, 0.0, 1, -100, 0.0, False, 1.0, 1.0, 1e-5, 1e-5, False, False, True,
                                 "present", reduction)[0]
        assert torch.isnan(loss).all()
        (gx,) = torch.autograd.grad(loss.sum(), x)
        assert torch.isnan(gx).any()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_loss_step_does_not_synchronise_on_gpu():
    """The ground truth for the census above: CUDA's own sync detector, set to raise."""
    x = torch.randn(2, 5, 64, 96, device="cuda", requires_grad=True)
    t = torch.randint(0, 5, (2, 64, 96), device="cuda")
    loss_fn = bk.losses.CEDiceLoss(class_weights=torch.rand(5), boundary_weight=2.0, label_smoothing=0.1).cuda()
    loss_fn(x, t).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss_fn(x, t).backward()
        bk.functional.ce_dice_loss(x, t, reduction="none", batch=True).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("reduction,batch", [("mean", False), ("none", True), ("sum", False)])
def test_python_autograd_formula_matches_the_cpu_one(reduction, batch):
    """CPU tensors take the op's autograd in C++ (AutogradCPU); every other device the Python formula
    (_loss_setup_context / _loss_backward). The Python one, called directly on CPU tensors, gives the C++
    one's gradient; and both refuse double backward."""
    x = torch.randn(2, 4, 7, 5, dtype=torch.float64, requires_grad=True)
    t = _labels(2, 4, (7, 5), ignore=-100)
    args = (x, t, torch.rand(2, 7, 5, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5, 1.5, 1, -100,
            0.1, True, 0.7, 1.3, 1e-5, 1e-5, batch, False, True, "all", reduction)
    check_python_autograd_matches_cpu(torch.ops.brnnseg.ce_dice_loss, cd._loss_setup_context, cd._loss_backward,
                                      args, x)


def test_opcheck():
    x = torch.randn(2, 4, 6, 5)
    t = _labels(2, 4, (6, 5), ignore=-100)
    cw = torch.rand(4)
    for args in [(x, t, None, None, 0.0, 1, -100, 0.0, False), (x, t, torch.rand(2, 6, 5), cw, 2.0, 1, -100, 0.1, True),
                 (x.double(), _soft(2, 4, (6, 5)), None, cw.double(), 1.0, 2, None, 0.05, False)]:
        torch.library.opcheck(torch.ops.brnnseg.ce_dice_sums.default, args)
    for reduction, batch, avg in [("mean", False, "present"), ("none", True, "all"), ("sum", False, "all")]:
        args = (x, t, torch.rand(2, 6, 5), cw, 2.0, 1, -100, 0.1, True, 0.7, 1.3, 1e-5, 1e-5, batch,
                reduction == "sum", reduction != "sum", avg, reduction)
        torch.library.opcheck(torch.ops.brnnseg.ce_dice_loss.default, args)
        loss, fac = torch.ops.brnnseg.ce_dice_loss(*args)
        torch.library.opcheck(torch.ops.brnnseg.ce_dice_loss_backward.default,
                              (torch.randn_like(loss), fac, x, t, args[2], cw, 2.0, 1, -100, 0.1, True, batch,
                               reduction), test_utils=("test_schema", "test_faketensor"))


FINISH_CASES = [(r, b, avg, log, bg) for r in ("mean", "sum", "none") for b in (False, True)
                for avg, log, bg in (("present", False, True), ("all", True, False))]


@pytest.mark.parametrize("reduction,batch,average,log_dice,include_background", FINISH_CASES)
def test_cpu_op_matches_python_finish(reduction, batch, average, log_dice, include_background):
    """The CPU op's finish and backward (C++, ce_finish) against their specification in Python
    (finish_from_sums, the spec of the Triton finish kernel too) over the same sums: the loss, every factor,
    and the gradient from the sums' backward op. A class is absent from sample 0, so "present" selects."""
    n, c = 3, 4
    x = torch.randn(n, c, 7, 6, dtype=torch.float64)
    t = _labels(n, c, (7, 6), ignore=-100)
    t[0][t[0] == 2] = 1
    w, cw = torch.rand(n, 7, 6, dtype=torch.float64), torch.rand(c, dtype=torch.float64) + 0.5
    sums_args = (w, cw, 1.5, 1, -100, 0.1, True)
    fin = (0.6, 1.7, 1e-5, 2e-5, batch, log_dice, include_background, average, reduction)
    loss, fac = torch.ops.brnnseg.ce_dice_loss(x, t, *sums_args, *fin)
    dice_sums, ce_sums = torch.ops.brnnseg.ce_dice_sums(x, t, *sums_args)
    e_loss, e_fac = cd.finish_from_sums(dice_sums, ce_sums, *fin)
    torch.testing.assert_close(loss, e_loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(fac, e_fac, rtol=1e-12, atol=1e-14)
    go = torch.randn_like(loss)
    dx = torch.ops.brnnseg.ce_dice_loss_backward(go, fac, x, t, *sums_args, batch, reduction)
    ds = torch.zeros(n, c, 3, dtype=torch.float64, requires_grad=True)
    cs = torch.zeros(n, 2, dtype=torch.float64, requires_grad=True)
    g_dice, g_ce = torch.autograd.grad(cd.finish_from_sums(dice_sums + ds, ce_sums + cs, *fin)[0], (ds, cs), go)
    torch.testing.assert_close(dx, torch.ops.brnnseg.ce_dice_sums_backward(g_dice, g_ce, x, t, *sums_args),
                               rtol=1e-12, atol=1e-14)


def test_integer_target_dtypes_and_reduced_precision_logits():
    x = torch.randn(2, 4, 7, 9)
    t = _labels(2, 4, (7, 9))
    base = bk.functional.ce_dice_loss(x, t, boundary_weight=1.0)
    for dt in (torch.uint8, torch.int8, torch.int16, torch.int32):
        torch.testing.assert_close(bk.functional.ce_dice_loss(x, t.to(dt), boundary_weight=1.0), base)
    for dt in (torch.float16, torch.bfloat16):
        xl = x.to(dt).requires_grad_()
        out = bk.functional.ce_dice_loss(xl, t, boundary_weight=1.0)
        assert out.dtype == dt
        out.backward()
        assert xl.grad.dtype == dt
        torch.testing.assert_close(out.float(), reference.ce_dice_loss(xl.detach().float(), t, boundary_weight=1.0),
                                   rtol=2e-2, atol=2e-2)


def test_non_contiguous_and_channels_last_logits():
    x = torch.randn(2, 5, 9, 8, dtype=torch.float64)
    t = _labels(2, 5, (9, 8))
    base = bk.functional.ce_dice_loss(x, t, boundary_weight=1.0)
    torch.testing.assert_close(bk.functional.ce_dice_loss(x.to(memory_format=torch.channels_last), t,
                                                          boundary_weight=1.0), base)
    wide = torch.randn(2, 5, 9, 16, dtype=torch.float64)[..., ::2]
    torch.testing.assert_close(bk.functional.ce_dice_loss(wide, t), reference.ce_dice_loss(wide, t))
    torch.testing.assert_close(bk.functional.ce_dice_loss(x, t.transpose(1, 2).contiguous().transpose(1, 2)),
                               bk.functional.ce_dice_loss(x, t))


def test_bad_input_errors():
    x = torch.randn(2, 3, 4, 5)
    t = _labels(2, 3, (4, 5))
    t_bad = t.clone()
    t_bad[1, 2, 3] = 7
    with pytest.raises(ValueError, match="label 7, outside \\[0, 3\\)"):
        bk.functional.ce_dice_loss(x, t_bad)
    t_bad[1, 2, 3] = -5
    with pytest.raises(ValueError, match="label -5"):
        bk.functional.ce_dice_loss(x, t_bad, ignore_index=255)
    with pytest.raises(ValueError, match="target labels must have shape"):
        bk.functional.ce_dice_loss(x, t[:, :3])
    with pytest.raises(ValueError, match="must hold integer labels"):
        bk.functional.ce_dice_loss(x, t.float())
    with pytest.raises(ValueError, match="one-hot or soft"):
        bk.functional.ce_dice_loss(x, torch.zeros(2, 3, 4, 5, dtype=torch.long) + 5)
    with pytest.raises(ValueError, match="class_weights must have shape"):
        bk.functional.ce_dice_loss(x, t, class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match="weight must have shape"):
        bk.functional.ce_dice_loss(x, t, torch.ones(2, 3, 4, 5))
    with pytest.raises(ValueError, match="label_smoothing"):
        bk.functional.ce_dice_loss(x, t, label_smoothing=1.5)
    with pytest.raises(ValueError, match="logits must be"):
        bk.functional.ce_dice_loss(x[0], t)
    with pytest.raises(ValueError, match="average"):
        bk.losses.CEDiceLoss(average="mean")
    with pytest.raises(ValueError, match="label 9"):  # the op itself checks (direct calls never read out of bounds)
        torch.ops.brnnseg.ce_dice_sums(x, t_bad.clamp(0, 9) + 9 * (t_bad < 0), None, None, 0.0, 1, None, 0.0, False)


def test_all_ignored_and_empty_batch_are_finite():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = torch.full((2, 4, 4), -100, dtype=torch.long)
    out = bk.functional.ce_dice_loss(x, t)
    assert torch.isfinite(out) and out.item() == 0.0
    out.backward()
    assert torch.all(x.grad == 0)
    e = torch.randn(0, 3, 4, 4, requires_grad=True)
    assert torch.isfinite(bk.functional.ce_dice_loss(e, torch.zeros(0, 4, 4, dtype=torch.long)))


def test_module_aliases_and_state():
    loss = bk.losses.CEDiceLoss(weight=[1.0, 2.0, 3.0], ce_weight=0.5, dice_weight=2.0, batch=True)
    assert loss.kwargs["lambda_ce"] == 0.5 and loss.kwargs["lambda_dice"] == 2.0
    assert "class_weights" in loss.state_dict()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    t = _labels(2, 3, (6, 6))
    torch.testing.assert_close(loss(x, t), reference.ce_dice_loss(x, t, class_weights=[1.0, 2.0, 3.0], lambda_ce=0.5,
                                                                   lambda_dice=2.0, batch=True))


def test_compile_fullgraph():
    loss = bk.losses.CEDiceLoss(boundary_weight=1.0, label_smoothing=0.1)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    t = _labels(2, 4, (8, 8))
    eager = loss(x, t)
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    out = compiled(x, t)
    torch.testing.assert_close(out, eager)
    (g1,) = torch.autograd.grad(eager, x)
    (g2,) = torch.autograd.grad(compiled(x, t), x)
    torch.testing.assert_close(g1, g2)


# ---- the Triton kernels (CUDA implementation) against the C++ op --------------------------------------

TRITON_CASES = [(True, (2, 5, 9, 7), dict(boundary_weight=1.5, boundary_radius=1, ignore=-100, ls=0.1, sq=True)),
                (True, (1, 3, 4, 5, 6), dict(boundary_weight=2.0, boundary_radius=1, ignore=None, ls=0.0, sq=False)),
                (True, (2, 19, 6, 33), dict(boundary_weight=1.0, boundary_radius=2, ignore=255, ls=0.0, sq=False)),
                (False, (2, 4, 9, 7), dict(boundary_weight=1.0, boundary_radius=1, ignore=None, ls=0.2, sq=True)),
                (False, (1, 2, 3, 4, 5), dict(boundary_weight=0.0, boundary_radius=1, ignore=None, ls=0.0, sq=False))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("index,shape,o", TRITON_CASES, ids=range(len(TRITON_CASES)))
def test_triton_kernels_match_cpu_op(index, shape, o, dtype):
    n, c = shape[:2]
    x = torch.randn(*shape, dtype=dtype)
    t = _labels(n, c, shape[2:], ignore=o["ignore"]) if index else _soft(n, c, shape[2:], dtype)
    w = torch.rand((n,) + shape[2:], dtype=dtype)
    cw = torch.rand(c, dtype=dtype)
    args = (w, cw, o["boundary_weight"], o["boundary_radius"], o["ignore"] if index else None, o["ls"], o["sq"])
    exp = torch.ops.brnnseg.ce_dice_sums(x, t, *args)
    dev = lambda v: v.to(TRITON_DEVICE) if isinstance(v, torch.Tensor) else v  # noqa: E731
    got = triton_kernels.ce_dice_sums_triton(dev(x), dev(t), *[dev(a) for a in args])
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for g_, e_ in zip(got, exp):
        torch.testing.assert_close(g_.cpu(), e_, **tol)
    gd, gc = torch.randn_like(exp[0]), torch.randn_like(exp[1])
    dexp = torch.ops.brnnseg.ce_dice_sums_backward(gd, gc, x, t, *args)
    dgot = triton_kernels.ce_dice_sums_backward_triton(dev(gd), dev(gc), dev(x), dev(t), *[dev(a) for a in args])
    torch.testing.assert_close(dgot.cpu(), dexp, **tol)


def test_triton_refuses_bad_labels():
    x = torch.randn(1, 3, 4, 4)
    t = torch.full((1, 4, 4), 3, dtype=torch.long)
    with pytest.raises(ValueError, match="label 3, outside"):
        triton_kernels.ce_dice_sums_triton(x.to(TRITON_DEVICE), t.to(TRITON_DEVICE), None, None, 0.0, 1, -100, 0.0,
                                           False)


@pytest.mark.parametrize("bw", [0.0, 2.0])
def test_benchmark_baselines_compute_the_fused_loss(bw):
    """`bench --op seg_loss` races CEDiceLoss(average="all") against reference.unfused_ce_dice and the
    composition with MONAI's DiceLoss: all three are the same loss, value and gradient."""
    monai = pytest.importorskip("monai")  # noqa: F841
    x = torch.randn(3, 5, 17, 13, dtype=torch.float64, requires_grad=True)
    t = _labels(3, 5, (17, 13))
    ours = bk.losses.CEDiceLoss(boundary_weight=bw, boundary_radius=1, average="all")(x, t)
    g_ours, = torch.autograd.grad(ours, x)
    for ref_fn in (reference.unfused_ce_dice, reference.unfused_ce_monai_dice):
        ref = ref_fn(x, t, boundary_weight=bw)
        g_ref, = torch.autograd.grad(ref, x)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(g_ours, g_ref)
