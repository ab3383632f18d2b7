"""ReNet layers: one class per row of the cell table (``brnnseg_kernels.cells``): ``BiGRU2d``,
``BiLSTM2d``, ... -- built by :func:`renet2d_class` from the row, so a new cell needs no code here."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .. import cells
from .. import functional as F
from ..checks import check_feature_map, check_positive_ints


class BidirectionalRNNWeights(nn.Module):
    """The parameters of one single-layer bidirectional RNN of a kernel cell (``cell``: "gru", "lstm",
    ...), named and shaped exactly like ``torch.nn.GRU/LSTM/RNN(input_size, hidden_size, bidirectional=True)`` -- ``weight_ih_l0``
    (G*hidden, input_size), ``weight_hh_l0`` (G*hidden, hidden), ``bias_ih_l0``, ``bias_hh_l0`` and the
    ``_reverse`` set -- with the same gate order and initialisation, so ``load_state_dict`` of a torch
    module's ``state_dict()`` works both ways."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        g = cells.spec(cell).gates * hidden_size
        kw = dict(device=device, dtype=dtype)
        for sfx in ("", "_reverse"):
            self.register_parameter(f"weight_ih_l0{sfx}", nn.Parameter(torch.empty(g, input_size, **kw)))
            self.register_parameter(f"weight_hh_l0{sfx}", nn.Parameter(torch.empty(g, hidden_size, **kw)))
            if bias:
                self.register_parameter(f"bias_ih_l0{sfx}", nn.Parameter(torch.empty(g, **kw)))
                self.register_parameter(f"bias_hh_l0{sfx}", nn.Parameter(torch.empty(g, **kw)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        k = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -k, k)

    def stacked(self) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """(w_ih (2, G*hid, C), w_hh (2, G*hid, hid), b_ih (2, G*hid) or None, b_hh or None)."""
        w_ih = torch.stack([self.weight_ih_l0, self.weight_ih_l0_reverse])
        w_hh = torch.stack([self.weight_hh_l0, self.weight_hh_l0_reverse])
        if not self.bias:
            return w_ih, w_hh, None, None
        return (w_ih, w_hh, torch.stack([self.bias_ih_l0, self.bias_ih_l0_reverse]),
                torch.stack([self.bias_hh_l0, self.bias_hh_l0_reverse]))

    def extra_repr(self) -> str:
        fam = cells.family_of_cell(self.cell)
        nl = fam.nonlinearity_of(self.cell)
        extra = f", nonlinearity={nl!r}" if nl else ""
        return (f"{fam.dropin}({self.input_size}, {self.hidden_size}, bidirectional=True, bias={self.bias}"
                f"{extra})")


class _ReNet2d(nn.Module):
    family = cells.FAMILIES[0]

    def __init__(self, in_channels: int, hidden_size: int, bias: bool = True,
                 order: Tuple[str, str] = ("rows", "cols"), mode: str = "sequential", device=None, dtype=None,
                 nonlinearity: Optional[str] = None):
        super().__init__()
        name = type(self).__name__
        check_positive_ints(name, in_channels=in_channels, hidden_size=hidden_size)
        order = tuple(order)
        if sorted(order) != ["cols", "rows"]:
            raise ValueError(f"{name}: order must be ('rows', 'cols') or ('cols', 'rows'), got {order!r}")
        if mode not in ("sequential", "parallel"):
            raise ValueError(f"{name}: mode must be 'sequential' or 'parallel', got {mode!r}")
        self.cell = self.family.kernel(nonlinearity)
        self.nonlinearity = nonlinearity if nonlinearity is not None else self.family.default_nonlinearity
        self.in_channels, self.hidden_size, self.order, self.mode = in_channels, hidden_size, order, mode
        self.out_channels = (4 if mode == "parallel" else 2) * hidden_size
        second_in = in_channels if mode == "parallel" else 2 * hidden_size
        sizes = {order[0]: in_channels, order[1]: second_in}
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.rows = BidirectionalRNNWeights(self.cell, sizes["rows"], hidden_size, **kw)
        self.cols = BidirectionalRNNWeights(self.cell, sizes["cols"], hidden_size, **kw)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, in_channels, H, W) -> (N, out_channels, H, W), in the memory format of x."""
        check_feature_map(type(self).__name__, x, self.in_channels, (self.rows.weight_ih_l0,))
        weights = {"rows": self.rows.stacked(), "cols": self.cols.stacked()}
        return F.renet(x, weights, self.cell, self.order, self.mode)

    def extra_repr(self) -> str:
        nl = f", nonlinearity={self.nonlinearity!r}" if self.nonlinearity else ""
        return (f"{self.in_channels}, {self.hidden_size}, order={self.order}, mode={self.mode!r}, "
                f"out_channels={self.out_channels}{nl}")


_DOC = """ReNet block of bidirectional {torch} cells: a sweep along every row (left->right and
    right->left), then along every column of its output.

    Arguments:
        in_channels: C of the input.
        hidden_size: hidden units per direction.
        bias: learn b_ih and b_hh, as in ``torch.nn.{torch}``.
        order: ``("rows", "cols")`` (default) or ``("cols", "rows")``.
        mode: ``"sequential"`` (second sweep reads the first's output; 2*hidden_size channels out) or
            ``"parallel"`` (both sweeps read the input; 4*hidden_size channels out).
        nonlinearity: {nonlinearity}

    Submodules ``rows`` and ``cols`` hold parameters named and shaped like
    ``torch.nn.{torch}(in, hidden_size, bidirectional=True)``.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H, W); output channels are
    [forward direction, reverse direction] (per sweep in parallel mode).
    """


def nonlinearity_doc(fam: cells.Family) -> str:
    choices = [k for k in fam.kernels if k is not None]
    if not choices:
        return "not used by this cell (must be None)."
    return f"one of {choices} (default {fam.default_nonlinearity!r}), as in ``torch.nn.{fam.torch_module.__name__}``."


def renet2d_class(fam: cells.Family) -> type:
    """The ReNet layer class of a cell-table row (module-level, picklable, named ``fam.layer2d``)."""
    return cells.family_class(fam.layer2d, (_ReNet2d,), fam, __name__,
                              _DOC.format(torch=fam.torch_module.__name__, nonlinearity=nonlinearity_doc(fam)))


for _fam in cells.FAMILIES:
    globals()[_fam.layer2d] = renet2d_class(_fam)

__all__ = ["BidirectionalRNNWeights", "renet2d_class"] + [f.layer2d for f in cells.FAMILIES]
