"""Drop-in ``torch.nn.GRU`` / ``torch.nn.LSTM`` / ... running on the fused sequence kernels: one class
per row of the cell table (``brnnseg_kernels.cells``), named like the torch module it replaces.

Each subclasses its torch module, so the constructor, its validation, the parameter names and shapes,
``state_dict``, ``extra_repr`` and ``isinstance(m, torch.nn.GRU)`` are torch's own; only ``forward``
differs. It runs every layer through ``torch.ops.brnnseg.sequence`` (both directions, h0/c0, final
states and ``PackedSequence`` lengths handled in the kernel) whenever that kernel applies
(``brnnseg_kernels.dispatch.sequence_kernel_applies``):

* input on the CPU in float32, float64 or bfloat16, weights of the same dtype and device;
* under CPU autocast with bfloat16, float32 modules compute in the dtype torch's own would: bfloat16
  for LSTM and RNN, float32 for GRU (``dispatch.sequence_autocast_dtype``);
* not under TorchScript;
* LSTM without projections (``proj_size == 0``).

Anything else (CUDA tensors, float16, ``proj_size > 0``) runs ``torch.nn.GRU/LSTM.forward``
unchanged -- the same results, never an approximation. ``fused_kernel_applies(input)`` tells which
path an input takes. Dropout between layers uses ``torch.nn.functional.dropout`` on each layer's
output, as torch does; the random masks differ from torch's (different RNG consumption).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .. import cells, dispatch, ops


class _FusedRNNMixin:
    family = cells.FAMILIES[0]

    @property
    def _cell(self) -> str:
        """The kernel cell: the family's, chosen by ``nonlinearity`` where the module has one (nn.RNN)."""
        return self.family.kernel(getattr(self, "nonlinearity", None))

    def fused_kernel_applies(self, input) -> bool:
        """Whether ``forward(input)`` runs on the fused kernel (else on torch's implementation)."""
        data = input.data if isinstance(input, PackedSequence) else input
        return dispatch.sequence_kernel_applies(data, self._flat_weights, getattr(self, "proj_size", 0),
                                                self.family.name)

    def _layer_weights(self, layer: int, dtype: Optional[torch.dtype] = None):
        sfx = ("", "_reverse") if self.bidirectional else ("",)

        def stacked(name):
            ws = [getattr(self, f"{name}_l{layer}{s}") for s in sfx]
            w = ws[0].unsqueeze(0) if len(ws) == 1 else torch.stack(ws)
            return w if dtype is None else w.to(dtype)

        w_ih, w_hh = stacked("weight_ih"), stacked("weight_hh")
        if not self.bias:
            return w_ih, w_hh, None, None
        return w_ih, w_hh, stacked("bias_ih"), stacked("bias_hh")

    def _run_layers(self, x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], lengths: Optional[Tensor],
                    batch_first: bool):
        d = 2 if self.bidirectional else 1
        lstm = cells.spec(self._cell).has_cell_state
        dt = dispatch.sequence_autocast_dtype(self.family.name)  # CPU autocast: torch's module's dtype
        if dt is not None:
            x, h0, c0 = (None if t is None else t.to(dt) for t in (x, h0, c0))
        hs, cs = [], []
        for layer in range(self.num_layers):
            sl = slice(layer * d, (layer + 1) * d)
            out = ops.sequence(self._cell, x, *self._layer_weights(layer, dt),
                               h0[sl] if h0 is not None else None,
                               c0[sl] if (lstm and c0 is not None) else None, lengths, batch_first)
            x = out[0]
            hs.append(out[1])
            if lstm:
                cs.append(out[2])
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        return x, torch.cat(hs), (torch.cat(cs) if lstm else None)

    def forward(self, input, hx=None):  # noqa: C901  (mirrors torch's forward, branch for branch)
        if not self.fused_kernel_applies(input):
            return super().forward(input, hx)
        self._update_flat_weights()
        lstm = cells.spec(self._cell).has_cell_state
        name = self.family.dropin
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is not None:
                hx = self.permute_hidden(hx, sorted_indices)
                self.check_forward_args(data, hx, batch_sizes)
            else:
                self.check_input(data, batch_sizes)
            # Padded (T, B, C) in the packed (sorted) batch order; the kernel honours the lengths.
            x, lengths = torch.ops.aten._pad_packed_sequence(data, batch_sizes, False, 0.0, batch_sizes.numel())
            h0, c0 = (hx if lstm else (hx, None)) if hx is not None else (None, None)
            y, h_n, c_n = self._run_layers(x, h0, c0, lengths, False)
            out_data, _ = torch.ops.aten._pack_padded_sequence(y, lengths, False)
            hidden = (h_n, c_n) if lstm else h_n
            return (PackedSequence(out_data, batch_sizes, sorted_indices, unsorted_indices),
                    self.permute_hidden(hidden, unsorted_indices))

        if input.dim() not in (2, 3):
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        if hx is not None:
            parts = hx if lstm else (hx,)
            want = 3 if is_batched else 2
            if any(h.dim() != want for h in parts):
                dims = ", ".join(f"{h.dim()}-D" for h in parts)
                what = "hx and cx" if lstm else "hx"
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(f"For {kind} input, {what} should also be {want}-D but got ({dims}) tensors")
            if not is_batched:
                hx = tuple(h.unsqueeze(1) for h in parts) if lstm else hx.unsqueeze(1)
            self.check_forward_args(input, hx, None)
        else:
            self.check_input(input, None)
        if input.size(1 if self.batch_first else 0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")  # torch's check and words
        h0, c0 = (hx if lstm else (hx, None)) if hx is not None else (None, None)
        y, h_n, c_n = self._run_layers(input, h0, c0, None, self.batch_first)
        if not is_batched:
            y = y.squeeze(batch_dim)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if lstm else None
        return y, ((h_n, c_n) if lstm else h_n)


def dropin_class(fam: cells.Family) -> type:
    """The drop-in class of a cell-table row: ``fam.torch_module`` with the fused kernel."""
    torch_name = fam.torch_module.__name__
    return cells.family_class(fam.dropin, (_FusedRNNMixin, fam.torch_module), fam, __name__,
                              f"``torch.nn.{torch_name}`` with the fused CPU kernel; same arguments, parameters "
                              "and outputs.")


for _fam in cells.FAMILIES:
    globals()[_fam.dropin] = dropin_class(_fam)

_OURS = {f.torch_module: globals()[f.dropin] for f in cells.FAMILIES}
_TORCHS = {ours: theirs for theirs, ours in _OURS.items()}

__all__ = ["replace_rnns", "to_torch", "dropin_class"] + [f.dropin for f in cells.FAMILIES]


def _swap_class(module: nn.Module, table) -> nn.Module:
    # A new module object of the other class sharing this one's state: the very same Parameter
    # objects (so optimizers and weight tying keep working), buffers, hooks and training mode.
    new = table[type(module)].__new__(table[type(module)])
    new.__dict__.update(module.__dict__)
    return new


def _convert(model: nn.Module, table) -> nn.Module:
    if type(model) in table:
        return _swap_class(model, table)
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) in table]
    for parent, name, child in swaps:
        setattr(parent, name, _swap_class(child, table))
    return model


def replace_rnns(model: nn.Module) -> nn.Module:
    """Swaps every ``torch.nn.GRU`` / ``LSTM`` / ... of the cell table in ``model`` (exact class, not
    subclasses) for ``brnnseg_kernels.nn.GRU`` / ``LSTM`` / ..., keeping the parameters; returns the model
    (or the new module when ``model`` itself is one)."""
    return _convert(model, _OURS)


def to_torch(model: nn.Module) -> nn.Module:
    """The inverse of :func:`replace_rnns`: our drop-ins back to ``torch.nn.GRU`` / ``LSTM`` / ...."""
    return _convert(model, _TORCHS)
