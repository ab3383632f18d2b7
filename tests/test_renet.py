"""The ReNet layers of every cell (BiGRU2d, BiLSTM2d, BiRNN2d with tanh and relu): parity with the
nn.GRU/nn.LSTM/nn.RNN ReNet block, the reference, layouts, gradcheck, torch.compile and bad input."""
import functools

import pytest
import torch
from torch import nn

import brnnseg_kernels as bk
from brnnseg_kernels import functional as F
from brnnseg_kernels import reference
from tests.utils import assert_verbose_allclose

CELLS = list(bk.cells.kernel_cells())


def _nonlinearity(cell):
    fam = bk.cells.family_of_cell(cell)
    return fam.nonlinearity_of(cell)


def _layer_class(cell):
    """The layer class of a kernel cell, with its nonlinearity bound where the cell has one."""
    cls = getattr(bk, bk.cells.family_of_cell(cell).layer2d)
    nl = _nonlinearity(cell)
    return functools.partial(cls, nonlinearity=nl) if nl else cls


def _torch_rnn(cell, *args, **kwargs):
    nl = _nonlinearity(cell)
    return bk.cells.family_of_cell(cell).torch_module(*args, **kwargs, **({"nonlinearity": nl} if nl else {}))


LAYERS = {cell: _layer_class(cell) for cell in CELLS}


def _pair(cell, c, hid, bias=True, dtype=torch.float32):
    base = reference.ReNetBaseline(c, hid, cell, bias=bias, dtype=dtype)
    ours = LAYERS[cell](c, hid, bias=bias, dtype=dtype)
    ours.load_state_dict(base.state_dict())
    return base, ours


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(2, 5, 7, 6, 4), (1, 3, 1, 9, 3), (2, 4, 8, 1, 1), (1, 6, 37, 29, 40),
                                   (3, 2, 5, 4, 3)], ids=lambda s: "x".join(map(str, s)))
def test_layer_matches_torch_rnn_block(cell, shape):
    n, c, h, w, hid = shape
    base, ours = _pair(cell, c, hid)
    x = torch.randn(n, c, h, w)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_base, y_ours = base(x1), ours(x2)
    assert y_ours.shape == (n, 2 * hid, h, w)
    assert_verbose_allclose(y_ours, y_base, rtol=1e-4, atol=1e-5, name="output")
    g = torch.randn_like(y_base)
    y_base.backward(g)
    y_ours.backward(g)
    assert_verbose_allclose(x2.grad, x1.grad, rtol=1e-4, atol=1e-5, name="grad x")
    for (name, p_base), p_ours in zip(base.named_parameters(), ours.parameters()):
        assert_verbose_allclose(p_ours.grad, p_base.grad, rtol=1e-4, atol=1e-4, name=f"grad {name}")


