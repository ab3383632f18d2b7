"""The loss benchmark (`bench --op seg_loss`): each row carries, beside the times, the device work of one
forward+backward (launches) and its host synchronisations, from brnnseg_kernels/bench/census.py: what
explains a fused loss that is slower than its arithmetic (issue 22)."""
import pytest
import torch

from brnnseg_kernels.bench import census as census_mod
from brnnseg_kernels.bench import reporting, workloads


def test_loss_rows_count_launches_and_syncs(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setitem(workloads.LOSS_SHAPES, "cpu", [(2, 1, 12, 10)])
    monkeypatch.setitem(workloads.LOSS_MC_SHAPES, "cpu", [(2, 3, 9, 8)])
    rows = workloads.run_loss("cpu", repeat=1, memory=False)
    by = {(r.shape, r.provider): r for r in rows}
    fused, unfused = by[("2x1x12x10", "brnnseg")], by[("2x1x12x10", "torch")]
    # on CPU tensors our op is one op each way (not counted) + the caller's grad_output; the unfused
    # composition is dozens of ops
    assert fused.launches == 1 and fused.syncs == 0
    assert unfused.launches >= 20
    ce = by[("ce:2x3x9x8", "brnnseg")]
    assert ce.launches == 1 and ce.syncs == 0
    text = reporting.report_loss(rows)
    assert "launches t/o" in text and f"{unfused.launches}/1" in text


def test_census_sees_a_sync_and_a_host_copy():
    """The census flags what waits on a GPU: .item() and a tensor made from Python data."""
    x = torch.randn(4)
    with census_mod.census() as c:
        float(x.sum())
        torch.tensor([1.0, 2.0]) + x[:2]
    assert c.syncs == ["_local_scalar_dense.default", "lift_fresh.default"]
    assert "sum.default" in c.work and "add.Tensor" in c.work
