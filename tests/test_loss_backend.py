"""Never slower than what users have, for the losses (issue 22): a CUDA call of bce_dice_loss / ce_dice_loss
takes the fused op or the unfused composition of plain tensor ops (brnnseg_kernels.losses.unfused), by the
loss rows of the measured table (tuning/sm90.json, tuning.loss_choice); the unfused path computes the fused
loss's value and gradient for every option; bk.explain says which path a loss took. The decision is a pure
function of (loss, shape, dtype, mode, arch); the paths run on CPU tensors under simulated_cuda()'s CUDA
rules (the decision only: no simulator extension needed)."""
import json
import math
import os

import pytest
import torch

import brnnseg_kernels as bk
import brnnseg_kernels.testing
from brnnseg_kernels import functional, reference, tuning
from brnnseg_kernels.losses import unfused

SM90 = os.path.join(os.path.dirname(tuning.__file__), "sm90.json")


@pytest.fixture(autouse=True)
def _auto(monkeypatch):
    monkeypatch.delenv("BRNNSEG_CUDA_LOSS", raising=False)


def _loss_rows():
    with open(SM90) as f:
        return json.load(f)["loss"]


def _with_rows(monkeypatch, rows):
    data = dict(tuning.table("sm_90"), loss=rows)
    monkeypatch.setattr(tuning, "_TABLES", {"sm_90": data})


def test_shipped_rows_are_the_h200s_and_send_cuda_calls_to_the_unfused_composition():
    """The H200 measured the fused path of revision 1 at 0.42-0.70x the composition on all six rows; the
    current revision is not measured yet, so the older measurement decides, and says so."""
    rows = _loss_rows()
    assert len(rows) == 6 and {r["revision"] for r in rows} == {1}
    assert all(r["fused_ms"]["fwd+bwd"] > r["unfused_ms"]["fwd+bwd"] for r in rows)
    for r in rows:
        for training in (True, False):
            side, why = tuning.loss_choice(r["loss"], r["shape"], r["dtype"], training)
            assert side == "unfused", why
            assert "measured on NVIDIA H200" in why and "not yet measured on a GPU" in why
    # sizes and dtypes not measured take the nearest row of the loss (float32's for other dtypes)
    assert tuning.loss_choice("ce_dice", (1, 3, 32, 32), "bfloat16", True)[0] == "unfused"


def _row(loss, shape, unfused_ms, fused_ms, revision, dtype="float32"):
    return dict(loss=loss, shape=list(shape), dtype=dtype, unfused_ms={"fwd+bwd": unfused_ms, "fwd": unfused_ms / 3},
                fused_ms={"fwd+bwd": fused_ms, "fwd": fused_ms / 3}, revision=revision)


def test_a_row_of_the_current_revision_decides_by_its_faster_side(monkeypatch):
    cur = tuning.LOSS_REVISION["bce_dice"]
    small, big = (8, 1, 64, 64), (8, 1, 1024, 1024)
    _with_rows(monkeypatch, [_row("bce_dice", small, 0.5, 0.1, cur), _row("bce_dice", big, 1.0, 2.0, cur),
                             _row("bce_dice", small, 0.1, 9.0, cur - 1), _row("ce_dice", small, 1.0, 2.0, 1)])
    side, why = tuning.loss_choice("bce_dice", (4, 1, 64, 64), "float32", True)
    assert side == "fused" and "not yet measured" not in why and "(5.00x)" in why  # the older row is ignored
    assert tuning.loss_choice("bce_dice", (8, 2, 1024, 1024), "float32", True)[0] == "unfused"  # nearest: big
    assert tuning.loss_choice("bce_dice", (8, 1, 64, 64), "float32", False)[1].count(" fwd:") == 1  # no_grad: fwd
    side, why = tuning.loss_choice("ce_dice", small, "float32", True)
    assert side == "unfused" and "not yet measured" in why
    # no row of the loss, or no table for the GPU: the fused op, as before
    _with_rows(monkeypatch, [_row("ce_dice", small, 1.0, 2.0, 1)])
    assert tuning.loss_choice("bce_dice", small, "float32", True) == (
        "fused", "no measured bce_dice row for sm_90: the fused op")
    assert tuning.loss_choice("ce_dice", small, "float32", True, "sm_100")[0] == "fused"


def test_environment_forces_a_side(monkeypatch):
    monkeypatch.setenv("BRNNSEG_CUDA_LOSS", "fused")
    assert tuning.loss_choice("bce_dice", (8, 1, 512, 512), "float32", True) == ("fused", "BRNNSEG_CUDA_LOSS=fused")
    monkeypatch.setenv("BRNNSEG_CUDA_LOSS", "unfused")
    assert tuning.loss_choice("bce_dice", (8, 1, 512, 512), "float32", True, "sm_100")[0] == "unfused"
    monkeypatch.setenv("BRNNSEG_CUDA_LOSS", "fastest")
    with pytest.raises(ValueError, match="BRNNSEG_CUDA_LOSS must be one of auto, fused, unfused"):
        tuning.loss_choice("bce_dice", (8, 1, 512, 512), "float32", True)


