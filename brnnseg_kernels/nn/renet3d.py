"""Volumetric ReNet layers, one class per row of the cell table (``BiGRU3d``, ``BiLSTM3d``, ...), sweep (N, C, D, H, W) volumes along width,
height and depth in turn, each sweep bidirectional over the previous one's output.

Every sweep is the 2-D op on a 4-D view of the volume (no kernel of its own):
width  = rows of (N, C, D*H, W); height = columns of (N*D, C, H, W) (D moved next to N);
depth  = columns of (N, C, D, H*W). In channels_last_3d memory all three are views without copies,
so the layers keep intermediate volumes in that format."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from .. import cells
from .. import functional as F
from ..checks import check_positive_ints
from .renet import BidirectionalRNNWeights, nonlinearity_doc

AXES3D = ("width", "height", "depth")


def sweep3d(x: Tensor, weights: Tuple, cell: str, axis: str) -> Tensor:
    """One bidirectional sweep of a volume along ``axis`` ("width", "height" or "depth"):
    (N, C, D, H, W) -> (N, 2*hid, D, H, W), in channels_last_3d memory."""
    n, c, d, h, w = x.shape
    if axis == "width":
        y = F.sweep(x.reshape(n, c, d * h, w), weights, cell, axis=3, channels_last=True)
        return y.reshape(n, y.shape[1], d, h, w)  # explicit channel count: n may be 0
    if axis == "height":
        y = F.sweep(x.permute(0, 2, 1, 3, 4).reshape(n * d, c, h, w), weights, cell, axis=2, channels_last=True)
        return y.reshape(n, d, y.shape[1], h, w).permute(0, 2, 1, 3, 4)
    if axis == "depth":
        y = F.sweep(x.reshape(n, c, d, h * w), weights, cell, axis=2, channels_last=True)
        return y.reshape(n, y.shape[1], d, h, w)
    raise ValueError(f"sweep3d: axis must be one of {AXES3D}, got {axis!r}")


class _ReNet3d(nn.Module):
    family = cells.FAMILIES[0]

    def __init__(self, in_channels: int, hidden_size: int, bias: bool = True,
                 order: Tuple[str, str, str] = AXES3D, device=None, dtype=None, nonlinearity: Optional[str] = None):
        super().__init__()
        name = type(self).__name__
        self.cell = self.family.kernel(nonlinearity)
        check_positive_ints(name, in_channels=in_channels, hidden_size=hidden_size)
        order = tuple(order)
        if sorted(order) != sorted(AXES3D):
            raise ValueError(f"{name}: order must be a permutation of {AXES3D}, got {order!r}")
        self.in_channels, self.hidden_size, self.order = in_channels, hidden_size, order
        self.out_channels = 2 * hidden_size
        kw = dict(bias=bias, device=device, dtype=dtype)
        for i, axis in enumerate(order):
            self.add_module(axis, BidirectionalRNNWeights(self.cell, in_channels if i == 0 else 2 * hidden_size,
                                                          hidden_size, **kw))

    def forward(self, x: Tensor) -> Tensor:
        """x (N, in_channels, D, H, W) -> (N, 2*hidden_size, D, H, W), channels_last_3d memory."""
        name = type(self).__name__
        if not isinstance(x, Tensor) or x.dim() != 5:
            got = f"{x.dim()}-D with shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: input must be a 5-D tensor (N, C, D, H, W), got {got}")
        if not x.is_floating_point():
            raise TypeError(f"{name}: input must be a floating point tensor, got dtype {x.dtype}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{name}: expected input with in_channels={self.in_channels} channels (dim 1), "
                             f"got shape {tuple(x.shape)}")
        y = x.contiguous(memory_format=torch.channels_last_3d)
        for axis in self.order:
            y = sweep3d(y, getattr(self, axis).stacked(), self.cell, axis)
        return y

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.hidden_size}, order={self.order}, out_channels={self.out_channels}"


_DOC = """Bidirectional {torch} sweeps along width, height and depth of a volume (the order is
    ``order``); submodules ``width``, ``height``, ``depth`` hold ``torch.nn.{torch}(bidirectional=True)``-named
    weights. (N, in_channels, D, H, W) -> (N, 2*hidden_size, D, H, W). ``nonlinearity``: {nonlinearity}"""


def renet3d_class(fam: cells.Family) -> type:
    """The volumetric ReNet layer class of a cell-table row (module-level, named ``fam.layer3d``)."""
    return cells.family_class(fam.layer3d, (_ReNet3d,), fam, __name__,
                              _DOC.format(torch=fam.torch_module.__name__, nonlinearity=nonlinearity_doc(fam)))


for _fam in cells.FAMILIES:
    globals()[_fam.layer3d] = renet3d_class(_fam)

__all__ = ["sweep3d", "renet3d_class"] + [f.layer3d for f in cells.FAMILIES]
