"""Never slower than what users have, on a GPU: which backend a CUDA sweep takes (our kernel or permute +
cuDNN, torch's own RNN op with the same weights), from the table measured on the H200
(brnnseg_kernels/tuning/sm90.json) or, unmeasured, the calibrated model; the cuDNN path's values and
gradients; bk.explain. The decisions are pure functions of (cell, dtype, hidden, size, mode, arch): they
run anywhere. The paths run under the SIMT simulator's CUDA rules where it is built."""
import contextlib
import json
import os

import pytest
import torch

import brnnseg_kernels as bk
import brnnseg_kernels.testing
from brnnseg_kernels import dispatch, functional, reference, tuning
from tests.utils import stacked_weights

SM90 = os.path.join(os.path.dirname(tuning.__file__), "sm90.json")


@pytest.fixture(autouse=True)
def _auto(monkeypatch):
    monkeypatch.delenv("BRNNSEG_CUDA_BACKEND", raising=False)


def _rows():
    with open(SM90) as f:
        return json.load(f)["block"]


def test_every_measured_block_row_takes_the_faster_side():
    """For each of the 28 rows measured on the H200 (float32, bfloat16, float16, bf16 autocast; GRU and
    LSTM; four shapes), both modes: the choice for a sweep of that block is the side that was faster."""
    rows = _rows()
    assert len(rows) == 28
    for r in rows:
        n, c, h, w = r["shape"]
        autocast = r["dtype"].startswith("autocast-")
        dtype = r["dtype"].replace("autocast-", "")
        for mode, training in (("fwd+bwd", True), ("no_grad", False)):
            for lines, steps in ((n * h, w), (n * w, h)):
                side, why = tuning.cuda_choice(r["cell"], dtype, r["hidden"], lines, steps, training, "sm_90",
                                               autocast)
                faster = "kernel" if r["cudnn_ms"][mode] >= r["ours_ms"][mode] else "cudnn"
                assert side == faster, (r, mode, why)
                assert "measured on NVIDIA H200" in why


def test_float32_goes_to_cudnn_and_bfloat16_stays_ours():
    """The H200's verdict: float32 blocks 1.4-4.5x slower than cuDNN (all 8 rows, both modes); bf16
    modules 3-4.7x faster (torch's bf16 cuDNN path is slow)."""
    for cell in ("gru", "lstm"):
        assert tuning.cuda_choice(cell, "float32", 64, 512, 64, True)[0] == "cudnn"
        assert tuning.cuda_choice(cell, "float32", 96, 700, 90, False)[0] == "cudnn"
        assert tuning.cuda_choice(cell, "bfloat16", 64, 512, 64, True)[0] == "kernel"


def test_unmeasured_sizes_use_the_calibrated_model():
    side, why = tuning.cuda_choice("rnn_tanh", "float32", 64, 512, 64, True)
    assert side == "cudnn" and "calibrated model" in why  # FP32-core ~12 us/step vs cuDNN ~1.1
    side, why = tuning.cuda_choice("gru", "bfloat16", 16, 100, 30, True)
    assert side == "kernel" and "calibrated model" in why  # tensor cores ~2-3 us/step vs cuDNN bf16 ~13-28
    # No table for the architecture: our kernel, as before.
    assert tuning.cuda_choice("gru", "float32", 64, 512, 64, True, arch="sm_100")[0] == "kernel"


