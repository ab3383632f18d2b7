"""Drop-in nn.GRU / nn.LSTM / nn.RNN (brnnseg_kernels.nn.GRU/LSTM/RNN, both nonlinearities) and the
sequence ops behind them, for every kernel cell:
PyTorch's own module samples and error inputs, parity with torch (outputs and gradients), packed
sequences, dropout, gradcheck, opcheck, compile, replace_rnns / to_torch, bad input."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence

import brnnseg_kernels as bk
from brnnseg_kernels import ops, reference
from utils import assert_verbose_allclose

common_modules = pytest.importorskip("torch.testing._internal.common_modules")

SEQ = torch.ops.brnnseg.sequence
CELLS = list(bk.cells.kernel_cells())         # kernel cells: gru, lstm, rnn_tanh, rnn_relu, ...
FAMILIES = list(bk.cells.names())             # torch modules: gru, lstm, rnn, ...


def _classes(cell):
    """(torch class, our class, constructor kwargs) of a kernel cell (or a family: its default cell)."""
    fam = bk.cells.family(cell) if cell in FAMILIES else bk.cells.family_of_cell(cell)
    nl = fam.nonlinearity_of(cell)
    return fam.torch_module, getattr(bk.nn, fam.dropin), ({"nonlinearity": nl} if nl else {})


def _twins(cell, *args, **kwargs):
    """A torch module and ours holding the same weights."""
    torch_cls, our_cls, kw = _classes(cell)
    ref = torch_cls(*args, **kwargs, **kw)
    ours = our_cls(*args, **kwargs, **kw)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def _hx(cell, h, c):
    """The hidden-state argument: (h, c) for cells with a cell state, else h."""
    return (h, c) if bk.cells.spec(bk.cells.family(cell).kernel() if cell in FAMILIES else cell).has_cell_state else h


def _flatten(out):
    """All tensors of an RNN output ((y, h) or (y, (h, c)), y maybe packed)."""
    y, hidden = out
    y = y.data if isinstance(y, nn.utils.rnn.PackedSequence) else y
    return [y] + (list(hidden) if isinstance(hidden, tuple) else [hidden])


def _compare(ref, ours, args, rtol, atol):
    """Forward both modules on the same inputs; compare outputs, then gradients of every input and
    parameter for the same random output gradients."""
    def clone(a):
        if isinstance(a, torch.Tensor):
            return a.detach().clone().requires_grad_(a.requires_grad)
        if isinstance(a, nn.utils.rnn.PackedSequence):
            return nn.utils.rnn.PackedSequence(clone(a.data), a.batch_sizes, a.sorted_indices, a.unsorted_indices)
        if isinstance(a, tuple):
            return tuple(clone(t) for t in a)
        return a
    args_r, args_o = clone(args), clone(args)
    out_r, out_o = _flatten(ref(*args_r)), _flatten(ours(*args_o))
    for i, (o, r) in enumerate(zip(out_o, out_r)):
        assert_verbose_allclose(o, r, rtol=rtol, atol=atol, name=f"output {i}")
    grads = [torch.randn_like(r) for r in out_r]
    torch.autograd.backward(out_r, grads)
    torch.autograd.backward(out_o, grads)

    def leaves(a):
        if isinstance(a, torch.Tensor):
            return [a] if a.requires_grad else []
        if isinstance(a, nn.utils.rnn.PackedSequence):
            return leaves(a.data)
        if isinstance(a, tuple):
            return [t for x in a for t in leaves(x)]
        return []
    for i, (o, r) in enumerate(zip(leaves(args_o), leaves(args_r))):
        assert_verbose_allclose(o.grad, r.grad, rtol=rtol, atol=atol, name=f"grad of input {i}")
    for (name, p_o), p_r in zip(ours.named_parameters(), ref.parameters()):
        assert_verbose_allclose(p_o.grad, p_r.grad, rtol=rtol, atol=atol, name=f"grad of {name}")


# ---- PyTorch's own samples (torch.testing._internal.common_modules) ---------------------------------

def _module_info(cls):
    return next(mi for mi in common_modules.module_db if mi.module_cls is cls)


@pytest.mark.parametrize("cell", FAMILIES)
@pytest.mark.parametrize("training", [True, False])
def test_torch_module_samples(cell, training):
    torch_cls, our_cls, _ = _classes(cell)
    info = _module_info(torch_cls)
    samples = info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True,
                                      training=training)
    assert samples
    fused = 0
    for sample in samples:
        ci, fi = sample.constructor_input, sample.forward_input
        ref = torch_cls(*ci.args, **ci.kwargs).double().train(training)
        ours = our_cls(*ci.args, **ci.kwargs).double().train(training)
        ours.load_state_dict(ref.state_dict())
        fused += ours.fused_kernel_applies(fi.args[0])
        _compare(ref, ours, tuple(fi.args), rtol=1e-7, atol=1e-9)
    # LSTM samples with proj_size > 0 take torch's path; everything else must use the kernel.
    assert fused == (len(samples) // 2 if cell == "lstm" else len(samples))


@pytest.mark.parametrize("cell", FAMILIES)
def test_torch_module_error_inputs(cell):
    torch_cls, our_cls, _ = _classes(cell)
    info = _module_info(torch_cls)
    errors = list(info.module_error_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=False,
                                                training=True))
    assert errors
    for err in errors:
        ci = err.module_error_input.constructor_input
        fi = err.module_error_input.forward_input
        if err.error_on == common_modules.ModuleErrorEnum.CONSTRUCTION_ERROR:
            with pytest.raises(err.error_type, match=err.error_regex):
                our_cls(*ci.args, **ci.kwargs)
        else:
            m = our_cls(*ci.args, **ci.kwargs)
            with pytest.raises(err.error_type, match=err.error_regex):
                m(*fi.args, **fi.kwargs)


# ---- our own cases ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_matches_torch_fp32(cell, num_layers, bidirectional, batch_first, with_h0):
    ref, ours = _twins(cell, 9, 13, num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first)
    t, b = 11, 5
    x = torch.randn((b, t, 9) if batch_first else (t, b, 9), requires_grad=True)
    args = (x,)
    if with_h0:
        h = torch.randn(num_layers * (2 if bidirectional else 1), b, 13, requires_grad=True)
        args = (x, _hx(cell, h, torch.randn_like(h).requires_grad_()))
    assert ours.fused_kernel_applies(x)
    _compare(ref, ours, args, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_packed_unsorted_lengths(cell, bidirectional, batch_first):
    ref, ours = _twins(cell, 6, 7, num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    ref, ours = ref.double(), ours.double()
    lengths = torch.tensor([3, 9, 1, 9, 5, 2])  # unsorted, with ties and a length-1 sequence
    x = torch.randn((6, 9, 6) if batch_first else (9, 6, 6), dtype=torch.float64)
    packed = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
    packed = nn.utils.rnn.PackedSequence(packed.data.requires_grad_(), packed.batch_sizes, packed.sorted_indices,
                                         packed.unsorted_indices)
    h = torch.randn(2 * (2 if bidirectional else 1), 6, 7, dtype=torch.float64, requires_grad=True)
    _compare(ref, ours, (packed,), rtol=1e-7, atol=1e-9)
    _compare(ref, ours, (packed, _hx(cell, h, torch.randn_like(h).requires_grad_())),
             rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("cell", CELLS)
def test_pack_sequence_list_input(cell):
    ref, ours = _twins(cell, 4, 5, bidirectional=True)
    seqs = [torch.randn(n, 4) for n in (1, 7, 4)]
    packed = pack_sequence(seqs, enforce_sorted=False)
    _compare(ref, ours, (packed,), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_dropout_between_layers(cell):
    """Training-mode dropout: the same masks as the layer-by-layer composition with F.dropout in
    the same RNG order (the kernel draws no random numbers); eval mode is dropout-free."""
    _, ours = _twins(cell, 5, 6, num_layers=3, dropout=0.5, bidirectional=True)
    ours = ours.double()
    x = torch.randn(8, 3, 5, dtype=torch.float64)
    singles = []
    for layer in range(3):
        torch_cls, _, kw = _classes(cell)
        m = torch_cls(5 if layer == 0 else 12, 6, bidirectional=True, **kw).double()
        m.load_state_dict({k.replace(f"_l{layer}", "_l0"): v for k, v in ours.state_dict().items()
                           if f"_l{layer}" in k})
        singles.append(m)

    def composed(x):
        for i, m in enumerate(singles):
            x = m(x)[0]
            if i < 2:
                x = nn.functional.dropout(x, 0.5, True)
        return x

    ours.train()
    torch.manual_seed(1234)
    y = ours(x)[0]
    torch.manual_seed(1234)
    assert_verbose_allclose(y, composed(x), rtol=1e-10, atol=1e-12, name="dropout output")
    torch.manual_seed(99)
    assert not torch.allclose(y, ours(x)[0]), "dropout masks should change with the seed"
    ours.eval()
    ref, _ = _twins(cell, 5, 6, num_layers=3, dropout=0.5, bidirectional=True)
    ref.load_state_dict(ours.state_dict())
    assert_verbose_allclose(ours(x)[0], ref.double().eval()(x)[0], rtol=1e-10, atol=1e-12, name="eval output")


@pytest.mark.parametrize("cell", CELLS)
def test_gradcheck_module_packed(cell):
    _, our_cls, kw = _classes(cell)
    m = our_cls(3, 2, num_layers=2, bidirectional=True, **kw).double()
    lengths = torch.tensor([2, 4, 1])
    x = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    c = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)

    def f(x, h, c, *params):
        state = dict(zip([n for n, _ in m.named_parameters()], params))
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        hx = _hx(cell, h, c)
        out = torch.func.functional_call(m, state, (packed, hx))
        return _flatten(out)

    params = [p.detach().clone().requires_grad_() for p in m.parameters()]
    assert torch.autograd.gradcheck(f, (x, h, c, *params))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("directions", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
def test_sequence_op_matches_reference_and_gradcheck(cell, directions, batch_first):
    t, b, c, hid = 6, 4, 3, 5
    g = bk.cells.spec(cell).gates * hid
    w = [torch.randn(directions, g, c, dtype=torch.float64, requires_grad=True) * 1,
         torch.randn(directions, g, hid, dtype=torch.float64, requires_grad=True),
         torch.randn(directions, g, dtype=torch.float64, requires_grad=True),
         torch.randn(directions, g, dtype=torch.float64, requires_grad=True)]
    w = [p.detach().mul(0.5).requires_grad_() for p in w]
    x = torch.randn((b, t, c) if batch_first else (t, b, c), dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(directions, b, hid, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(directions, b, hid, dtype=torch.float64, requires_grad=True) if cell == "lstm" else None
    lengths = torch.tensor([6, 0, 3, 1])  # includes an empty sequence: h_n = h0, y = 0
    for lens in (None, lengths):
        got = ops.sequence(cell, x, *w, h0, c0, lens, batch_first)
        want = reference.sequence(cell, x, *w, h0, c0, lens, batch_first)
        for i, (a, e) in enumerate(zip(got, want)):
            assert_verbose_allclose(a, e, rtol=1e-9, atol=1e-11, name=f"output {i}")
        inputs = (x, h0) + ((c0,) if c0 is not None else ()) + tuple(w)

        def f(x, h0, *rest):
            c0_ = rest[0] if cell == "lstm" else None
            ws = rest[1:] if cell == "lstm" else rest
            return ops.sequence(cell, x, *ws, h0, c0_, lens, batch_first)
        assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("cell", CELLS)
def test_sequence_opcheck(cell):
    t, b, c, hid = 5, 3, 4, 3
    g = bk.cells.spec(cell).gates * hid
    x = torch.randn(t, b, c, requires_grad=True)
    w = [torch.randn(2, g, c, requires_grad=True), torch.randn(2, g, hid, requires_grad=True),
         torch.randn(2, g, requires_grad=True), torch.randn(2, g, requires_grad=True)]
    h0 = torch.randn(2, b, hid, requires_grad=True)
    states = (h0, torch.randn(2, b, hid, requires_grad=True)) if cell == "lstm" else (h0, None)
    for lengths, batch_first in ((None, False), (torch.tensor([5, 2, 4]), False), (None, True)):
        xx = x.detach().transpose(0, 1).contiguous().requires_grad_() if batch_first else x
        torch.library.opcheck(SEQ, (cell, xx, *w, *states, lengths, batch_first, True))
        # training=False saves nothing for backward: inference inputs only.
        torch.library.opcheck(SEQ, (cell, xx.detach(), *[p.detach() for p in w], None, None, lengths, batch_first,
                                    False))


@pytest.mark.parametrize("cell", CELLS)
def test_compile(cell):
    """Dynamo graph-breaks on every nn.RNN/GRU/LSTM subclass unless allow_rnn is set (as for torch's
    own modules); with it, the whole forward and backward compile through the ops' fake kernels."""
    torch._dynamo.reset()
    ref, ours = _twins(cell, 4, 6, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 7, 4, requires_grad=True)
    expected = _flatten(ref(x))
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
        got = _flatten(compiled(x))
    for a, e in zip(got, expected):
        assert_verbose_allclose(a, e, rtol=1e-4, atol=1e-5)
    got[0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # Default settings: compiles with a graph break, same numbers.
    torch._dynamo.reset()
    got = _flatten(torch.compile(ours, backend="aot_eager")(x))
    assert_verbose_allclose(got[0], expected[0], rtol=1e-4, atol=1e-5)


def test_non_contiguous_input_and_unbatched():
    ref, ours = _twins("gru", 4, 5, bidirectional=True)
    x = torch.randn(4, 3, 8)[:, :, ::2].permute(2, 1, 0)  # (T=4, B=3, C=4), strided channels
    assert not x.is_contiguous()
    _compare(ref, ours, (x.requires_grad_(),), rtol=1e-4, atol=1e-5)
    _compare(ref, ours, (torch.randn(6, 4, requires_grad=True),), rtol=1e-4, atol=1e-5)


def test_fallback_paths_match_torch():
    # proj_size > 0 is not in the kernel: torch's implementation runs, with torch's results.
    ref, ours = _twins("lstm", 4, 6, proj_size=3, num_layers=2)
    x = torch.randn(5, 2, 4)
    assert not ours.fused_kernel_applies(x)
    _compare(ref, ours, (x.requires_grad_(),), rtol=0, atol=0)
    # float16 input: torch's path too (bfloat16 runs the kernel: test_cpu_bf16.py).
    ref, ours = _twins("gru", 4, 6)
    assert not ours.half().fused_kernel_applies(x.detach().half())
    assert ours.bfloat16().fused_kernel_applies(x.detach().bfloat16())


def test_replace_rnns_and_back():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.LSTM(4, 6, num_layers=2, bidirectional=True, batch_first=True)
            self.blocks = nn.ModuleList([nn.GRU(12, 5, batch_first=True), nn.Linear(5, 2)])

        def forward(self, x):
            y, _ = self.enc(x)
            y, _ = self.blocks[0](y)
            return self.blocks[1](y)

    model = Model()
    x = torch.randn(3, 7, 4)
    expected = model(x)
    params_before = list(model.parameters())
    swapped = bk.nn.replace_rnns(model)
    assert swapped is model
    assert type(model.enc) is bk.nn.LSTM and type(model.blocks[0]) is bk.nn.GRU
    assert all(a is b for a, b in zip(params_before, model.parameters())), "parameters must be kept, not copied"
    assert_verbose_allclose(model(x), expected, rtol=1e-4, atol=1e-5)
    back = bk.nn.to_torch(model)
    assert type(back.enc) is nn.LSTM and type(back.blocks[0]) is nn.GRU
    assert_verbose_allclose(back(x), expected, rtol=1e-6, atol=1e-6)
    # A bare RNN module is returned converted.
    assert type(bk.nn.replace_rnns(nn.GRU(3, 3))) is bk.nn.GRU


@pytest.mark.parametrize("cell", CELLS)
def test_bad_input_errors(cell):
    _, ours = _twins(cell, 4, 5)
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D"):
        ours(torch.randn(2, 3, 4, 5))
    with pytest.raises(RuntimeError, match="input_size"):
        ours(torch.randn(3, 2, 7))
    with pytest.raises(RuntimeError, match="hidden"):
        h = torch.randn(1, 3, 5)
        ours(torch.randn(4, 2, 4), _hx(cell, h, h))
    with pytest.raises(RuntimeError, match="3-D"):
        h = torch.randn(3, 5)
        ours(torch.randn(4, 2, 4), _hx(cell, h, h))
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
        ours(torch.randn(0, 2, 4))
    y, _ = ours(torch.randn(3, 0, 4))  # an empty batch is fine, as for torch
    assert y.shape == (3, 0, 5)
    g = bk.cells.spec(cell).gates * 5
    w = (torch.randn(1, g, 4), torch.randn(1, g, 5), None, None)
    states = (None, None)
    x = torch.randn(6, 2, 4)
    with pytest.raises(RuntimeError, match=r"lengths must lie in \[0, T=6\]"):
        SEQ(cell, x, *w, *states, torch.tensor([7, 1]), False, False)
    with pytest.raises(RuntimeError, match="lengths must be a 1-D int64 CPU tensor"):
        SEQ(cell, x, *w, *states, torch.tensor([1.0, 2.0]), False, False)
    with pytest.raises(RuntimeError, match="w_ih must have shape"):
        SEQ(cell, x, torch.randn(1, g, 3), *w[1:], *states, None, False, False)
    with pytest.raises(RuntimeError, match="h0 must have shape"):
        SEQ(cell, x, *w, torch.randn(1, 3, 5), None, None, False, False)
    with pytest.raises(RuntimeError, match="x must be float32 or float64"):
        SEQ(cell, x.to(torch.int32), *w, *states, None, False, False)


def test_double_backward_is_refused_not_silently_wrong():
    """create_graph=True through our ops raises instead of dropping second-order terms."""
    x = torch.randn(3, 2, 4, requires_grad=True)
    _, ours = _twins("gru", 4, 5)
    y, _ = ours(x)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(y.sum(), x, create_graph=True)
    layer = bk.BiLSTM2d(3, 2)
    img = torch.randn(1, 3, 4, 5, requires_grad=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(layer(img).sum(), img, create_graph=True)
    logits = torch.randn(1, 1, 4, 4, requires_grad=True)
    with pytest.raises(NotImplementedError, match="double backward"):
        torch.autograd.grad(bk.losses.BCEDiceLoss()(logits, torch.rand(1, 1, 4, 4) > 0.5), logits, create_graph=True)


@pytest.mark.parametrize("cell", CELLS)
def test_gradient_through_final_state_only(cell):
    """Loss on h_n (or c_n) alone: the backward op gets no output gradient, only the state's."""
    ref, ours = _twins(cell, 3, 4, num_layers=2, bidirectional=True)
    ref, ours = ref.double(), ours.double()
    x_r = torch.randn(6, 5, 3, dtype=torch.float64, requires_grad=True)
    x_o = x_r.detach().clone().requires_grad_()
    state_r, state_o = ref(x_r)[1], ours(x_o)[1]
    pick = (lambda s: s[1]) if isinstance(state_r, tuple) else (lambda s: s)  # LSTM: c_n only
    pick(state_r).square().sum().backward()
    pick(state_o).square().sum().backward()
    assert_verbose_allclose(x_o.grad, x_r.grad, rtol=1e-9, atol=1e-11, name="grad x")
    for (name, p_o), p_r in zip(ours.named_parameters(), ref.parameters()):
        assert_verbose_allclose(p_o.grad, p_r.grad, rtol=1e-9, atol=1e-11, name=name)


# ---- nn.RNN (the Elman cell): both nonlinearities through the drop-in ------------------------------

def test_rnn_nonlinearity_selects_the_kernel_cell():
    assert bk.nn.RNN(3, 4)._cell == "rnn_tanh"
    assert bk.nn.RNN(3, 4, nonlinearity="relu")._cell == "rnn_relu"
    assert isinstance(bk.nn.RNN(3, 4), nn.RNN)
    assert type(bk.nn.replace_rnns(nn.RNN(3, 3, nonlinearity="relu"))) is bk.nn.RNN
    assert type(bk.nn.to_torch(bk.nn.RNN(3, 3))) is nn.RNN
    with pytest.raises(ValueError, match="Unknown nonlinearity"):  # torch's own constructor check
        bk.nn.RNN(3, 4, nonlinearity="gelu")


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_relu_and_tanh_match_torch_with_h0_layers_packed(nonlinearity):
    """Values and gradients against torch.nn.RNN: h0, 2 layers, bidirectional, packed unsorted lengths."""
    ref = nn.RNN(5, 7, num_layers=2, bidirectional=True, nonlinearity=nonlinearity).double()
    ours = bk.nn.RNN(5, 7, num_layers=2, bidirectional=True, nonlinearity=nonlinearity).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(9, 4, 5, dtype=torch.float64, requires_grad=True)
    h = torch.randn(4, 4, 7, dtype=torch.float64, requires_grad=True)
    assert ours.fused_kernel_applies(x)
    _compare(ref, ours, (x, h), rtol=1e-9, atol=1e-11)
    packed = pack_padded_sequence(x.detach(), torch.tensor([2, 9, 1, 5]), enforce_sorted=False)
    packed = nn.utils.rnn.PackedSequence(packed.data.requires_grad_(), packed.batch_sizes, packed.sorted_indices,
                                         packed.unsorted_indices)
    _compare(ref, ours, (packed, h), rtol=1e-9, atol=1e-11)
