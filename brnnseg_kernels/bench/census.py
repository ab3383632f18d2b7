"""What one call costs the host: the ATen operations it dispatches, the Triton kernels it launches, and
the operations that make the host wait for the GPU (issue 22: on the H200 the fused losses spent their
1.8-3.1 ms in launches and synchronisations, not in their kernels).

    with census(losses._kernels) as c:
        loss = bk.functional.bce_dice_loss(x, y); loss.backward()
    c.launches, c.aten, c.syncs

Runs on any device: on CPU tensors (the Triton kernels under TRITON_INTERPRET=1) it sees the same
Python path a CUDA call takes. A synchronisation is counted where it would happen on a GPU:
``.item()``/``bool()`` of a tensor (``_local_scalar_dense``, ``is_nonzero``), and a tensor made from
Python data (``lift_fresh``: ``torch.tensor(...)``, which on a GPU is a host-to-device copy that waits).
On a GPU, ``torch.cuda.set_sync_debug_mode("error")`` is the ground truth; tests use both.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import List

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Operations that only allocate (no kernel launch on a GPU) and views (no work at all).
FREE = {"empty.memory_format", "empty_strided.default", "empty_like.default", "new_empty.default",
        "new_empty_strided.default", "view.default", "_unsafe_view.default", "as_strided.default",
        "expand.default", "detach.default", "alias.default", "unbind.int", "select.int", "slice.Tensor",
        "t.default", "permute.default", "reshape.default", "unsqueeze.default", "squeeze.dim", "squeeze.default"}
# Operations after which the host waits for the device, on a GPU.
SYNCS = {"_local_scalar_dense.default", "is_nonzero.default", "item.default", "equal.default", "nonzero.default",
         "lift_fresh.default", "lift_fresh_copy.default"}


@dataclasses.dataclass
class Census:
    aten: List[str] = dataclasses.field(default_factory=list)      # every dispatched ATen op
    launches: List[str] = dataclasses.field(default_factory=list)  # Triton kernels launched
    syncs: List[str] = dataclasses.field(default_factory=list)     # ops that wait for the device
    _launching: bool = False

    @property
    def work(self) -> List[str]:
        """ATen ops that launch device work (allocations and views left out)."""
        return [op for op in self.aten if op not in FREE]

    def summary(self) -> dict:
        return {"triton_launches": len(self.launches), "aten_ops_with_work": len(self.work),
                "host_syncs": len(self.syncs), "launch_names": list(self.launches), "aten_names": self.work,
                "sync_names": list(self.syncs)}


class _Mode(TorchDispatchMode):
    def __init__(self, rec: Census):
        super().__init__()
        self.rec = rec

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.rec._launching:  # the interpreter's own copies of a launch's arguments
            return func(*args, **(kwargs or {}))
        name = f"{func._opname}.{func._overloadname}"
        self.rec.aten.append(name)
        if name in SYNCS:
            self.rec.syncs.append(name)
        return func(*args, **(kwargs or {}))


class _Counted:
    """A Triton kernel whose launches (``kernel[grid](...)``) are recorded."""

    def __init__(self, kernel, name: str, rec: Census):
        self._kernel, self._name, self._rec = kernel, name, rec

    def __getitem__(self, grid):
        launch = self._kernel[grid]

        def run(*args, **kwargs):
            self._rec.launches.append(self._name)
            self._rec._launching = True
            try:
                return launch(*args, **kwargs)
            finally:
                self._rec._launching = False
        return run

    def __getattr__(self, item):
        return getattr(self._kernel, item)


def _kernels_of(module):
    import triton

    kinds = tuple(k for k in (getattr(triton.runtime, "JITFunction", None),
                              getattr(getattr(triton.runtime, "interpreter", None), "InterpretedFunction", None))
                  if k is not None)
    # Launched kernels are named *_kernel; the other jitted functions are device-side helpers.
    return {name: obj for name, obj in vars(module).items() if isinstance(obj, kinds) and name.endswith("_kernel")}


@contextlib.contextmanager
def census(*kernel_modules):
    """Records the ATen ops, the launches of the Triton kernels defined in ``kernel_modules`` and the
    host synchronisations of everything run inside the block (forward and backward alike)."""
    rec = Census()
    saved = []
    try:
        for mod in kernel_modules:
            for name, kernel in _kernels_of(mod).items():
                saved.append((mod, name, kernel))
                setattr(mod, name, _Counted(kernel, name, rec))
        with _Mode(rec):
            yield rec
    finally:
        for mod, name, kernel in saved:
            setattr(mod, name, kernel)