def test_environment_forces_a_side_and_rejects_others(monkeypatch):
    monkeypatch.setenv("BRNNSEG_CUDA_BACKEND", "kernel")
    assert tuning.cuda_choice("gru", "float32", 64, 512, 64, True) == ("kernel", "BRNNSEG_CUDA_BACKEND=kernel")
    monkeypatch.setenv("BRNNSEG_CUDA_BACKEND", "cudnn")
    assert tuning.cuda_choice("gru", "bfloat16", 64, 512, 64, True)[0] == "cudnn"
    monkeypatch.setenv("BRNNSEG_CUDA_BACKEND", "fastest")
    with pytest.raises(ValueError, match="BRNNSEG_CUDA_BACKEND must be one of auto, kernel, cudnn"):
        tuning.cuda_choice("gru", "float32", 64, 512, 64, True)


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("axis", [2, 3])
def test_torch_rnn_sweep_matches_the_reference(cell, axis):
    """The cuDNN path's code (torch's fused RNN op on our stacked weights), run on the CPU: values and
    gradients of every input against the float64 reference sweep, odd sizes, with and without bias."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64, requires_grad=True)
    for bias in (True, False):
        w = [None if t is None else t.detach().requires_grad_()
             for t in stacked_weights(cell, 5, 6, bias=bias, scale=6 ** -0.5)]
        w += [None] * (4 - len(w))
        got = functional._torch_rnn_sweep(x, *w, axis, cell)
        exp = reference.sweep(cell, x, *w, axis)
        torch.testing.assert_close(got, exp)
        g = torch.randn_like(got)
        leaves = [t for t in [x] + w if t is not None]
        torch.testing.assert_close(torch.autograd.grad(got, leaves, g), torch.autograd.grad(exp, leaves, g))
    xs = torch.randn(1, 5, 3, 4, dtype=torch.float64, requires_grad=True)  # gradcheck: few elements
    assert torch.autograd.gradcheck(lambda v, a, b: functional._torch_rnn_sweep(v, a, b, None, None, axis, cell),
                                    (xs, w[0], w[1]))


HAS_GPU = torch.cuda.is_available() and bool(bk.build_info().get("with_cuda"))
SIMULATED = not HAS_GPU and bk.testing.simulator_available()
DEV = "cuda" if HAS_GPU else "cpu"
# On a GPU these run there (the self-check's tests step runs this file); without one, under the simulator's
# CUDA rules (CPU tensors take the CUDA dispatch; our kernels run simulated, torch's ops on the CPU).
needs_sim = pytest.mark.skipif(not HAS_GPU and not SIMULATED, reason="needs a GPU or the simulator extension")


def cuda_rules():
    return contextlib.nullcontext() if HAS_GPU else bk.testing.simulated_cuda("h100")


@needs_sim
def test_layers_take_cudnn_for_float32_and_match_it():
    """Under the CUDA rules, a float32 BiLSTM2d (a measured-slower configuration) runs the cuDNN path: the
    same values and gradients as the permute + nn.LSTM block with its weights, and explain() says why."""
    torch.manual_seed(0)
    layer = bk.BiLSTM2d(8, 40).to(DEV)
    base = reference.ReNetBaseline(8, 40, "lstm").to(DEV)
    base.load_state_dict(layer.state_dict())
    x = torch.randn(2, 8, 9, 11, device=DEV)
    with cuda_rules():
        with dispatch.recording() as rec:
            y = layer(x)
        text = bk.explain(layer, x)
    assert [r["path"] for r in rec] == ["torch", "torch"]
    assert "torch's fused RNN" in text and "lstm float32 hidden 40" in text
    torch.testing.assert_close(y, base(x))
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, list(layer.parameters()), g)
    exp = torch.autograd.grad(base(x), list(base.parameters()), g)
    for a, b in zip(got, exp):
        torch.testing.assert_close(a, b)


@needs_sim
def test_bfloat16_layers_keep_our_kernel_and_pair_op():
    layer = bk.BiGRU2d(8, 16, mode="parallel").bfloat16().to(DEV)
    x = torch.randn(2, 8, 9, 11, dtype=torch.bfloat16, device=DEV)
    with cuda_rules():
        text = bk.explain(layer, x)
    assert text.startswith("sweep 0: gru rows+cols") and "our pair op" in text


@needs_sim
def test_hidden_beyond_our_kernel_goes_to_cudnn_not_the_reference():
    x = torch.randn(1, 3, 4, 5, device=DEV)
    with cuda_rules():
        path, why = dispatch.sweep_decision(x, dispatch.cuda_max_hidden() + 1, "gru")
    assert path == "torch" and "cuDNN" in why


def test_explain_on_the_cpu():
    text = bk.explain(bk.BiGRU2d(3, 4), torch.randn(1, 3, 5, 6))
    assert text.splitlines()[0].startswith("sweep 0: gru rows of cpu float32") and "our CPU kernel" in text
    assert bk.explain(torch.nn.Conv2d(3, 3, 1), torch.randn(1, 3, 4, 4)).startswith("no sweep or loss ran")


@needs_sim
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_choice_compiles_fullgraph(dtype):
    """The decision runs once while torch.compile traces (a constant of the graph): fullgraph works on
    both sides, with the values of eager mode."""
    torch.manual_seed(0)
    layer = bk.BiGRU2d(4, 8).to(DEV, dtype)
    x = torch.randn(1, 4, 5, 6, dtype=dtype, device=DEV)
    with cuda_rules():
        got = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)  # tracing is what is tested
        exp = layer(x)
    torch.testing.assert_close(got, exp)


def test_tune_without_a_gpu_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("checks the no-GPU behaviour")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "brnnseg_kernels", "tune", "--out", str(tmp_path / "t.json")],
                         env=dict(os.environ, PYTHONPATH=root), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len((out.stdout + out.stderr).strip().splitlines()) == 1
    assert "no GPU" in out.stdout and not (tmp_path / "t.json").exists()


@needs_sim
def test_tune_writes_a_table_the_choice_reads(tmp_path, monkeypatch):
    """tune's code path under the simulator's CUDA rules (tiny shapes; the figures mean nothing there):
    rows in the shipped table's format, which tuning.cuda_choice then decides from."""
    from brnnseg_kernels.tuning import measure

    if HAS_GPU:
        pytest.skip("the simulated run of tune's code path (on a GPU: python -m brnnseg_kernels tune)")
    path = tmp_path / "sm90.json"
    with bk.testing.simulated_cuda("h100"):
        doc = measure.tune(str(path), device="cpu", budget_s=600, shapes=[(1, 3, 5, 6, 8)], cells=("gru",),
                           dtypes=("float32", "bfloat16"), step_hidden=(8,), repeat=1,
                           loss_shapes=[("bce_dice", (1, 2, 5, 6), "float32"), ("ce_dice", (1, 3, 5, 6), "float32")])
    assert doc["complete"] and len(doc["block"]) == 2 and len(doc["cudnn_steps"]) == 2 and len(doc["loss"]) == 2
    shipped = tuning.table("sm_90")
    assert set(doc["block"][0]) == set(shipped["block"][0]) and set(doc["cudnn_steps"][0]) == set(shipped["cudnn_steps"][0])
    assert set(doc["loss"][0]) == set(shipped["loss"][0])
    assert [r["revision"] for r in doc["loss"]] == [tuning.LOSS_REVISION["bce_dice"], tuning.LOSS_REVISION["ce_dice"]]
    monkeypatch.setattr(tuning, "_TABLES", {"sm_90": json.loads(path.read_text())})
    row = doc["block"][0]
    side, why = tuning.cuda_choice("gru", "float32", 8, 5, 6, True)
    assert side == ("kernel" if row["cudnn_ms"]["fwd+bwd"] >= row["ours_ms"]["fwd+bwd"] else "cudnn")
    assert "measured on simulated" in why
    lrow = doc["loss"][0]  # a row of the current revision: it decides, not the H200's older ones
    side, why = tuning.loss_choice("bce_dice", (1, 2, 5, 6), "float32", True)
    assert side == ("fused" if lrow["fused_ms"]["fwd+bwd"] <= lrow["unfused_ms"]["fwd+bwd"] else "unfused")
    assert "measured on simulated" in why and "not yet measured" not in why
