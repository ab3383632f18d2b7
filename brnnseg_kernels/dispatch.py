"""Which kernel an input takes, and in which dtype: the one place that decides.

* Sweeps (``functional.sweep`` / ``renet``): the fused CPU kernel in float32/float64/bfloat16 (bfloat16
  keeps float32 state and runs its products in bfloat16 on AMX tiles or AVX512-BF16; float16 inputs are
  computed in float32 and cast back), except bfloat16 LSTM sweeps on CPUs whose AMX-BF16 tiles torch uses
  and ours may not (capped, or refused by the OS), which go to torch's fused LSTM (faster there:
  :func:`cpu_bf16_lstm_path`); the fused CUDA kernel in float32/float16/bfloat16 when the build has CUDA and
  the hidden size fits it (``torch.ops.brnnseg.sweep_limits``, from the C++ planner) and it is not
  slower than permute + cuDNN there (measured per GPU, else the calibrated model: :func:`cuda_backend`,
  :mod:`brnnseg_kernels.tuning`; else cuDNN, through torch's own RNN op, runs it); under autocast
  (CUDA, or CPU with bfloat16), the autocast dtype (like cuDNN's nn.GRU); the plain-PyTorch reference
  anywhere else (other devices, a build without CUDA kernels).
* Sequences (the drop-in ``nn.GRU/LSTM/RNN``): the fused CPU kernel for float32/float64/bfloat16 CPU input
  with weights of the same dtype, not under TorchScript, no LSTM projections; under CPU autocast with
  bfloat16, the dtype torch's own module would compute in (bfloat16 for LSTM and RNN, whose oneDNN
  kernels are on autocast's list; float32 for GRU, which is not); torch's own forward otherwise.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["CPU_DTYPES", "CUDA_DTYPES", "cuda_max_hidden", "has_kernel", "sweep_path", "sweep_decision", "cuda_backend",
           "recording", "explain", "loss_path", "pair_kernel_applies",
           "sequence_kernel_applies", "sequence_autocast_dtype", "cpu_bf16_lstm_path"]

CPU_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Set only inside brnnseg_kernels.testing.simulated_cuda(): CPU tensors then follow the CUDA rules below
# and the sweep ops run the CUDA kernels under the SIMT simulator, so the GPU tests run in CI.
_SIMULATED_CUDA = False


def _device_type(device: torch.device) -> str:
    """The device type whose rules apply: "cuda" for CPU tensors under simulated_cuda()."""
    return "cuda" if _SIMULATED_CUDA and device.type == "cpu" else device.type


@functools.lru_cache(maxsize=None)
def cuda_max_hidden() -> int:
    """Largest hidden size of the fused CUDA sweep kernel (one thread per hidden unit), from C++."""
    return int(torch.ops.brnnseg.sweep_limits()[0])


def has_kernel(device: torch.device) -> bool:
    """Whether this build has fused sweep kernels for the device (on a GPU whose arch the build cannot
    run, a RuntimeError that says so: :func:`check_cuda_arch`)."""
    if device.type == "meta":
        return True
    if device.type == "cpu":  # under simulated_cuda(): the CUDA kernels, which a CPU-only build lacks
        return _build_info_with_cuda() if _SIMULATED_CUDA else True
    if device.type == "cuda":
        from . import build_info

        info = build_info()
        if not info.get("with_cuda"):
            return False
        check_cuda_arch(info.get("cuda_archs", ""), torch.cuda.get_device_capability(device))
        return True
    return False


def _build_info_with_cuda() -> bool:
    from . import build_info

    return bool(build_info().get("with_cuda"))


def arch_runs(archs: str, capability) -> bool:
    """Whether code built for ``archs`` (TORCH_CUDA_ARCH_LIST form, "8.0;9.0+PTX") runs on a GPU of
    ``capability`` (major, minor): a cubin runs on its own major at an equal or higher minor; PTX is
    compiled by the driver for any GPU at or above its arch."""
    major, minor = capability
    for entry in archs.replace(" ", ";").split(";"):
        entry = entry.strip()
        if not entry:
            continue
        ptx = entry.endswith("+PTX")
        a_major, _, a_minor = entry.replace("+PTX", "").partition(".")
        try:
            a = (int(a_major), int(a_minor or 0))
        except ValueError:
            continue
        if (a[0] == major and a[1] <= minor) or (ptx and a <= (major, minor)):
            return True
    return False


@functools.lru_cache(maxsize=None)
def check_cuda_arch(archs: str, capability) -> None:
    """RuntimeError naming the GPU's arch and the build's when the CUDA kernels cannot run there."""
    if archs and not arch_runs(archs, tuple(capability)):
        raise RuntimeError(
            f"brnnseg_kernels: this GPU is sm_{capability[0]}{capability[1]}, but the CUDA kernels were built for "
            f"{archs} (no code that runs there, and no PTX at or below it). Rebuild with "
            f"TORCH_CUDA_ARCH_LIST=\"{capability[0]}.{capability[1]}\" (pip install --no-build-isolation .) or "
            "install a wheel built for it.")


BF16_LSTM_CHOICES = ("auto", "kernel", "torch")


def cpu_bf16_lstm_path() -> str:
    """Who runs bfloat16 LSTM sweeps on the CPU: "kernel" (ours) or "torch" (permute + torch's fused
    ``torch.lstm``, oneDNN's). ``BRNNSEG_CPU_BF16_LSTM=kernel|torch`` decides; ``auto`` (the default)
    takes ours wherever our products run on the best unit the CPU has, and torch's on a CPU with
    AMX-BF16 whose tiles ours may not use (BRNNSEG_CPU_ISA below amx_bf16, or the OS refused the tile
    state): oneDNN runs its LSTM GEMMs on AMX there, and ours on AVX512-BF16 measured 0.40-0.67x of it
    under no_grad on a 2-core Xeon. With our products on AMX, the same Xeon measured ours at 1.8-2.7x
    torch's forward+backward and 1.55-2.1x under no_grad on cpu-med, cpu-hires and cpu-wide
    (benchmarks/README.md, 2026-12-07); without AMX (an EPYC with AVX512-BF16) 1.3-3.3x."""
    choice = os.environ.get("BRNNSEG_CPU_BF16_LSTM", "auto") or "auto"
    if choice not in BF16_LSTM_CHOICES:
        raise ValueError(f"BRNNSEG_CPU_BF16_LSTM must be one of {', '.join(BF16_LSTM_CHOICES)}, got {choice!r}")
    if choice != "auto":
        return choice
    return "torch" if _cpu_has_amx_bf16() and not _amx_products() else "kernel"


@functools.lru_cache(maxsize=None)
def _amx_products() -> bool:
    """Our bfloat16 products run on AMX tiles (the CPU has them, the OS granted them, no cap)."""
    from . import cpu_isa

    return cpu_isa().get("bf16") == "amx_bf16"


@functools.lru_cache(maxsize=None)
def _cpu_has_amx_bf16() -> bool:
    from . import cpu_isa

    return cpu_isa().get("amx_bf16") == "yes"


def _cuda_arch(device: torch.device) -> tuple:
    """("sm_90", "h200")-style (arch, GPU name for the planner) of a CUDA device (the simulated GPU under
    simulated_cuda())."""
    if device.type != "cuda":
        from . import testing

        gpu = testing.simulated_gpu() or "h100"
        return {"a100": "sm_80"}.get(gpu, "sm_90"), gpu
    major, minor = torch.cuda.get_device_capability(device)
    arch = f"sm_{major}{minor}"
    return arch, {"sm_80": "a100", "sm_90": "h200"}.get(arch, "h100")


def cuda_backend(x: Tensor, hidden: int, cell: Optional[str], axis: Optional[int] = 3, training: bool = False,
                 autocast: bool = False) -> tuple:
    """("kernel" | "cudnn", why) for a CUDA sweep of x: our fused kernel, or permute + cuDNN (torch's
    own RNN op with the same weights), whichever the measured table (or, unmeasured, the calibrated
    model) says is faster: :mod:`brnnseg_kernels.tuning`. Sizes beyond our kernel go to cuDNN."""
    if cell is None or x.dim() != 4:
        return "kernel", "no cell or not a 4-D map: our kernel"
    n, _, h, w = x.shape
    lines, steps = (n * h, w) if axis == 3 else (n * w, h)
    index = x.device.index if x.device.type == "cuda" else -1
    return _cuda_decision(cell, str(x.dtype).replace("torch.", ""), int(hidden), int(lines), int(steps),
                          bool(training), bool(autocast), -1 if index is None else int(index))


@torch.compiler.assume_constant_result
def _cuda_decision(cell: str, dtype: str, hidden: int, lines: int, steps: int, training: bool, autocast: bool,
                   index: int) -> tuple:
    """The decision of :func:`cuda_backend` from plain values: under torch.compile it runs once while
    tracing and its result is a constant of the graph (it reads tables, the environment and the GPU)."""
    from . import tuning

    if hidden > cuda_max_hidden():
        return "cudnn", f"hidden {hidden} > {cuda_max_hidden()}, our kernel's largest: cuDNN"
    device = torch.device("cuda", index) if index >= 0 else torch.device("cpu")
    if index >= 0 and not torch.cuda.is_available():
        device = torch.device("cpu")
    arch, gpu = _cuda_arch(device)
    return tuning.cuda_choice(cell, dtype, hidden, lines, steps, training, arch, autocast, gpu)


def loss_path(logits: Tensor, loss: str) -> str:
    """"fused" or "unfused" for a call of a loss ("bce_dice", "ce_dice") on ``logits``: on CUDA, the side the
    measured table says is faster (:func:`brnnseg_kernels.tuning.loss_choice`); on every other device the
    fused op (the CPU kernels are measured 3.4-8x faster than the composition). Inside :func:`recording`,
    the decision is appended to the record with its reason."""
    if _device_type(logits.device) != "cuda":
        path, why = "fused", f"{logits.device.type}: the fused op"
    else:
        training = torch.is_grad_enabled() and logits.requires_grad
        index = logits.device.index if logits.device.type == "cuda" else -1
        path, why = _loss_decision(loss, tuple(int(s) for s in logits.shape), str(logits.dtype).replace("torch.", ""),
                                   bool(training), -1 if index is None else int(index))
    if _RECORD is not None:
        _RECORD.append(dict(loss=loss, dtype=str(logits.dtype).replace("torch.", ""), shape=tuple(logits.shape),
                            device=logits.device.type, path=path, why=why))
    return path


@torch.compiler.assume_constant_result
def _loss_decision(loss: str, shape: tuple, dtype: str, training: bool, index: int) -> tuple:
    """:func:`loss_path`'s CUDA decision from plain values (a constant of a torch.compile graph)."""
    from . import tuning

    device = torch.device("cuda", index) if index >= 0 and torch.cuda.is_available() else torch.device("cpu")
    arch, _ = _cuda_arch(device)
    return tuning.loss_choice(loss, shape, dtype, training, arch)


def sweep_decision(x: Tensor, hidden: int, cell: Optional[str] = None, axis: Optional[int] = 3,
                   training: bool = False, autocast: bool = False) -> tuple:
    """(path, why) for a sweep of x: see :func:`sweep_path`."""
    if not has_kernel(x.device):
        return "reference", f"no fused kernel for {x.device.type} tensors in this build: the plain-PyTorch reference"
    if _device_type(x.device) == "cuda":
        if x.dtype not in CUDA_DTYPES:
            return "reference", f"{x.dtype} on CUDA: no fused kernel, the plain-PyTorch reference"
        if cell is None:
            ok = hidden <= cuda_max_hidden()
            return ("kernel", "our CUDA kernel") if ok else ("reference", "hidden too large: the reference")
        backend, why = cuda_backend(x, hidden, cell, axis, training, autocast)
        return ("kernel" if backend == "kernel" else "torch"), why
    if x.dtype == torch.bfloat16 and cell == "lstm" and x.device.type == "cpu" and cpu_bf16_lstm_path() == "torch":
        why = ("BRNNSEG_CPU_BF16_LSTM=torch" if os.environ.get("BRNNSEG_CPU_BF16_LSTM") == "torch" else
               "bfloat16 LSTM on a CPU with AMX-BF16 that our products may not use (capped or refused): torch's "
               "fused LSTM (oneDNN on AMX tiles) is faster there")
        return "torch", why
    if x.dtype in CPU_DTYPES:
        return "kernel", f"our CPU kernel in {str(x.dtype).replace('torch.', '')}"
    return "kernel-float32", f"our CPU kernel on a float32 copy ({x.dtype} is computed in float32)"


def sweep_path(x: Tensor, hidden: int, cell: Optional[str] = None, axis: Optional[int] = 3, training: bool = False,
               autocast: bool = False) -> str:
    """"kernel", "kernel-float32" (CPU kernel on a float32 copy), "torch" (torch's fused RNN -- cuDNN on a
    GPU, oneDNN on the CPU -- where it is faster than ours: :func:`cuda_backend`,
    :func:`cpu_bf16_lstm_path`) or "reference", for a sweep of x (after any autocast cast; `training`:
    gradients will flow; `autocast`: x was cast by autocast). Inside :func:`recording`, each decision is
    also appended to the record with its reason."""
    path, why = sweep_decision(x, hidden, cell, axis, training, autocast)
    _record(x, cell, axis, training, autocast, path, why)
    return path


_RECORD: Optional[list] = None


def _record(x: Tensor, cell, axis, training, autocast: bool, path: str, why: str) -> None:
    """Appends one decision to the open :func:`recording`, if any."""
    if _RECORD is not None:
        _RECORD.append(dict(cell=cell, dtype=str(x.dtype).replace("torch.", ""), shape=tuple(x.shape), axis=axis,
                            device=x.device.type, training=training, autocast=autocast, path=path, why=why))


@contextlib.contextmanager
def recording():
    """Collects every sweep decision made inside the block (``brnnseg_kernels.explain``)."""
    global _RECORD
    saved, _RECORD = _RECORD, []
    try:
        yield _RECORD
    finally:
        _RECORD = saved


def autocast_dtype(x: Tensor) -> Optional[torch.dtype]:
    """The dtype a sweep runs in under autocast (weights cast like nn.GRU's under cuDNN), or None: CUDA
    autocast's dtype; CPU autocast's (bfloat16, or float16 computed in float32 and returned in float16)."""
    if x.device.type in ("cuda", "cpu") and torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return None


def pair_kernel_applies(x: Tensor, weights: Sequence[Optional[Tensor]], hidden: int, cell: Optional[str] = None) -> bool:
    """The pair op (mode="parallel") takes the inputs as they are: no autocast casts, kernel dtypes,
    fused-kernel sizes, and sweeps our kernel runs (:func:`sweep_path`)."""
    same_dtype = all(t is None or t.dtype == x.dtype for t in weights)
    ok = False
    if _device_type(x.device) == "cpu":
        ok = (same_dtype and x.dtype in CPU_DTYPES and autocast_dtype(x) is None
              and sweep_decision(x, hidden, cell)[0] == "kernel")
    elif _device_type(x.device) == "cuda":
        # Our pair op where both sweeps would take our kernel.
        training = torch.is_grad_enabled() and (x.requires_grad or any(t is not None and t.requires_grad for t in weights))
        ok = (same_dtype and has_kernel(x.device) and x.dtype in CUDA_DTYPES and hidden <= cuda_max_hidden()
              and autocast_dtype(x) is None and sweep_decision(x, hidden, cell, 3, training)[0] == "kernel"
              and sweep_decision(x, hidden, cell, 2, training)[0] == "kernel")
    if ok:
        _record(x, cell, "rows+cols", None, False, "kernel",
                "our pair op: both sweeps of a parallel block in one call (one launch on a GPU)")
    return ok


def sequence_autocast_dtype(family: str) -> Optional[torch.dtype]:
    """The dtype a drop-in computes in under CPU autocast, as torch's own module does: bfloat16 for the
    LSTM and the Elman RNN (oneDNN's ``mkldnn_rnn_layer`` is on autocast's lower-precision list), float32
    for the GRU (it is not); None outside CPU autocast. Under float16 CPU autocast torch's modules fail
    or run float32, so ours defer to them (``sequence_kernel_applies`` is False)."""
    if not torch.is_autocast_enabled("cpu"):
        return None
    if torch.get_autocast_dtype("cpu") != torch.bfloat16:
        return None
    return torch.float32 if family == "gru" else torch.bfloat16


def sequence_kernel_applies(data, flat_weights: Sequence[Tensor], proj_size: int = 0, family: str = "gru") -> bool:
    """Whether a drop-in RNN's forward runs on the fused sequence kernel (else on torch's)."""
    if not isinstance(data, Tensor) or data.device.type != "cpu":
        return False
    if data.dtype not in CPU_DTYPES or proj_size > 0:
        return False
    if torch.jit.is_scripting():
        return False
    if torch.is_autocast_enabled("cpu"):
        # autocast casts float32 modules' inputs and weights; other dtypes it leaves to torch's module
        if sequence_autocast_dtype(family) is None or data.dtype != torch.float32:
            return False
        return all(w.dtype == torch.float32 and w.device == data.device for w in flat_weights)
    return all(w.dtype == data.dtype and w.device == data.device for w in flat_weights)


def explain(module, *inputs, **kwargs) -> str:
    """Which path every sweep of ``module(*inputs, **kwargs)`` takes, and why: runs the call (with the
    grad mode and autocast state of the caller: they decide) and reports each decision, e.g.
    ``print(bk.explain(model, x))``. ``module``: any callable (a model, a layer, ``functional.renet``)."""
    with recording() as rec:
        module(*inputs, **kwargs)
    if not rec:
        return "no sweep or loss ran (no ReNet layer or loss of brnnseg_kernels in this call)"
    lines = []
    sweeps = [r for r in rec if "loss" not in r]
    for r in rec:
        if "loss" in r:
            lines.append(f"loss {r['loss']}: {r['device']} {r['dtype']} {tuple(r['shape'])} -> "
                         f"{_PATH_NAMES[r['path']]}: {r['why']}")
    for i, r in enumerate(sweeps):
        axis = {3: "rows", 2: "cols"}.get(r["axis"], r["axis"])
        mode = "" if r["training"] is None else (" training" if r["training"] else " inference")
        lines.append(f"sweep {i}: {r['cell']} {axis} of {r['device']} {r['dtype']} {tuple(r['shape'])}{mode}"
                     f"{' (autocast)' if r['autocast'] else ''} -> {_PATH_NAMES.get(r['path'], r['path'])}: {r['why']}")
    return "\n".join(lines)


_PATH_NAMES = {"fused": "the fused loss op", "unfused": "the unfused composition (losses.unfused)",
               "kernel": "our fused kernel", "kernel-float32": "our fused kernel (float32 copy)",
               "torch": "torch's fused RNN (cuDNN on a GPU, oneDNN on the CPU)", "reference": "the PyTorch reference"}