def _bce_call(x, y, w, kw):
    return functional.bce_dice_loss(x, y, w, **kw)


def _ce_call(x, t, w, kw):
    return functional.ce_dice_loss(x, t, w, **kw)


def _fused_and_unfused(call, x, y, w, kw, monkeypatch):
    """(loss, dlogits) of the fused CPU op and of the unfused path (a CUDA call under simulated_cuda()
    with BRNNSEG_CUDA_LOSS=unfused); the same upstream gradient for both."""
    out = []
    for side in ("fused", "unfused"):
        xi = x.detach().clone().requires_grad_()
        if side == "fused":
            loss = call(xi, y, w, kw)
        else:
            monkeypatch.setenv("BRNNSEG_CUDA_LOSS", "unfused")
            with bk.testing.simulated_cuda(), dispatch_record() as rec:
                loss = call(xi, y, w, kw)
            monkeypatch.delenv("BRNNSEG_CUDA_LOSS")
            assert [r["path"] for r in rec] == ["unfused"]
        g = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
        (gx,) = torch.autograd.grad(loss, xi, g)
        out.append((loss, gx))
    return out


def dispatch_record():
    from brnnseg_kernels.dispatch import recording

    return recording()


BCE_OPTIONS = [dict(), dict(pos_weight=10.0, boundary_weight=2.0), dict(boundary_weight=1.0, boundary_radius=2,
                                                                         reduction="sum"),
               dict(reduction="none", batch=True, squared=True), dict(channels=[0, 2], log_dice=True),
               dict(include_background=False, ignore_index=2.0, lambda_ce=0.3, lambda_dice=2.0),
               dict(pos_weight=torch.tensor([1.0, 4.0, 0.5]), smooth_nr=0.0, smooth_dr=0.0)]


