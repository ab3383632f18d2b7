"""bfloat16 on the CPU kernels: float32 state, products in bfloat16 on AVX512-BF16 (float32 on CPUs without it).

Every cell and op, forward and backward, against float64 with flash-attention's rule: the max error is at
most 2x that of the same computation done by plain PyTorch in bfloat16 (``reference.sweep`` /
``nn.GRU``-style modules with bfloat16 parameters), plus a small atol for sums that cancel. Hidden 32-256,
T up to 512. The fallback chain is tested by forcing each rung (``BRNNSEG_CPU_ISA``) in a subprocess.
gradcheck stays float64 (test_sweep.py, test_sequence.py)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import brnnseg_kernels as bk
from brnnseg_kernels import ops, reference, testing
from brnnseg_kernels.cells import spec

from utils import assert_within_reference_error

CELLS = ["gru", "lstm", "rnn_tanh", "rnn_relu"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _weights(cell, c, hid, gen, bias=True):
    g = spec(cell).gates * hid
    s = hid ** -0.5  # contracting recurrences: errors compare, they do not explode
    w = [torch.randn(2, g, c, generator=gen, dtype=torch.float64) * (c ** -0.5),
         torch.randn(2, g, hid, generator=gen, dtype=torch.float64) * s]
    if bias:
        w += [torch.randn(2, g, generator=gen, dtype=torch.float64) * 0.1 for _ in range(2)]
    else:
        w += [None, None]
    return w


def _leaves(ts, dtype):
    return [None if t is None else t.detach().to(dtype).requires_grad_() for t in ts]


def _check_sweep(cell, shape, hid, axis, channels_last=False, bias=True, seed=0, atol=1e-3):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    weights = _weights(cell, c, hid, gen, bias)
    runs = {}
    for name, dt in (("f64", torch.float64), ("ours", torch.bfloat16), ("ref", torch.bfloat16)):
        xs, *ws = _leaves([x] + weights, dt)
        xin = xs.contiguous(memory_format=torch.channels_last) if channels_last else xs
        if name == "ref":
            y = reference.sweep(cell, xin, *ws, axis)
        else:
            y = ops.sweep(cell, xin, *ws, axis=axis, channels_last=channels_last)
        grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
        y.backward(grad.to(dt))
        runs[name] = [y] + [None if t is None else t.grad for t in [xs] + ws]
        if name == "ours":
            assert y.dtype == torch.bfloat16
            assert y.is_contiguous(memory_format=torch.channels_last) == channels_last
    names = ["y", "grad_x", "grad_w_ih", "grad_w_hh", "grad_b_ih", "grad_b_hh"]
    for i, nm in enumerate(names):
        if runs["f64"][i] is None:
            continue
        assert runs["ours"][i].dtype == torch.bfloat16, nm
        assert_within_reference_error(runs["ours"][i], runs["f64"][i], runs["ref"][i], atol=atol,
                                      name=f"{cell} {nm}")


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("axis", [3, 2])
def test_sweep_bf16_matches_float64(cell, axis):
    _check_sweep(cell, (2, 5, 7, 9), 32, axis)  # odd channels: the x rows are packed with a zero pad
    _check_sweep(cell, (1, 6, 5, 11), 40, axis, channels_last=True, bias=False, seed=3)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_sweep_bf16_long_and_wide(cell):
    # hidden 256, T = 512 (one long row), and hidden 128 over a small map
    _check_sweep(cell, (1, 8, 1, 512), 256, 3, seed=5, atol=2e-3)
    _check_sweep(cell, (1, 16, 6, 6), 128, 2, seed=6)


@pytest.mark.parametrize("cell", CELLS)
def test_sweep_bf16_tile_blocks(cell):
    # Sizes where the products run on AMX tiles (16-blocks) on CPUs that have them, with every edge:
    # 39 lines (two 16-row tiles, one more, 7 rows left), 35 channels (16 pairs and 2 left), hidden 48
    # (24 pairs: one 16-pair block and 8 left; 144-192 gate columns). Elsewhere the AVX512-BF16 kernel
    # runs them: the same check.
    _check_sweep(cell, (3, 35, 13, 11), 48, 3, seed=8)
    _check_sweep(cell, (1, 64, 40, 33), 32, 2, channels_last=True, seed=9)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_renet_parallel_bf16(cell):
    # mode="parallel" takes the pair op for bfloat16 too
    layer = bk.BiGRU2d if cell == "gru" else bk.BiLSTM2d
    gen = torch.Generator().manual_seed(7)
    m64 = layer(3, 16, mode="parallel").double()
    for p in m64.parameters():
        p.data = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.25
    x = torch.randn(2, 3, 6, 5, generator=gen, dtype=torch.float64)
    outs = {}
    for name, dt in (("f64", torch.float64), ("ours", torch.bfloat16)):
        m = layer(3, 16, mode="parallel").to(dt)
        m.load_state_dict({k: v.to(dt) for k, v in m64.state_dict().items()})
        xi = x.detach().to(dt).requires_grad_()
        y = m(xi)
        y.float().square().sum().backward()
        outs[name] = (y, xi.grad)
    for i, nm in enumerate(["y", "grad_x"]):
        err = (outs["ours"][i].double() - outs["f64"][i]).abs().max().item()
        assert outs["ours"][i].dtype == torch.bfloat16
        assert err < 0.05 * outs["f64"][i].abs().max().item() + 1e-2, (nm, err)


def _seq_modules(cls, c, hid, **kw):
    torch.manual_seed(11)
    return cls(c, hid, **kw).double()  # nn's init, U(-1/sqrt(hid), 1/sqrt(hid)): contracting


@pytest.mark.parametrize("name", ["GRU", "LSTM", "RNN"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_sequence_bf16_matches_float64(name, batch_first):
    torch_cls, ours_cls = getattr(nn, name), getattr(bk.nn, name)
    c, hid, t_len, b = 7, 48, 37, 5
    ref64 = _seq_modules(torch_cls, c, hid, num_layers=2, bidirectional=True, batch_first=batch_first)
    gen = torch.Generator().manual_seed(12)
    shape = (b, t_len, c) if batch_first else (t_len, b, c)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    h0 = torch.randn(4, b, hid, generator=gen, dtype=torch.float64) * 0.5
    hx = (h0, torch.randn(4, b, hid, generator=gen, dtype=torch.float64) * 0.5) if name == "LSTM" else h0
    outs = {}
    for tag, cls, dt in (("f64", torch_cls, torch.float64), ("ref", torch_cls, torch.bfloat16),
                         ("ours", ours_cls, torch.bfloat16)):
        m = cls(c, hid, num_layers=2, bidirectional=True, batch_first=batch_first).to(dt)
        m.load_state_dict({k: v.to(dt) for k, v in ref64.state_dict().items()})
        if tag == "ours":
            assert m.fused_kernel_applies(x.to(dt))
        xi = x.detach().to(dt).requires_grad_()
        hi = tuple(h.to(dt) for h in hx) if name == "LSTM" else hx.to(dt)
        y, h_n = m(xi, hi)
        h_last = h_n[0] if name == "LSTM" else h_n
        (y.double().sin().sum() + h_last.double().cos().sum()).backward()
        outs[tag] = [y, h_last, xi.grad] + [p.grad for p in m.parameters()]
    for i in range(len(outs["f64"])):
        assert outs["ours"][i].dtype == torch.bfloat16
        assert_within_reference_error(outs["ours"][i], outs["f64"][i], outs["ref"][i], atol=2e-3,
                                      name=f"{name} output {i}")


@pytest.mark.parametrize("name", ["GRU", "LSTM"])
def test_sequence_bf16_tile_blocks(name):
    # batch 37 and 33 inputs: the drop-ins' products on AMX tiles where the CPU has them, edges included
    torch_cls, ours_cls = getattr(nn, name), getattr(bk.nn, name)
    c, hid, t_len, b = 33, 64, 19, 37
    ref64 = _seq_modules(torch_cls, c, hid, bidirectional=True)
    x = torch.randn(t_len, b, c, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    outs = {}
    for tag, cls, dt in (("f64", torch_cls, torch.float64), ("ref", torch_cls, torch.bfloat16),
                         ("ours", ours_cls, torch.bfloat16)):
        m = cls(c, hid, bidirectional=True).to(dt)
        m.load_state_dict({k: v.to(dt) for k, v in ref64.state_dict().items()})
        xi = x.detach().to(dt).requires_grad_()
        y, _ = m(xi)
        y.double().sin().sum().backward()
        outs[tag] = [y, xi.grad] + [p.grad for p in m.parameters()]
    for i in range(len(outs["f64"])):
        assert_within_reference_error(outs["ours"][i], outs["f64"][i], outs["ref"][i], atol=2e-3,
                                      name=f"{name} output {i}")


def test_sequence_bf16_packed_lengths():
    from torch.nn.utils.rnn import pack_padded_sequence

    ref64 = _seq_modules(nn.LSTM, 4, 32, bidirectional=True)
    x = torch.randn(9, 4, 4, dtype=torch.float64)
    lengths = torch.tensor([9, 7, 4, 1])
    outs = {}
    for tag, cls, dt in (("f64", nn.LSTM, torch.float64), ("ref", nn.LSTM, torch.bfloat16),
                         ("ours", bk.nn.LSTM, torch.bfloat16)):
        m = cls(4, 32, bidirectional=True).to(dt)
        m.load_state_dict({k: v.to(dt) for k, v in ref64.state_dict().items()})
        out, (h_n, c_n) = m(pack_padded_sequence(x.to(dt), lengths))
        outs[tag] = [out.data, h_n, c_n]
    for i in range(3):
        assert_within_reference_error(outs["ours"][i], outs["f64"][i], outs["ref"][i], atol=1e-3, name=f"packed {i}")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bf16_sweep_saves_bfloat16(cell):
    """bfloat16 sweeps and sequences keep float32 state but save their slots in bfloat16 (half the
    workspace: the largest tensor a training step keeps); the fake kernels agree (opcheck below); the
    backward names a workspace of the wrong dtype; under simulated_cuda sweeps follow the CUDA rule
    (float32 slots)."""
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(2, 3, 5, 7, generator=gen).bfloat16()
    w = [t.bfloat16() for t in _weights(cell, 3, 8, gen)]
    y, ws = torch.ops.brnnseg.sweep(cell, x, *w, 3, False, True)
    assert ws.dtype == torch.bfloat16 and ws.shape == (2, 7, 10, spec(cell).saved * 8)
    y2, ws_r, ws_c = torch.ops.brnnseg.sweep_pair(cell, x, *w, *w, False, True)
    assert ws_r.dtype == ws_c.dtype == torch.bfloat16
    y32, ws32 = torch.ops.brnnseg.sweep(cell, x.float(), *[t.float() for t in w], 3, False, True)
    assert ws32.dtype == torch.float32
    # the slots hold the run's gates: within bfloat16's rounding (and the products') of float32's
    assert (ws.float() - ws32).abs().max() < 0.05
    gy = torch.randn(y.shape, generator=gen).bfloat16()
    with pytest.raises(RuntimeError, match="workspace must be a contiguous BFloat16"):
        torch.ops.brnnseg.sweep_backward(cell, gy, x, w[0], w[1], y, ws.float(), 3)
    if testing.simulator_available():
        with testing.simulated_cuda():
            assert ops._workspace_dtype(x, sweep=True) == torch.float32
    assert ops._workspace_dtype(x, sweep=True) == torch.bfloat16
    xs = torch.randn(4, 3, 3, generator=gen).bfloat16()  # the sequence op (drop-in nn.GRU / nn.LSTM) too
    outs = torch.ops.brnnseg.sequence(cell, xs, *w, None, None, None, False, True)
    assert outs[-1].dtype == torch.bfloat16 and outs[-1].shape == (2, 4, 3, spec(cell).saved * 8)
    assert ops._workspace_dtype(xs) == torch.bfloat16


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bf16_opcheck(cell):
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(2, 3, 5, 6, generator=gen).bfloat16().requires_grad_()
    w = [None if t is None else t.bfloat16().requires_grad_() for t in _weights(cell, 3, 8, gen)]
    torch.library.opcheck(torch.ops.brnnseg.sweep.default, (cell, x, *w, 3, False, True))
    torch.library.opcheck(torch.ops.brnnseg.sweep_pair.default, (cell, x, *w, *w, True, True))
    xs = torch.randn(4, 3, 3, generator=gen).bfloat16().requires_grad_()
    torch.library.opcheck(torch.ops.brnnseg.sequence.default, (cell, xs, *w, None, None, None, False, True))


def test_cpu_autocast_layers_and_dropins():
    torch.manual_seed(14)
    layer = bk.BiLSTM2d(3, 8)
    x = torch.randn(1, 3, 5, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    explicit = layer.bfloat16()(x.bfloat16())
    assert torch.equal(y, explicit)  # the same bfloat16 path
    layer.float()
    # Drop-ins follow torch's own modules: LSTM and RNN in bfloat16, GRU in float32.
    for name, want in (("LSTM", torch.bfloat16), ("RNN", torch.bfloat16), ("GRU", torch.float32)):
        ref = getattr(nn, name)(4, 6, batch_first=True)
        ours = getattr(bk.nn, name)(4, 6, batch_first=True)
        ours.load_state_dict(ref.state_dict())
        xs = torch.randn(2, 5, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert ours.fused_kernel_applies(xs)
            got, want_out = ours(xs)[0], ref(xs)[0]
        assert got.dtype == want_out.dtype == want, name
        assert (got.double() - want_out.double()).abs().max() < 0.05, name


def _start_rung(rung, cell="lstm"):
    code = (
        "import json, torch, brnnseg_kernels as bk\n"
        "from brnnseg_kernels import ops\n"
        "g = torch.Generator().manual_seed(21)\n"
        "x = torch.randn(2, 6, 5, 9, generator=g)\n"
        f"G = {spec(cell).gates}\n"
        "w = [torch.randn(2, G * 24, 6, generator=g) * 0.4, torch.randn(2, G * 24, 24, generator=g) * 0.2,"
        " torch.randn(2, G * 24, generator=g) * 0.1, torch.randn(2, G * 24, generator=g) * 0.1]\n"
        "ts = [t.bfloat16().requires_grad_() for t in [x] + w]\n"
        f"y = ops.sweep('{cell}', ts[0], *ts[1:], axis=3)\n"
        "y.float().sum().backward()\n"
        "print(json.dumps({'isa': bk.cpu_isa(), 'y': y.float().flatten().tolist(),"
        " 'gx': ts[0].grad.float().flatten().tolist(), 'gw': ts[2].grad.float().flatten().tolist()}))\n")
    env = dict(os.environ, BRNNSEG_CPU_ISA=rung, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _result(proc):
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])


def test_isa_fallback_chain():
    """Each rung of BRNNSEG_CPU_ISA runs (and reports itself); all agree with float64 within the bfloat16
    rule; the bfloat16 rung, where the CPU has it, really runs other products than the float32 rungs."""
    detected = bk.cpu_isa()
    g = torch.Generator().manual_seed(21)
    x = torch.randn(2, 6, 5, 9, generator=g)
    w = [torch.randn(2, 4 * 24, 6, generator=g) * 0.4, torch.randn(2, 4 * 24, 24, generator=g) * 0.2,
         torch.randn(2, 4 * 24, generator=g) * 0.1, torch.randn(2, 4 * 24, generator=g) * 0.1]
    ts = [t.bfloat16().double().requires_grad_() for t in [x] + w]
    y64 = reference.sweep("lstm", ts[0], *ts[1:], 3)
    y64.sum().backward()
    results = {}
    order = ["baseline", "avx2", "avx512", "avx512_bf16", "amx_bf16"]
    procs = {rung: _start_rung(rung) for rung in order}  # the imports overlap
    for rung in order:
        r = results[rung] = _result(procs[rung])
        assert r["isa"]["cap"] == rung
        want_vector = {"baseline": "baseline", "avx2": "avx2"}.get(rung, "avx512")
        if order.index(want_vector) <= order.index(rung) and detected["vector"] == "avx512":
            assert r["isa"]["vector"] == want_vector, r["isa"]
        want_bf16 = "none"
        if rung in ("avx512_bf16", "amx_bf16") and detected["avx512_bf16_cpu"] == "yes":
            want_bf16 = "avx512_bf16"
        if rung == "amx_bf16" and detected["amx_bf16"] == "yes":  # the CPU has the tiles, the OS granted them
            want_bf16 = "amx_bf16"
        assert r["isa"]["bf16"] == want_bf16, r["isa"]
        for key, ref in (("y", y64), ("gx", ts[0].grad), ("gw", ts[2].grad)):
            got = torch.tensor(r[key], dtype=torch.float64).view(ref.shape)
            err = (got - ref.detach()).abs().max().item()
            assert err < 2e-2 * ref.abs().max().item() + 1e-3, (rung, key, err)
    if detected["avx512_bf16_cpu"] == "yes":
        assert results["avx512_bf16"]["y"] != results["avx512"]["y"]


def test_isa_env_rejects_unknown():
    env = dict(os.environ, BRNNSEG_CPU_ISA="amx", PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, "-c", "import brnnseg_kernels"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "BRNNSEG_CPU_ISA must be one of" in out.stderr


def test_bf16_lstm_dispatch_to_torch(monkeypatch):
    """Never slower: bfloat16 LSTM sweeps go to torch's fused LSTM on CPUs with AMX-BF16 whose tiles our
    products may not use (auto), or when BRNNSEG_CPU_BF16_LSTM=torch; that path is exactly nn.LSTM over the
    lines, gradients included. With our products on the tiles, or on a CPU without them, ours."""
    from brnnseg_kernels import dispatch, functional

    x = torch.randn(2, 5, 4, 6).bfloat16()
    monkeypatch.delenv("BRNNSEG_CPU_BF16_LSTM", raising=False)
    monkeypatch.setattr(dispatch, "_cpu_has_amx_bf16", lambda: False)
    monkeypatch.setattr(dispatch, "_amx_products", lambda: False)
    assert dispatch.sweep_path(x, 8, "lstm") == "kernel"
    monkeypatch.setattr(dispatch, "_cpu_has_amx_bf16", lambda: True)
    monkeypatch.setattr(dispatch, "_amx_products", lambda: True)
    assert dispatch.sweep_path(x, 8, "lstm") == "kernel"
    monkeypatch.setattr(dispatch, "_amx_products", lambda: False)  # capped, or refused by the OS
    assert dispatch.sweep_path(x, 8, "lstm") == "torch"
    assert dispatch.sweep_path(x, 8, "gru") == "kernel"  # torch's bfloat16 GRU has no such path
    assert dispatch.sweep_path(x.float(), 8, "lstm") == "kernel"
    monkeypatch.setenv("BRNNSEG_CPU_BF16_LSTM", "kernel")
    assert dispatch.sweep_path(x, 8, "lstm") == "kernel"
    monkeypatch.setenv("BRNNSEG_CPU_BF16_LSTM", "fast")
    with pytest.raises(ValueError, match="BRNNSEG_CPU_BF16_LSTM"):
        dispatch.sweep_path(x, 8, "lstm")
    monkeypatch.setenv("BRNNSEG_CPU_BF16_LSTM", "torch")
    for axis in (3, 2):
        lstm = nn.LSTM(5, 8, batch_first=True, bidirectional=True).bfloat16()
        ws = [torch.stack([getattr(lstm, f"{n}_l0"), getattr(lstm, f"{n}_l0_reverse")]).detach().requires_grad_()
              for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        xi = x.clone().requires_grad_()
        y = functional.sweep(xi, tuple(ws), "lstm", axis)
        seq = x.permute(0, 2, 3, 1).reshape(8, 6, 5) if axis == 3 else x.permute(0, 3, 2, 1).reshape(12, 4, 5)
        want, _ = lstm(seq)
        want = (want.reshape(2, 4, 6, 16).permute(0, 3, 1, 2) if axis == 3
                else want.reshape(2, 6, 4, 16).permute(0, 3, 2, 1))
        assert torch.equal(y, want)
        y.float().sum().backward()
        assert xi.grad is not None and all(w.grad is not None for w in ws)
    # mode="parallel" leaves the pair op to the kernel's sweeps only
    layer = bk.BiLSTM2d(5, 8, mode="parallel").bfloat16()
    assert layer(x).shape == (2, 32, 4, 6)
