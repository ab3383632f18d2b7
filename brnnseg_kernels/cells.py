"""The cells, as Python sees them: one row per cell family.

The kernels' side of a cell is its C++ header (``csrc/include/brnnseg/cell/<name>.h``) plus one row of
``BRNNSEG_FOR_EACH_CELL``; :func:`spec` reads its sizes from there (``torch.ops.brnnseg.cell_spec``)
instead of copying them. This table adds what only Python knows: the torch module a family stands in
for, the names of the layers built on it, and which kernel cell a nonlinearity selects. The layers
(``nn/renet.py``, ``nn/renet3d.py``), the drop-ins (``nn/rnn.py``), the models, the benchmarks and the
tests all read it -- adding a cell is its header, a row there, a row here and its reference step
(``reference.STEPS``); see CONTRIBUTING.md.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from . import _C  # noqa: F401  (registers torch.ops.brnnseg.cells / cell_spec)

__all__ = ["Family", "CellSpec", "family_class", "FAMILIES", "family", "family_of_cell", "spec", "names", "kernel_cells"]


@dataclass(frozen=True)
class Family:
    name: str                              # "gru": BRNNUNet(rnn=...), bench --cells
    torch_module: type                     # the torch module the drop-in replaces
    kernels: Dict[Optional[str], str]      # nonlinearity (None: the family has none) -> kernel cell name
    layer2d: str                           # ReNet layer class (brnnseg_kernels.nn / brnnseg_kernels)
    layer3d: str                           # volumetric ReNet layer class
    dropin: str                            # drop-in class in brnnseg_kernels.nn

    @property
    def default_nonlinearity(self) -> Optional[str]:
        return next(iter(self.kernels))

    def nonlinearity_of(self, cell: str) -> Optional[str]:
        """The nonlinearity that selects kernel cell ``cell`` (None for a family without one)."""
        return next((k for k, v in self.kernels.items() if v == cell and k is not None), None)

    def kernel(self, nonlinearity: Optional[str] = None) -> str:
        """The kernel cell for a nonlinearity (None: the family's default)."""
        if nonlinearity is None:
            nonlinearity = self.default_nonlinearity
        if nonlinearity not in self.kernels:
            have = [k for k in self.kernels if k is not None]
            raise ValueError(f"{self.layer2d}: nonlinearity must be one of {have}, got {nonlinearity!r}" if have
                             else f"{self.layer2d}: this cell has no nonlinearity argument, got {nonlinearity!r}")
        return self.kernels[nonlinearity]


# One row per family.
FAMILIES: Tuple[Family, ...] = (
    Family("gru", nn.GRU, {None: "gru"}, "BiGRU2d", "BiGRU3d", "GRU"),
    Family("lstm", nn.LSTM, {None: "lstm"}, "BiLSTM2d", "BiLSTM3d", "LSTM"),
    Family("rnn", nn.RNN, {"tanh": "rnn_tanh", "relu": "rnn_relu"}, "BiRNN2d", "BiRNN3d", "RNN"),
)


def family_class(name: str, bases: tuple, fam: Family, module: str, doc: str) -> type:
    """A class built from a cell-table row (a ReNet layer or a drop-in): named ``name`` at module level
    of ``module`` (so it pickles and reprs like a written-out class), with ``family = fam``."""
    cls = type(name, bases, {"family": fam, "__module__": module, "__doc__": doc})
    cls.__qualname__ = name
    return cls


@dataclass(frozen=True)
class CellSpec:
    name: str
    gates: int            # G: rows of W_ih / W_hh per hidden unit
    saved: int            # S: values saved per unit and step for backward (the workspace's last dim / hid)
    cell_slot: int        # the saved slot holding the cell state, -1 when the cell has none
    split_recurrent_grad: bool

    @property
    def has_cell_state(self) -> bool:
        return self.cell_slot >= 0


@functools.lru_cache(maxsize=None)
def spec(cell: str) -> CellSpec:
    """Sizes of a kernel cell, from the C++ that runs it (ValueError for an unknown name)."""
    g, s, slot, split = torch.ops.brnnseg.cell_spec(cell)
    return CellSpec(cell, g, s, slot, bool(split))


def kernel_cells() -> Tuple[str, ...]:
    """Every kernel cell the extension was built with (C++ order)."""
    return tuple(torch.ops.brnnseg.cells())


def names() -> Tuple[str, ...]:
    """Family names: the values of ``rnn=`` / ``--cells``."""
    return tuple(f.name for f in FAMILIES)


def family(name: str, who: str = "brnnseg_kernels") -> Family:
    for f in FAMILIES:
        if f.name == name:
            return f
    raise ValueError(f"{who}: rnn must be {one_of(names())}, got {name!r}")


def one_of(choices) -> str:
    """"'a', 'b' or 'c'" for error messages."""
    quoted = [repr(c) for c in choices]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def family_of_cell(cell: str) -> Family:
    for f in FAMILIES:
        if cell in f.kernels.values():
            return f
    raise ValueError(f"unknown kernel cell {cell!r}; cells: {list(kernel_cells())}")