@pytest.mark.parametrize("kw", BCE_OPTIONS, ids=lambda kw: ",".join(kw) or "defaults")
@pytest.mark.parametrize("dims", [2, 3])
def test_unfused_bce_dice_matches_the_fused_op(kw, dims, monkeypatch):
    torch.manual_seed(hash((tuple(kw), dims)) % 1000)
    shape = (2, 3, 11, 13) if dims == 2 else (2, 3, 5, 7, 6)
    x = torch.randn(shape) * 2
    y = (torch.rand(shape) > 0.6).float()
    if "ignore_index" in kw:
        y[torch.rand(shape) < 0.2] = 2.0
    w = torch.rand(shape) + 0.5 if "pos_weight" in kw else None
    (lf, gf), (lu, gu) = _fused_and_unfused(_bce_call, x, y, w, kw, monkeypatch)
    torch.testing.assert_close(lu, lf, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(gu, gf, rtol=2e-5, atol=2e-6)


CE_OPTIONS = [dict(), dict(boundary_weight=2.0, average="all"), dict(class_weights=[1.0, 2.0, 0.5, 1.0],
                                                                    label_smoothing=0.1, reduction="sum"),
              dict(ignore_index=3, include_background=False, batch=True, squared=True),
              dict(reduction="none", log_dice=True, lambda_ce=0.5, boundary_radius=2, boundary_weight=1.0)]


@pytest.mark.parametrize("kw", CE_OPTIONS, ids=lambda kw: ",".join(kw) or "defaults")
@pytest.mark.parametrize("target", ["labels", "soft"])
def test_unfused_ce_dice_matches_the_fused_op(kw, target, monkeypatch):
    if target == "soft" and "ignore_index" in kw:
        pytest.skip("ignore_index applies to label maps")
    torch.manual_seed(hash((tuple(kw), target)) % 1000)
    x = torch.randn(3, 4, 9, 14) * 2
    t = torch.randint(0, 4, (3, 9, 14))
    if target == "soft":
        t = torch.softmax(torch.randn(3, 4, 9, 14), 1)
    w = torch.rand(3, 9, 14) + 0.5
    (lf, gf), (lu, gu) = _fused_and_unfused(_ce_call, x, t, w, kw, monkeypatch)
    torch.testing.assert_close(lu, lf, rtol=2e-5, atol=2e-6)
    torch.testing.assert_close(gu, gf, rtol=2e-5, atol=2e-6)


def test_unfused_half_precision_logits_compute_in_float32_and_return_their_dtype(monkeypatch):
    x = torch.randn(2, 2, 8, 9).bfloat16()
    y = (torch.rand(2, 2, 8, 9) > 0.5).float()
    (lf, gf), (lu, gu) = _fused_and_unfused(_bce_call, x, y, None, dict(boundary_weight=1.0), monkeypatch)
    assert lu.dtype == gu.dtype == torch.bfloat16
    torch.testing.assert_close(lu, lf)
    torch.testing.assert_close(gu.float(), gf.float(), rtol=1e-2, atol=1e-4)


def test_unfused_ce_labels_out_of_range_give_nan_as_the_cuda_op_does(monkeypatch):
    """The fused CUDA op cannot raise without making every call wait for the GPU: a label outside [0, C)
    (not ignore_index) makes its loss NaN. The unfused path does the same, and never indexes out of
    bounds (no device-side assert)."""
    monkeypatch.setenv("BRNNSEG_CUDA_LOSS", "unfused")
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    t = torch.randint(0, 3, (2, 5, 6))
    t[1, 2, 3] = 7
    with bk.testing.simulated_cuda():
        assert math.isnan(functional.ce_dice_loss(x, t).item())
        t[1, 2, 3] = -100  # ignore_index: counts nowhere
        assert math.isfinite(functional.ce_dice_loss(x, t).item())


def test_auto_sends_simulated_cuda_calls_by_the_table_and_explain_says_so(monkeypatch):
    from brnnseg_kernels.bench.census import census
    from brnnseg_kernels.losses import _kernels

    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    y = (torch.rand(2, 1, 16, 16) > 0.5).float()
    with bk.testing.simulated_cuda():
        text = bk.explain(lambda: functional.bce_dice_loss(x, y, boundary_weight=2.0).backward())
        with census(_kernels) as c:
            functional.bce_dice_loss(x, y, boundary_weight=2.0).backward()
    assert text.startswith("loss bce_dice: cpu float32 (2, 1, 16, 16) -> the unfused composition"), text
    assert "unfused 1.19 ms, fused 1.83 ms" in text  # the nearest H200 row
    assert "bce_dice_loss.default" not in c.aten and c.syncs == []  # tensor ops, none of which waits
    monkeypatch.setenv("BRNNSEG_CUDA_LOSS", "fused")
    with bk.testing.simulated_cuda(), census(_kernels) as c:
        functional.bce_dice_loss(x, y, boundary_weight=2.0).backward()
    assert "bce_dice_loss.default" in c.aten
    # on the CPU itself the fused op runs whatever the table says (measured 3.4-8x faster there)
    assert bk.explain(lambda: bk.losses.CEDiceLoss()(x.expand(2, 3, 16, 16), torch.zeros(2, 16, 16, dtype=torch.long))
                      ) == "loss ce_dice: cpu float32 (2, 3, 16, 16) -> the fused loss op: cpu: the fused op"


def test_the_unfused_path_has_no_host_sync_for_the_usual_options():
    """What a CUDA call of the unfused path costs the host: tensor ops only, none that waits for the GPU
    (census: .item(), tensors from Python data), for both losses with the benchmark's options."""
    from brnnseg_kernels.bench.census import census

    x = torch.randn(2, 4, 12, 12, requires_grad=True)
    y = (torch.rand(2, 4, 12, 12) > 0.5).float()
    t = torch.randint(0, 4, (2, 12, 12))
    cw = torch.tensor([1.0, 2.0, 1.0, 0.5])
    for fn in (lambda: unfused.bce_dice_loss(x, y, None, 10.0, 2.0, 1, 1.0, 1.0, 1e-5, 1e-5, False, False, False,
                                             False, None, None, "mean"),
               lambda: unfused.ce_dice_loss(x, t, None, cw, -100, 0.0, 2.0, 1, 1.0, 1.0, 1e-5, 1e-5, False, False,
                                            False, True, "present", "mean")):
        with census() as c:
            fn().backward()
        assert c.syncs == [], c.syncs
        assert len(c.work) > 10  # it is the composition, many ops (what the fused op saves)


def test_unfused_ce_checks_labels_on_request(monkeypatch):
    monkeypatch.setenv("BRNNSEG_CUDA_LOSS", "unfused")
    monkeypatch.setenv("BRNNSEG_CHECK_LABELS", "1")
    t = torch.zeros(1, 4, 4, dtype=torch.long)
    t[0, 1, 2] = 5
    with bk.testing.simulated_cuda(), pytest.raises(ValueError, match="label 5, outside"):
        functional.ce_dice_loss(torch.randn(1, 3, 4, 4), t)


def test_tune_losses_only_writes_loss_rows_that_decide(tmp_path, monkeypatch):
    """``tune --losses-only``'s code path on CPU tensors under the CUDA rules (the figures mean nothing
    here): loss rows in the shipped format, of the current revision, which then decide."""
    from brnnseg_kernels.tuning import measure

    path = tmp_path / "t.json"
    with bk.testing.simulated_cuda():
        doc = measure.tune(str(path), device="cpu", shapes=[], step_hidden=(), repeat=1,
                           loss_shapes=[("bce_dice", (1, 2, 6, 7), "float32"), ("ce_dice", (1, 3, 6, 7), "float32")])
    assert doc["complete"] and doc["block"] == [] and len(doc["loss"]) == 2
    assert set(doc["loss"][0]) == set(_loss_rows()[0])
    monkeypatch.setattr(tuning, "_TABLES", {"sm_90": json.loads(path.read_text())})
    for r in doc["loss"]:
        side, why = tuning.loss_choice(r["loss"], r["shape"], "float32", True)
        assert side == ("fused" if r["fused_ms"]["fwd+bwd"] <= r["unfused_ms"]["fwd+bwd"] else "unfused")
        assert "not yet measured" not in why
