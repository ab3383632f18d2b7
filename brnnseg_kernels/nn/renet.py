"""ReNet layers: ``BiGRU2d`` and ``BiLSTM2d``."""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor, nn

from .. import functional as F

_GATES = {"gru": 3, "lstm": 4}


def check_positive_ints(who: str, **values) -> None:
    """ValueError naming the argument unless every value is a positive int (bools rejected)."""
    for arg, val in values.items():
        if isinstance(val, bool) or not isinstance(val, int) or val <= 0:
            raise ValueError(f"{who}: {arg} must be a positive integer, got {val!r}")


class BidirectionalRNNWeights(nn.Module):
    """The parameters of one single-layer bidirectional GRU/LSTM, named and shaped exactly like
    ``torch.nn.GRU/LSTM(input_size, hidden_size, bidirectional=True)`` -- ``weight_ih_l0``
    (G*hidden, input_size), ``weight_hh_l0`` (G*hidden, hidden), ``bias_ih_l0``, ``bias_hh_l0`` and the
    ``_reverse`` set -- with the same gate order and initialisation, so ``load_state_dict`` of a torch
    module's ``state_dict()`` works both ways."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.cell = cell
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        g = _GATES[cell] * hidden_size
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
        return f"{self.cell.upper()}({self.input_size}, {self.hidden_size}, bidirectional=True, bias={self.bias})"


class _ReNet2d(nn.Module):
    cell = "gru"

    def __init__(self, in_channels: int, hidden_size: int, bias: bool = True,
                 order: Tuple[str, str] = ("rows", "cols"), mode: str = "sequential", device=None, dtype=None):
        super().__init__()
        name = type(self).__name__
        check_positive_ints(name, in_channels=in_channels, hidden_size=hidden_size)
        order = tuple(order)
        if sorted(order) != ["cols", "rows"]:
            raise ValueError(f"{name}: order must be ('rows', 'cols') or ('cols', 'rows'), got {order!r}")
        if mode not in ("sequential", "parallel"):
            raise ValueError(f"{name}: mode must be 'sequential' or 'parallel', got {mode!r}")
        self.in_channels, self.hidden_size, self.order, self.mode = in_channels, hidden_size, order, mode
        self.out_channels = (4 if mode == "parallel" else 2) * hidden_size
        second_in = in_channels if mode == "parallel" else 2 * hidden_size
        sizes = {order[0]: in_channels, order[1]: second_in}
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.rows = BidirectionalRNNWeights(self.cell, sizes["rows"], hidden_size, **kw)
        self.cols = BidirectionalRNNWeights(self.cell, sizes["cols"], hidden_size, **kw)

    def forward(self, x: Tensor) -> Tensor:
        """x (N, in_channels, H, W) -> (N, out_channels, H, W), in the memory format of x."""
        F.check_feature_map(type(self).__name__, x, self.in_channels, (self.rows.weight_ih_l0,))
        weights = {"rows": self.rows.stacked(), "cols": self.cols.stacked()}
        return F.renet(x, weights, self.cell, self.order, self.mode)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.hidden_size}, order={self.order}, mode={self.mode!r}, "
                f"out_channels={self.out_channels}")


class BiGRU2d(_ReNet2d):
    """ReNet block of bidirectional GRUs: a sweep along every row (left->right and right->left),
    then along every column of its output.

    Arguments:
        in_channels: C of the input.
        hidden_size: hidden units per direction.
        bias: learn b_ih and b_hh, as in ``torch.nn.GRU``.
        order: ``("rows", "cols")`` (default) or ``("cols", "rows")``.
        mode: ``"sequential"`` (second sweep reads the first's output; 2*hidden_size channels out) or
            ``"parallel"`` (both sweeps read the input; 4*hidden_size channels out).

    Submodules ``rows`` and ``cols`` hold parameters named and shaped like
    ``torch.nn.GRU(in, hidden_size, bidirectional=True)``.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H, W); output channels are
    [forward direction, reverse direction] (per sweep in parallel mode).
    """

    cell = "gru"


class BiLSTM2d(_ReNet2d):
    """ReNet block of bidirectional LSTMs; arguments and shapes as :class:`BiGRU2d`, parameters
    named like ``torch.nn.LSTM(in, hidden_size, bidirectional=True)``."""

    cell = "lstm"
