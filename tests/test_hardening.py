"""Hardening: property-based tests (hypothesis) of the public ops, layers and losses over shapes (empty
batch, 1-pixel maps), memory layouts (channels_last, strided, expanded views), dtypes (valid and invalid)
and NaN/Inf; the same through the simulated CUDA kernels (both recurrences) with a smaller budget; flat
memory over 1,000 iterations; results under several Python threads, thread counts, DataLoader workers
(fork and spawn) and a disabled or tiny CPU buffer cache; run-to-run determinism.

Example budgets: BRNNSEG_FUZZ_EXAMPLES (default 20 per property in CI; `make fuzz` runs 300)."""
import functools
import multiprocessing
import os
import subprocess
import sys
import threading

import pytest
import torch

import brnnseg_kernels as bk
from brnnseg_kernels import reference
from tests.utils import stacked_weights, sweep_reference, torch_sweep3d

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXAMPLES = int(os.environ.get("BRNNSEG_FUZZ_EXAMPLES", "20"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("BRNNSEG_FUZZ_RANDOM") != "1",
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SIM_FUZZ = settings(max_examples=max(4, EXAMPLES // 4), deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


class _env:
    """BRNNSEG_CUDA_RECURRENCE and allow_tf32 for one example (hypothesis reruns the test body, so a
    function-scoped monkeypatch would leak between examples)."""

    def __init__(self, recurrence):
        self.recurrence = recurrence

    def __enter__(self):
        self.old = os.environ.get("BRNNSEG_CUDA_RECURRENCE"), torch.backends.cuda.matmul.allow_tf32
        os.environ["BRNNSEG_CUDA_RECURRENCE"] = self.recurrence
        torch.backends.cuda.matmul.allow_tf32 = self.recurrence == "mma"

    def __exit__(self, *exc):
        env, tf32 = self.old
        if env is None:
            os.environ.pop("BRNNSEG_CUDA_RECURRENCE", None)
        else:
            os.environ["BRNNSEG_CUDA_RECURRENCE"] = env
        torch.backends.cuda.matmul.allow_tf32 = tf32
CELLS = list(bk.cells.kernel_cells())
LAYOUTS = ["contiguous", "channels_last", "strided", "expanded", "transposed"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _every_other(x: torch.Tensor) -> torch.Tensor:
    """The same values as every other element along the last dim of a twice-as-wide tensor (a strided view)."""
    wide = torch.zeros(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
    wide[..., ::2] = x
    return wide[..., ::2]


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout (torch has no negative-stride views: flips copy)."""
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        return _every_other(x)
    if layout == "expanded":  # a broadcast view along W (stride 0) of the first column
        return x[..., :1].expand(x.shape)
    if layout == "transposed":  # H and W swapped in memory
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    return x.contiguous()


@st.composite
def feature_maps(draw, max_hw=6):
    n = draw(st.integers(0, 2))
    c = draw(st.integers(1, 3))
    h = draw(st.integers(1, max_hw))
    w = draw(st.integers(1, max_hw))
    seed = draw(st.integers(0, 2**31 - 1))
    layout = draw(st.sampled_from(LAYOUTS))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    return _layout(x, layout), layout, seed


# ---- the CPU ops and layers against the reference ---------------------------------------------------

@FUZZ
@given(fm=feature_maps(), cell=st.sampled_from(CELLS), hid=st.integers(1, 5), axis=st.sampled_from([2, 3]),
       dtype=st.sampled_from([torch.float32, torch.float64]))
def test_fuzz_sweep_op_matches_reference(fm, cell, hid, axis, dtype):
    x, layout, seed = fm
    torch.manual_seed(seed)
    ws = stacked_weights(cell, x.shape[1], hid, requires_grad=False)
    xt = x.to(dtype).requires_grad_()
    wt = [w.to(dtype).requires_grad_() for w in ws]
    y = bk.ops.sweep(cell, xt, *wt, axis=axis)
    assert y.shape == (x.shape[0], 2 * hid) + tuple(x.shape[2:])
    with torch.no_grad():
        _, work = torch.ops.brnnseg.sweep(cell, xt.detach(), *[w.detach() for w in wt], axis, False, True)
    xd = x.detach().clone().requires_grad_()
    wd = [w.detach().clone().requires_grad_() for w in ws]
    exp = sweep_reference(cell, xd, *wd, axis, work if x.numel() else None)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(y.double(), exp, **tol)
    if x.numel():
        g = torch.randn_like(exp)
        got = torch.autograd.grad(y, [xt] + wt, g.to(dtype))
        want = torch.autograd.grad(exp, [xd] + wd, g)
        gtol = dict(rtol=1e-3, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-8, atol=1e-9)
        for a, b in zip(got, want):
            torch.testing.assert_close(a.double(), b, **gtol)


@FUZZ
@given(fm=feature_maps(), family=st.sampled_from(["gru", "lstm", "rnn"]), mode=st.sampled_from(["sequential",
                                                                                              "parallel"]))
def test_fuzz_renet_layers(fm, family, mode):
    x, layout, seed = fm
    torch.manual_seed(seed)
    layer = getattr(bk, bk.cells.family(family).layer2d)(x.shape[1], 3, mode=mode).double()
    y = layer(x)
    assert y.shape == (x.shape[0], layer.out_channels if hasattr(layer, "out_channels") else y.shape[1]) + \
        tuple(x.shape[2:])
    assert torch.isfinite(y).all()
    # The same values in a plain contiguous tensor give the same output.
    torch.testing.assert_close(y, layer(x.contiguous()), rtol=0, atol=0)


SEQ_LAYOUTS = ["contiguous", "time_major_memory", "strided", "expanded"]


def _seq_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """A (B, T, C) batch with the same values in another memory layout."""
    if layout == "time_major_memory":
        return x.transpose(0, 1).contiguous().transpose(0, 1)
    if layout == "strided":
        return _every_other(x)
    if layout == "expanded":  # every step the same input (stride 0 along T)
        return x[:, :1].expand(x.shape)
    return x


@FUZZ
@given(family=st.sampled_from(["gru", "lstm", "rnn_tanh", "rnn_relu"]), b=st.integers(0, 3), t=st.integers(1, 6),
       c=st.integers(1, 4), hid=st.integers(1, 5), layers=st.integers(1, 2), bidirectional=st.booleans(),
       batch_first=st.booleans(), bias=st.booleans(), h0=st.booleans(), layout=st.sampled_from(SEQ_LAYOUTS),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 2**31 - 1))
def test_fuzz_dropin_rnns_match_torch(family, b, t, c, hid, layers, bidirectional, batch_first, bias, h0, layout,
                                      dtype, seed):
    """bk.nn.GRU/LSTM/RNN against torch's module with the same weights: outputs, final states and input
    gradients, for empty batches, T = 1, both batch orders, strided/expanded inputs, with and without h0."""
    torch.manual_seed(seed)
    fam = "rnn" if family.startswith("rnn") else family
    kw = dict(num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    if fam == "rnn":
        kw["nonlinearity"] = family.split("_")[1]
    torch_cls = bk.cells.family(fam).torch_module
    ref = torch_cls(c, hid, **kw).to(dtype)
    ours = getattr(bk.nn, bk.cells.family(fam).dropin)(c, hid, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    x = _seq_layout(torch.randn(b, t, c, dtype=dtype), layout)
    if not batch_first:
        x = x.transpose(0, 1)
    args = [x]
    if h0:
        h = torch.randn(layers * (2 if bidirectional else 1), b, hid, dtype=dtype)
        args.append((h, torch.randn_like(h)) if fam == "lstm" else h)
    xr, xo = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    out_r, out_o = ref(xr, *args[1:]), ours(xo, *args[1:])
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    flat = lambda out: [out[0]] + (list(out[1]) if isinstance(out[1], tuple) else [out[1]])  # noqa: E731
    for got, want in zip(flat(out_o), flat(out_r)):
        torch.testing.assert_close(got, want, **tol)
    if x.numel():
        g = torch.randn_like(out_r[0])
        torch.testing.assert_close(torch.autograd.grad(out_o[0], xo, g)[0], torch.autograd.grad(out_r[0], xr, g)[0],
                                   **tol)


VOLUME_LAYOUTS = ["contiguous", "channels_last_3d", "strided", "expanded"]


def _volume_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last_3d":
        return x.contiguous(memory_format=torch.channels_last_3d)
    if layout == "strided":
        return _every_other(x)
    if layout == "expanded":  # a broadcast view along D
        return x[:, :, :1].expand(x.shape)
    return x


@FUZZ
@given(n=st.integers(0, 2), c=st.integers(1, 3), d=st.integers(1, 4), h=st.integers(1, 4), w=st.integers(1, 4),
       cell=st.sampled_from(CELLS), order=st.permutations(["width", "height", "depth"]),
       layout=st.sampled_from(VOLUME_LAYOUTS), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 2**31 - 1))
def test_fuzz_volume_layers_match_torch(n, c, d, h, w, cell, order, layout, dtype, seed):
    """BiGRU3d/BiLSTM3d/BiRNN3d against torch's RNN modules run along every line of each axis in turn."""
    torch.manual_seed(seed)
    fam = bk.cells.family_of_cell(cell)
    nl = fam.nonlinearity_of(cell)
    layer = getattr(bk.nn, fam.layer3d)(c, 3, order=order, **({"nonlinearity": nl} if nl else {})).to(dtype)
    x = _volume_layout(torch.randn(n, c, d, h, w, dtype=dtype), layout)
    xo, xr = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    y = layer(xo)
    ref = xr
    for axis in order:
        ref = torch_sweep3d(ref, getattr(layer, axis), cell, axis)
    assert y.shape == (n, 6, d, h, w)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(y, ref, **tol)
    if x.numel():
        g = torch.randn_like(ref)
        torch.testing.assert_close(torch.autograd.grad(y, xo, g)[0], torch.autograd.grad(ref, xr, g)[0], **tol)


@FUZZ
@given(fm=feature_maps(max_hw=7), classes=st.integers(1, 5), soft=st.booleans(), radius=st.integers(0, 2),
       bw=st.sampled_from([0.0, 1.5]), smoothing=st.sampled_from([0.0, 0.1]),
       ignore=st.sampled_from([None, -100, 255]), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_fuzz_ce_dice_loss(fm, classes, soft, radius, bw, smoothing, ignore, dtype):
    x, layout, seed = fm
    n, _, h, w = x.shape
    g = torch.Generator().manual_seed(seed + 1)
    logits = _layout(torch.randn(n, classes, h, w, generator=g, dtype=torch.float64), layout).to(dtype)
    if soft:
        target = torch.softmax(torch.randn(n, classes, h, w, generator=g, dtype=torch.float64), 1).to(dtype)
    else:
        target = torch.randint(0, classes, (n, h, w), generator=g)
        if ignore is not None:
            target[torch.rand(target.shape, generator=g) < 0.2] = ignore
    opts = dict(boundary_weight=bw, boundary_radius=radius, label_smoothing=smoothing,
                ignore_index=-100 if ignore is None else ignore)
    xt = logits.clone().requires_grad_()
    got = bk.functional.ce_dice_loss(xt, target, **opts)
    xd = logits.double().requires_grad_()
    exp = reference.ce_dice_loss(xd, target, **opts)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got.double(), exp.double(), **tol)
    (gx,) = torch.autograd.grad(got, xt)
    (ex,) = torch.autograd.grad(exp, xd)
    torch.testing.assert_close(gx.double(), ex, **tol)


@FUZZ
@given(fm=feature_maps(max_hw=7), radius=st.integers(0, 2), bw=st.sampled_from([0.0, 2.0]),
       squared=st.booleans(), ignore=st.sampled_from([None, 2.0]), dtype=st.sampled_from([torch.float32,
                                                                                         torch.float64]))
def test_fuzz_bce_dice_loss(fm, radius, bw, squared, ignore, dtype):
    x, layout, seed = fm
    g = torch.Generator().manual_seed(seed + 2)
    target = (torch.rand(x.shape, generator=g) > 0.6).double()
    if ignore is not None:
        target[torch.rand(x.shape, generator=g) < 0.2] = ignore
    opts = dict(boundary_weight=bw, boundary_radius=radius, squared=squared, ignore_index=ignore, pos_weight=3.0)
    xt = x.to(dtype).requires_grad_()
    got = bk.functional.bce_dice_loss(xt, target.to(dtype), **opts)
    xd = x.double().requires_grad_()
    exp = reference.seg_loss(xd, target, **opts)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got.double(), exp.double(), **tol)
    if x.numel():
        torch.testing.assert_close(torch.autograd.grad(got, xt)[0].double(), torch.autograd.grad(exp, xd)[0], **tol)


@FUZZ
@given(fm=feature_maps(), bad=st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64]))
def test_fuzz_invalid_dtypes_name_the_argument(fm, bad):
    x, _, _ = fm
    xb = x.to(bad) if bad != torch.bool else x > 0
    ws = [w.float() for w in stacked_weights("gru", x.shape[1], 3, requires_grad=False)]
    with pytest.raises((RuntimeError, TypeError, ValueError), match="x must be|input must be|floating"):
        bk.ops.sweep("gru", xb, *ws, axis=3)
    with pytest.raises((TypeError, ValueError), match="floating point"):
        bk.BiGRU2d(x.shape[1], 3)(xb)
    with pytest.raises((TypeError, ValueError, RuntimeError), match="logits must be floating point"):
        bk.functional.ce_dice_loss(xb, torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.long))


@FUZZ
@given(fm=feature_maps(), where=st.sampled_from(["nan", "inf", "-inf"]))
def test_fuzz_nan_and_inf_propagate_like_the_reference(fm, where):
    x, _, seed = fm
    if x.numel() == 0:
        return
    x = x.contiguous().clone()
    x.view(-1)[seed % x.numel()] = float(where)
    torch.manual_seed(seed)
    ws = stacked_weights("gru", x.shape[1], 2, requires_grad=False)
    y = bk.ops.sweep("gru", x, *ws, axis=3)
    exp = reference.sweep("gru", x, *ws, axis=3)
    assert torch.equal(torch.isnan(y), torch.isnan(exp))
    assert torch.equal(torch.isinf(y), torch.isinf(exp))
    target = torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.long)
    got = bk.functional.ce_dice_loss(x, target % x.shape[1])
    assert torch.isnan(got) == torch.isnan(reference.ce_dice_loss(x, target % x.shape[1]))


# ---- the CUDA kernel source, through the simulator ---------------------------------------------------

@SIM_FUZZ
@given(n=st.integers(1, 2), c=st.integers(1, 3), h=st.integers(1, 18), w=st.integers(1, 4),
       cell=st.sampled_from(["gru", "lstm"]), hid=st.integers(1, 20), axis=st.sampled_from([2, 3]),
       recurrence=st.sampled_from(["fma", "mma"]), dtype=st.sampled_from(["float32", "bfloat16"]),
       seed=st.integers(0, 2**31 - 1))
def test_fuzz_simulated_cuda_sweeps(n, c, h, w, cell, hid, axis, recurrence, dtype, seed):
    pytest.importorskip(os.environ.get("BRNNSEG_SIM_MODULE", "brnnseg_kernels._sim"))
    torch.manual_seed(seed)
    dt = getattr(torch, dtype)
    x = torch.randn(n, c, h, w)
    ws = [t.float() for t in stacked_weights(cell, c, hid, scale=hid ** -0.5, requires_grad=False)]
    with _env(recurrence):
        y, work = torch.ops.brnnseg_sim.sweep(cell, x.to(dt), *[t.to(dt) for t in ws], axis, False, True, "h100", 0,
                                             False)
    exp = sweep_reference(cell, x.double(), *[t.double() for t in ws], axis, work)
    assert not torch.isnan(y).any()
    err = (y.double() - exp).abs().max().item()
    assert err <= (3e-2 if dt == torch.bfloat16 else 2 * 2.0 ** -11 * hid ** 0.5 + 1e-5), err


# ---- memory, threads, processes, determinism ---------------------------------------------------------

def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc (Linux)")
def test_no_leak_over_1000_iterations():
    """1,000 forward+backward iterations of a ReNet layer, a volume layer, a drop-in LSTM and each loss:
    resident memory stays flat (after 100 warm-up iterations, growth under 16 MiB)."""
    torch.manual_seed(0)
    layer = bk.BiLSTM2d(4, 4)
    volume = bk.nn.BiGRU3d(2, 3)
    rnn = bk.nn.LSTM(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    ce = bk.losses.CEDiceLoss(boundary_weight=1.0)
    bce = bk.losses.BCEDiceLoss(boundary_weight=1.0)
    x = torch.randn(2, 4, 9, 7, requires_grad=True)
    v = torch.randn(1, 2, 3, 4, 5, requires_grad=True)
    s = torch.randn(3, 6, 3, requires_grad=True)
    labels = torch.randint(0, 8, (2, 9, 7))
    mask = torch.rand(2, 8, 9, 7) > 0.5

    def step():
        y = layer(x)
        (ce(y, labels) + bce(y, mask) + volume(v).sum() + rnn(s)[0].sum()).backward()

    for _ in range(100):
        step()
    before = _rss_mib()
    for _ in range(1000):
        step()
    drift = _rss_mib() - before
    print(f"resident memory drift over 1,000 iterations: {drift:.2f} MiB")
    assert drift < 16, drift


def _workload(seed: int = 0) -> torch.Tensor:
    """A sweep and a loss on inputs from a private generator (the global RNG is shared between threads)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 11, 9, generator=g)
    ws = [torch.randn(2, 18, 3, generator=g) * 0.5, torch.randn(2, 18, 6, generator=g) * 0.5,
          torch.randn(2, 18, generator=g) * 0.5, torch.randn(2, 18, generator=g) * 0.5]
    y = bk.ops.sweep("gru", x, *ws, axis=3)
    labels = torch.randint(0, 4, (2, 11, 9), generator=g)
    loss = bk.functional.ce_dice_loss(y[:, :4], labels, boundary_weight=1.0)
    return torch.cat([y.flatten(), loss.reshape(1)])


def test_python_threads_give_the_same_results():
    expected = _workload()
    results, errors = [None] * 6, []

    def run(i):
        try:
            results[i] = _workload()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in results:
        assert torch.equal(r, expected)


def _training_step(threads: int):
    """Outputs and every gradient of a ReNet layer + both losses and of a drop-in LSTM, at a thread count.
    Batch 1 and few lines: the work split into tiles follows the thread count here."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        layer = bk.BiLSTM2d(5, 7)
        x = torch.randn(1, 5, 13, 11, generator=g, requires_grad=True)
        y = layer(x)
        labels = torch.randint(0, 4, (1, 13, 11), generator=g)
        loss = (bk.functional.ce_dice_loss(y[:, :4], labels, boundary_weight=1.0)
                + bk.functional.bce_dice_loss(y[:, 4:5], (labels > 1).float()[:, None], boundary_weight=2.0))
        loss.backward()
        rnn = bk.nn.GRU(6, 9, num_layers=2, bidirectional=True, batch_first=True)
        s = torch.randn(5, 17, 6, generator=g, requires_grad=True)
        out = rnn(s)[0]
        out.square().sum().backward()
        forward = [y, loss.reshape(1), x.grad, out, s.grad]
        weights = [p.grad for p in list(layer.parameters()) + list(rnn.parameters())]
        return torch.cat([t.flatten() for t in forward]), torch.cat([t.flatten() for t in weights])
    finally:
        torch.set_num_threads(old)


def test_thread_counts_and_runs_are_bit_identical():
    """CPU results repeat bit for bit at a fixed thread count. Outputs and input gradients do not depend
    on torch.set_num_threads (every line is computed whole by one thread; the losses reduce in a fixed
    order); weight gradients are sums of per-tile partials, and where the tiles fall follows the thread
    count, so their last bits may too -- unless torch.use_deterministic_algorithms(True), under which
    the split is planned for one thread and every thread count gives the 1-thread result."""
    base = {n: _training_step(n) for n in (1, 2, 4)}
    again = _training_step(2)
    assert torch.equal(base[2][0], again[0]) and torch.equal(base[2][1], again[1])  # run to run
    for n in (2, 4):
        assert torch.equal(base[1][0], base[n][0]), f"outputs / input gradients differ at {n} threads"
        torch.testing.assert_close(base[n][1], base[1][1], rtol=1e-5, atol=1e-6)
    was = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        det = {n: _training_step(n) for n in (1, 2, 4)}
    finally:
        torch.use_deterministic_algorithms(was)
    assert torch.equal(det[1][1], base[1][1])  # one thread: the same plan either way
    for n in (2, 4):
        assert torch.equal(det[1][0], det[n][0]) and torch.equal(det[1][1], det[n][1]), \
            f"deterministic mode: weight gradients at {n} threads differ from 1 thread"


class _SweepDataset(torch.utils.data.Dataset):
    """Each item runs the fused ops (in a DataLoader worker: after fork or in a spawned process)."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return _workload(i)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers(context):
    expected = [_workload(i) for i in range(4)]
    _workload()  # the buffer cache and the ISA dispatch are initialised before the fork
    loader = torch.utils.data.DataLoader(_SweepDataset(), batch_size=None, num_workers=2,
                                         multiprocessing_context=multiprocessing.get_context(context))
    got = list(loader)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cache_mb", ["0", "1"])
def test_cpu_buffer_cache_disabled_or_tiny(cache_mb):
    code = ("import torch, sys; sys.path.insert(0, %r); from tests.test_hardening import _workload; "
            "torch.save(_workload(), sys.argv[1])" % ROOT)
    out = os.path.join(ROOT, "build", f"cache-{cache_mb}.pt")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    env = dict(os.environ, BRNNSEG_CPU_CACHE_MB=cache_mb, PYTHONPATH=ROOT)
    run = subprocess.run([sys.executable, "-c", code, out], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert torch.equal(torch.load(out, weights_only=True), _workload())
