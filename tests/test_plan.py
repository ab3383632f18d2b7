"""`python -m brnnseg_kernels plan`: the C++ launch planner exported to Python, the latency model's
arithmetic, and the GPU self-check's behaviour on a machine without a GPU."""
import os
import subprocess
import sys

import pytest
import torch

from brnnseg_kernels import bench, plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


@pytest.mark.parametrize("gpu,cell,dtype,hid,where", [
    ("h100", "gru", "float32", 64, "smem"), ("h100", "gru", "float32", 128, "smem"),
    ("h100", "lstm", "float32", 128, "split 3/4"), ("h100", "lstm", "bfloat16", 128, "smem"),
    ("h100", "gru", "float32", 256, "L2"), ("h100", "gru", "bfloat16", 256, "split 1/3"),
    ("a100", "gru", "float32", 128, "split 2/3"), ("a100", "lstm", "float32", 64, "smem")])
def test_launch_plan_places_w_hh(gpu, cell, dtype, hid, where):
    """The FP32-core kernels (BRNNSEG_CUDA_RECURRENCE=fma): where W_hh lives."""
    lp = plan.launch_plan(cell, dtype, hid, 1000, False, gpu, recurrence="fma")
    assert lp.weights == where and not lp.mma
    assert lp.smem_bytes <= plan.gpu_spec(gpu)["smem_per_block_optin"]
    assert lp.threads == 256 and lp.tile == {64: 16, 128: 8, 256: 4}[hid] and lp.ctas == -(-1000 // lp.tile)


@pytest.mark.parametrize("cell,dtype,hid,tf32,kt,threads,mma", [
    ("gru", "bfloat16", 128, False, 8, 384, True), ("lstm", "float16", 100, False, 8, 352, True),
    ("gru", "bfloat16", 40, False, 4, 384, True), ("gru", "float32", 64, False, 0, 256, False),
    ("gru", "float32", 64, True, 4, 384, True), ("gru", "float32", 128, True, 0, 256, False),
    ("lstm", "bfloat16", 256, False, 0, 256, False)])
def test_launch_plan_picks_the_recurrence(cell, dtype, hid, tf32, kt, threads, mma):
    """auto: tensor cores for half precision up to hidden 128, for float32 only with TF32 allowed and up
    to hidden 64 (W_hh's TF32 fragments fill the registers); FP32 cores otherwise. 16 lines a CTA."""
    lp = plan.launch_plan(cell, dtype, hid, 1000, False, "h100", tf32=tf32)
    assert (lp.mma, lp.kt, lp.threads) == (mma, kt, threads)
    if mma:
        assert lp.tile == 16 and lp.ctas == -(-1000 // 16) and lp.weights == "regs"
        assert lp.smem_bytes <= plan.gpu_spec("h100")["smem_per_block_optin"]
        assert 4 * lp.nt * lp.kpw <= 96  # B fragments: at most 96 registers a thread
    with pytest.raises(ValueError, match="must be 'auto', 'fma', 'mma' or 'tf32x3'"):
        plan.launch_plan(cell, dtype, hid, 1000, False, "h100", recurrence="tensor")


def test_launch_plan_rejects_bad_arguments():
    with pytest.raises(ValueError, match="cell must be"):
        torch.ops.brnnseg.sweep_launch_plan("rnn", torch.float32, 8, 8, False, "h100")
    with pytest.raises(ValueError, match="unknown GPU"):
        torch.ops.brnnseg.sweep_launch_plan("gru", torch.float32, 8, 8, False, "v100")
    with pytest.raises(ValueError, match="dtype must be"):
        torch.ops.brnnseg.sweep_launch_plan("gru", torch.float64, 8, 8, False, "h100")
    with pytest.raises(ValueError, match="exceeds 512"):
        torch.ops.brnnseg.sweep_launch_plan("gru", torch.float32, 600, 8, False, "h100")


def test_latency_model_arithmetic():
    """hidden 128 float32 GRU forward on an H100: 8 warps x 128 k x (3 weight + 4 h_prev wavefronts) =
    7168 cycles of shared memory (> 3072 of FMA issue); one CTA per SM, plus 700 fixed cycles, at 1.755 GHz."""
    lp = plan.Launch("gru", "float32", "fwd", 128, threads=256, tile=8, ctas=1, smem_gates=3, smem_bytes=204800)
    e = plan.estimate(lp, "h100")
    assert e.bound == "smem" and e.total_ctas == 2 and e.ctas_per_sm == 1 and e.waves == 1
    assert e.us_per_step == pytest.approx((7168 + 700) / 1755)
    # 400 CTAs on 132 SMs, one per SM (204800 B of shared memory each): 4 waves of the same step time.
    e = plan.estimate(plan.Launch("gru", "float32", "fwd", 128, 256, 8, 200, 3, 204800), "h100")
    assert e.waves == 4 and e.us_per_step == pytest.approx((7168 + 700) / 1755)
    # Weights through L2 (hidden 256 float32): 8 warps x 256 k x 3 gates x 128 B / 24 B per cycle.
    e = plan.estimate(plan.Launch("gru", "float32", "fwd", 256, 256, 4, 1, 0, 8192), "h100")
    assert e.bound == "L2" and e.us_per_step == pytest.approx((8 * 256 * 3 * 128 / 24 + 700) / 1755)


def test_plan_cli_prints_every_shape():
    out = subprocess.run([sys.executable, "-m", "brnnseg_kernels", "plan", "--gpu", "h100"], env=ENV,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    for name in bench.GPU_SHAPES:
        rows = [l for l in lines if l.startswith(name + " ")]
        assert len(rows) == 2 * 2 * 2, (name, rows)  # cells x dtypes x passes
    assert "launch plan on h100 (sm_90, 132 SMs)" in lines[0]
    a100 = subprocess.run([sys.executable, "-m", "brnnseg_kernels", "plan", "--gpu", "a100", "--shapes", "lanes-128",
                           "--cells", "gru", "--dtype", "float32"], env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert a100.returncode == 0 and "split 2/3" in a100.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")
def test_gpu_selfcheck_without_gpu_exits_2_with_one_line(tmp_path):
    out = subprocess.run([sys.executable, os.path.join(ROOT, "python", "gpu_selfcheck.py"), "--out", str(tmp_path)],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert len((out.stdout + out.stderr).strip().splitlines()) == 1 and "no GPU" in out.stdout
    assert not any(tmp_path.iterdir())


def test_latency_model_of_the_tensor_core_kernel():
    """hidden 128 bfloat16 GRU forward, 16 lines, one CTA per SM (64 CTAs x 2 directions <= 132 SMs):
    product = max(2 x 8 dependent mma.sync x 33 + 1 x 2 x 8 interleave + 2 x 30 smem,
                  24 x 8 tiles x 2 instructions x 1.5 cycles) = max(604, 576) cycles;
    gates = max(16 x 128 pairs x 70 instructions / 128 per cycle, 16 x 128 x 5 MUFU / 16) + 30 = 1150;
    + 2 barriers x 40, at 1.755 GHz."""
    lp = plan.Launch("gru", "bfloat16", "fwd", 128, threads=384, tile=16, ctas=64, smem_gates=3, smem_bytes=65024,
                     mma=True, kt=8, nt=2, kpw=8, ksplit=1)
    e = plan.estimate(lp, "h100", registers=140)
    assert e.ctas_per_sm == 1 and e.waves == 1 and e.bound == "gates"
    assert e.us_per_step == pytest.approx((604 + 1150 + 80) / 1755)
    # Backward at hidden 64 (kt 4): 4 x 12 tiles (K split 3 ways), gate math waits on L2.
    lp = plan.Launch("gru", "bfloat16", "bwd", 64, 384, 16, 64, 3, 23552, True, 4, 1, 4, 3)
    e = plan.estimate(lp, "h100", registers=90)
    product = max(2 * 4 * 33 + 2 * 30, 4 * 12 * 2 * 1.5)
    gates = 16 * 64 * 100 / 128 + 270
    assert e.us_per_step == pytest.approx((product + gates + 80) / 1755)


H200_RUN = os.path.join(ROOT, "benchmarks", "results", "2026-12-04-h200", "us_per_step.json")


def _h200_rows():
    import json

    with open(H200_RUN) as f:
        return json.load(f)


def test_calibrated_model_is_within_25_percent_of_every_measured_row():
    """Issue 22: the calibrated model against all 52 rows the H200 measured (time per step of one
    launch, both directions, 512 lines; waves included). The launches are today's planner's: it must
    still plan what the H200 ran (the W_hh placement of each row)."""
    rows = _h200_rows()
    assert len(rows) == 52
    for r in rows:
        lp = plan.measured_launch(r)
        assert lp.weights == r["weights"], (r["cell"], r["dtype"], r["hidden"], r["kernel"], lp.weights)
        e = plan.estimate_calibrated(lp, "h200")
        model = e.us_per_step * e.waves
        assert abs(model / r["us_per_step"] - 1) <= 0.25, (r["cell"], r["dtype"], r["hidden"], r["kernel"],
                                                           r["recurrence"], r["us_per_step"], model)
        assert sum(e.cycles.values()) == pytest.approx(e.us_per_step * plan.CLOCK_GHZ["h200"] * 1e3)


def test_shipped_calibration_is_the_fit_of_the_measurements():
    """CALIBRATION["sm_90"] is what fit_calibration() finds on the H200 rows (rounded), not hand-set:
    both predict every row within 1 % of each other."""
    pytest.importorskip("scipy")
    rows = _h200_rows()
    fitted = plan.fit_calibration(rows)
    for r in rows:
        lp = plan.measured_launch(r)
        a = plan.estimate_calibrated(lp, "h200").us_per_step
        b = plan.estimate_calibrated(lp, "h200", calibration=fitted).us_per_step
        assert a == pytest.approx(b, rel=0.01), (r["cell"], r["dtype"], r["hidden"], r["kernel"], a, b)


def test_calibrated_model_budget_terms():
    """The step budget's arithmetic, by hand: float32 GRU forward at hidden 64 on the FP32 cores (one CTA
    of 8 warps per SM: 2 warps per scheduler, dependent-issue bound) and bfloat16 LSTM backward at hidden
    128 on tensor cores (16 x 128 pairs over 384 threads: 6 passes)."""
    cal = plan.CALIBRATION["sm_90"]
    lp = plan.Launch("gru", "float32", "fwd", 64, threads=256, tile=16, ctas=32, smem_gates=3, smem_bytes=57344)
    e = plan.estimate_calibrated(lp, "h200")
    assert e.waves == 1 and e.cycles["W_hh via L2"] == 0
    assert e.cycles["loop issue"] == pytest.approx(64 * 62 * max(2 * cal.issue_cpi, cal.dep_cpi))
    assert e.us_per_step == pytest.approx((cal.fma_fixed_fwd + 64 * 62 * cal.dep_cpi) / 1755)
    lp = plan.Launch("lstm", "bfloat16", "bwd", 128, 384, 16, 32, 4, 67200, True, 8, 3, 8, 4)
    e = plan.estimate_calibrated(lp, "h200")
    assert e.cycles["gate passes"] == pytest.approx(6 * cal.mma_pass_bwd)
    assert e.cycles["gate issue"] == pytest.approx(cal.mma_cpi_bwd * 16 * 128 * 233 / 128)
    # No calibration on sm_80 yet: the paper model stands there.
    assert plan.estimate_calibrated(lp, "a100") is None


def test_plan_cli_prints_the_measured_budget():
    out = subprocess.run([sys.executable, "-m", "brnnseg_kernels", "plan", "--gpu", "h200", "--measured", H200_RUN],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sum(l.startswith("| ") for l in out.stdout.splitlines()) == 1 + 52 and "largest error" in out.stdout