@pytest.mark.parametrize("cell", CELLS)
def test_layer_without_bias_matches_torch(cell):
    base, ours = _pair(cell, 3, 5, bias=False)
    assert not any("bias" in k for k in ours.state_dict())
    x = torch.randn(2, 3, 6, 7)
    assert_verbose_allclose(ours(x), base(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_submodules_load_torch_rnn_state_dict(cell):
    rows = _torch_rnn(cell, 4, 6, bidirectional=True)
    layer = LAYERS[cell](4, 6)
    layer.rows.load_state_dict(rows.state_dict())
    assert set(layer.rows.state_dict()) == set(rows.state_dict())
    for k, v in rows.state_dict().items():
        assert layer.rows.state_dict()[k].shape == v.shape
    # ...and back into a torch module.
    cols = _torch_rnn(cell, 12, 6, bidirectional=True)
    cols.load_state_dict(layer.cols.state_dict())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("order", [("rows", "cols"), ("cols", "rows")])
@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_layer_order_and_mode_match_reference(cell, order, mode):
    layer = LAYERS[cell](3, 4, order=order, mode=mode, dtype=torch.float64)
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == (2, layer.out_channels, 5, 6)
    assert layer.out_channels == (16 if mode == "parallel" else 8)
    weights = {"rows": layer.rows.stacked(), "cols": layer.cols.stacked()}
    expected = reference.renet(cell, x, weights, order, mode)
    assert_verbose_allclose(y, expected, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x] + list(layer.parameters()), g)
    exp = torch.autograd.grad(expected, [x] + list(layer.parameters()), g)
    for a, b in zip(got, exp):
        assert_verbose_allclose(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_gradcheck(cell):
    layer = LAYERS[cell](2, 3, dtype=torch.float64)
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    params = list(layer.parameters())

    def f(x, *ps):
        rows = (torch.stack(ps[0:2]), torch.stack(ps[2:4]), torch.stack(ps[4:6]), torch.stack(ps[6:8]))
        cols = (torch.stack(ps[8:10]), torch.stack(ps[10:12]), torch.stack(ps[12:14]), torch.stack(ps[14:16]))
        return F.renet(x, {"rows": rows, "cols": cols}, cell)

    names = [n for n, _ in layer.named_parameters()]
    order = [f"{a}.{k}{s}" for a in ("rows", "cols") for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                                                 "bias_hh_l0") for s in ("", "_reverse")]
    ps = [dict(zip(names, params))[n].detach().requires_grad_() for n in order]
    assert torch.autograd.gradcheck(f, [x] + ps, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_layouts(cell):
    layer = LAYERS[cell](4, 5)
    x = torch.randn(2, 4, 7, 9)
    expected = layer(x)
    y_cl = layer(x.to(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    assert_verbose_allclose(y_cl, expected, rtol=1e-5, atol=1e-6)
    x_nc = torch.randn(2, 9, 4, 7).permute(0, 2, 3, 1)  # non-contiguous, not channels_last either
    x_nc = x_nc.transpose(2, 3).contiguous().transpose(2, 3)
    assert not x_nc.is_contiguous()
    assert_verbose_allclose(layer(x_nc), layer(x_nc.contiguous()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_layer_reduced_precision_inputs(dtype):
    layer = bk.BiGRU2d(3, 4)
    x = torch.randn(1, 3, 5, 6)
    y = layer.to(dtype)(x.to(dtype))
    assert y.dtype == dtype
    expected = layer.float()(x)
    assert_verbose_allclose(y.float(), expected, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_torch_compile_fullgraph(cell):
    layer = LAYERS[cell](3, 4)
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True)
    y = compiled(x)
    expected = layer(x)
    assert_verbose_allclose(y, expected, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, [x], g)
    (ex,) = torch.autograd.grad(expected, [x], g)
    assert_verbose_allclose(gx, ex, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_layer_bad_input(cell):
    cls = LAYERS[cell]
    layer = cls(3, 4)
    with pytest.raises(ValueError, match="4-D"):
        layer(torch.randn(3, 5, 6))
    with pytest.raises(ValueError, match="in_channels=3"):
        layer(torch.randn(1, 2, 5, 6))
    with pytest.raises(TypeError, match="floating point"):
        layer(torch.ones(1, 3, 5, 6, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        layer([[1.0]])
    with pytest.raises(ValueError, match="device"):
        layer(torch.randn(1, 3, 5, 6, device="meta"))  # parameters stay on the CPU
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="hidden_size"):
            cls(3, bad)
        with pytest.raises(ValueError, match="in_channels"):
            cls(bad, 4)
    with pytest.raises(ValueError, match="order"):
        cls(3, 4, order=("rows", "rows"))
    with pytest.raises(ValueError, match="mode"):
        cls(3, 4, mode="diagonal")


def test_layer_on_meta_device_gives_shapes():
    layer = bk.BiLSTM2d(3, 4, device="meta")
    y = layer(torch.empty(2, 3, 5, 6, device="meta"))
    assert y.shape == (2, 8, 5, 6) and y.device.type == "meta"


def test_birnn2d_nonlinearity_argument():
    assert bk.BiRNN2d(3, 4).cell == "rnn_tanh" and bk.BiRNN2d(3, 4, nonlinearity="relu").cell == "rnn_relu"
    assert "nonlinearity='relu'" in repr(bk.BiRNN2d(3, 4, nonlinearity="relu"))
    with pytest.raises(ValueError, match="nonlinearity must be one of"):
        bk.BiRNN2d(3, 4, nonlinearity="gelu")
    with pytest.raises(ValueError, match="has no nonlinearity"):
        bk.BiGRU2d(3, 4, nonlinearity="tanh")


def test_layer_classes_pickle():
    import pickle

    layer = pickle.loads(pickle.dumps(bk.BiRNN2d(3, 4, nonlinearity="relu")))
    assert type(layer) is bk.BiRNN2d and layer.cell == "rnn_relu"
    vol = pickle.loads(pickle.dumps(bk.nn.BiRNN3d(2, 3, nonlinearity="relu")))
    assert type(vol) is bk.nn.BiRNN3d and vol.cell == "rnn_relu"


def test_functional_and_module_agree():
    layer = bk.BiGRU2d(3, 4)
    x = torch.randn(1, 3, 4, 5)
    y = F.bigru2d(x, layer.rows.stacked(), layer.cols.stacked())
    assert torch.equal(y, layer(x))
