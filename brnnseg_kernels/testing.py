"""Test support: the CUDA sweep path on CPU tensors, through the SIMT simulator.

``simulated_cuda()`` makes CPU tensors take the CUDA dispatch rules (``brnnseg_kernels.dispatch``:
float32/float16/bfloat16 kernels, the CUDA hidden-size limit, mode="parallel" pair launches) and runs
the four device sweep ops (``brnnseg::sweep``, ``sweep_backward``, ``sweep_pair``,
``sweep_pair_backward``) on the CUDA kernels compiled by g++ under the simulator (the ``_sim``
extension of a source build; ``BRNNSEG_SIM_MODULE`` picks another, e.g. the AddressSanitizer build):
the same host code (csrc/cuda/sweep_host.h), launch planner, kernels and checks as on a GPU, with CPU
GEMMs in place of cuBLAS. The GPU tests (tests/test_sweep_cuda.py) run their bodies this way where no
GPU is present, so test code written for a GPU is executed in CI.

For tests only: wheels do not carry the simulator, and it is slow (every CUDA thread an OS thread).
"""
from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from typing import Iterator

import torch

from . import dispatch

__all__ = ["simulator_available", "simulated_cuda"]


def _sim_module_name() -> str:
    return os.environ.get("BRNNSEG_SIM_MODULE", "brnnseg_kernels._sim")


def simulator_available() -> bool:
    """Whether this build has the simulator extension (source builds; not wheels)."""
    try:
        importlib.import_module(_sim_module_name())
    except ImportError:
        return False
    return hasattr(torch.ops, "brnnseg_sim") and hasattr(torch.ops.brnnseg_sim, "sweep")


class _Simulation:
    """The registered CPU overrides of the sweep ops and the dispatch switch, while active."""

    def __init__(self, gpu: str):
        self.gpu = gpu
        self.lib = None

    def activate(self) -> None:
        sim = torch.ops.brnnseg_sim
        extra = (self.gpu, 0, False)  # the GPU to play, its own shared-memory budget, no forced L2 weights

        def sweep(cell, x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training):
            return sim.sweep(cell, x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training, *extra)

        def sweep_backward(cell, grad_y, x, w_ih, w_hh, y, workspace, axis):
            return sim.sweep_backward(cell, grad_y, x, w_ih, w_hh, y, workspace, axis, *extra)

        def sweep_pair(cell, x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ih_c, w_hh_c, b_ih_c, b_hh_c, channels_last,
                       training):
            return sim.sweep_pair(cell, x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ih_c, w_hh_c, b_ih_c, b_hh_c,
                                  channels_last, training, *extra)

        def sweep_pair_backward(cell, grad_y, x, w_ih_r, w_hh_r, w_ih_c, w_hh_c, y, ws_r, ws_c):
            return sim.sweep_pair_backward(cell, grad_y, x, w_ih_r, w_hh_r, w_ih_c, w_hh_c, y, ws_r, ws_c, *extra)

        self.lib = torch.library.Library("brnnseg", "IMPL")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "overriding a previously registered kernel": the point here
            for name, fn in (("sweep", sweep), ("sweep_backward", sweep_backward), ("sweep_pair", sweep_pair),
                             ("sweep_pair_backward", sweep_pair_backward)):
                self.lib.impl(name, fn, "CPU")
        dispatch._SIMULATED_CUDA = True

    def deactivate(self) -> None:
        dispatch._SIMULATED_CUDA = False
        if self.lib is not None:
            self.lib._destroy()  # the CPU kernels are registered again
            self.lib = None


_active: "_Simulation | None" = None


@contextlib.contextmanager
def simulated_cuda(gpu: str = "h100") -> Iterator[None]:
    """Within the block, sweeps of CPU tensors follow the CUDA rules and run the CUDA kernels under the
    simulator, planned and checked for ``gpu`` ("a100", "h100", "h200"). Not re-entrant."""
    global _active
    if not simulator_available():
        raise RuntimeError(f"simulated_cuda: no simulator extension ({_sim_module_name()}) in this build; "
                           "build from source with BRNNSEG_BUILD_SIM=1 (the default)")
    if _active is not None:
        raise RuntimeError("simulated_cuda: already active")
    _active = _Simulation(gpu)
    try:
        _active.activate()
        yield
    finally:
        _active.deactivate()
        _active = None


def simulated_gpu() -> "str | None":
    """The GPU simulated_cuda() plays ("h100", ...), or None outside it."""
    return None if _active is None else _active.gpu


def _suspend() -> None:
    """Inside simulated_cuda(): the CPU kernels again until _resume() (tests computing CPU expectations)."""
    if _active is None:
        raise RuntimeError("simulated_cuda is not active")
    _active.deactivate()


def _resume() -> None:
    if _active is None:
        raise RuntimeError("simulated_cuda is not active")
    _active.activate()
