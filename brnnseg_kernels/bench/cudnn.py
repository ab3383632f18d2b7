"""Which cuDNN RNN algorithm the GPU baseline ran, and its time per recurrent step.

PyTorch picks the algorithm itself, per call (``get_algo`` in aten/src/ATen/native/cudnn/RNN.cpp): for an
input that is not packed and not float64 it takes ``CUDNN_RNN_ALGO_PERSIST_STATIC_SMALL_H`` on sm_60+ when
the hidden size is small (GRU/LSTM: <= 192 forward, <= 128 backward; RNN_TANH/RELU: <= 384 / <= 256), else
``PERSIST_STATIC`` for float16 on a narrow set of single-layer unidirectional shapes, else ``STANDARD``.
The persistent small-h algorithm is the strong baseline (PyTorch PR #62143 measured 0.66-0.9 us per step
at hidden 40-72), so a benchmark has to say which one ran:

* :func:`predicted_algorithm` applies those rules to a call's shape (what PyTorch will ask cuDNN for);
* :func:`observed_algorithm` profiles one call and reads the CUDA kernel names cuDNN launched (a name with
  "persist" in it: a persistent algorithm), keeping the names so a reader can check the call;
* :func:`per_step_us`: a ReNet block runs W + H recurrent steps one after the other (the row sweep, then
  the column sweep; both directions of a sweep run at once), so its time per step is time / (W + H).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch

STANDARD = "standard"
PERSIST_STATIC = "persist_static"
PERSIST_STATIC_SMALL_H = "persist_static_small_h"


def predicted_algorithm(mode: str, hidden: int, input_size: int, batch: int, seq_len: int,
                        dtype: torch.dtype, forward: bool, *, num_layers: int = 1, bidirectional: bool = True,
                        proj_size: int = 0, packed: bool = False,
                        capability: tuple = (9, 0), sm_count: int = 132) -> str:
    """The algorithm PyTorch's cuDNN RNN asks for, by its rules (RNN.cpp ``get_algo``,
    ``use_rnn_persist_small_h``, ``use_persist_common_heuristics``, ``use_persist_device_heuristics``).
    mode: "gru", "lstm", "rnn_tanh" or "rnn_relu"; capability: the device's (major, minor)."""
    if mode not in ("gru", "lstm", "rnn_tanh", "rnn_relu"):
        raise ValueError(f"mode: expected 'gru', 'lstm', 'rnn_tanh' or 'rnn_relu', got {mode!r}")
    major, minor = capability
    if proj_size != 0 or packed:
        return STANDARD
    gated = mode in ("gru", "lstm")
    if dtype != torch.float64 and major >= 6:
        small_h = (192 if gated else 384) if forward else (128 if gated else 256)
        if hidden <= small_h:
            return PERSIST_STATIC_SMALL_H
    if dtype == torch.float16:
        common = (num_layers == 1 and hidden <= 1024 and not bidirectional and hidden % 128 == 0
                  and input_size % 128 == 0)
        if common and _persist_device_rule(mode, hidden, batch, seq_len, major, minor, sm_count):
            return PERSIST_STATIC
    return STANDARD


def _persist_device_rule(mode, hidden, batch, seq_len, major, minor, sm_count) -> bool:
    if major == 7:
        if minor == 5:
            return False
        return (((batch % 16 == 0 and batch not in (80, 112)) or batch == 8)
                and ((seq_len >= 40 and batch <= 128) or (seq_len >= 20 and batch <= 96)
                     or (seq_len >= 10 and batch <= 32)))
    if major >= 8 and sm_count >= 98 and minor != 6:
        if mode == "gru":
            return False
        if mode == "lstm":
            return batch % 8 == 0 and batch <= 128
        return batch % 8 == 0 and batch <= 128 and (batch < 96 or hidden < 896)
    return False


def classify_kernels(names: List[str]) -> str:
    """"persistent" when a launched kernel's name says so, "standard" when there were kernels and none
    did, "unknown" when nothing was recorded."""
    if not names:
        return "unknown"
    return "persistent" if any("persist" in n.lower() for n in names) else STANDARD


def observed_algorithm(fn: Callable[[], object]) -> Dict[str, object]:
    """Profile one call of fn on the GPU: {"algorithm": persistent | standard | unknown, "kernels": the
    distinct CUDA kernel names, longest total time first}."""
    from torch.profiler import ProfilerActivity

    from .timing import profiled

    fn()  # warm-up (cuDNN plans, the weight buffer) outside the profile
    torch.cuda.synchronize()
    prof = profiled(lambda: (fn(), torch.cuda.synchronize()), [ProfilerActivity.CUDA])
    totals: Dict[str, float] = {}
    for e in prof.key_averages():
        t = getattr(e, "device_time_total", None)
        if t is None:
            t = getattr(e, "cuda_time_total", 0.0)
        if t:
            totals[e.key] = totals.get(e.key, 0.0) + t
    names = sorted(totals, key=totals.get, reverse=True)
    return {"algorithm": classify_kernels(names), "kernels": names[:8]}


def per_step_us(ms: float, shape) -> float:
    """Time per recurrent step of a ReNet block on (N, C, H, W, hidden): ms / (W + H), in us."""
    _, _, h, w, _ = shape
    return ms * 1e3 / (w + h)


def baseline_record(cell: str, shape, dtype: torch.dtype, module: Optional[torch.nn.Module] = None,
                    x: Optional[torch.Tensor] = None) -> Dict[str, object]:
    """What PyTorch asks cuDNN for on the ReNet baseline's two calls (rows: batch N*H, length W, input C;
    columns: batch N*W, length H, input 2*hidden), forward and backward, and -- given the module and an
    input on a GPU -- what the profiler saw it launch for one forward+backward."""
    from .. import cells as cell_table

    n, c, h, w, hid = shape
    mode = cell_table.family(cell).kernel()  # the cell torch's module runs: gru, lstm, rnn_tanh
    cap, sms = (9, 0), 132
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(torch.cuda.current_device())
        cap, sms = (p.major, p.minor), p.multi_processor_count
    calls = {"rows": (n * h, w, c), "cols": (n * w, h, 2 * hid)}
    rec: Dict[str, object] = {"predicted": {
        f"{name} {'fwd' if fwd else 'bwd'}": predicted_algorithm(mode, hid, cin, b, t, dtype, fwd,
                                                                  capability=cap, sm_count=sms)
        for name, (b, t, cin) in calls.items() for fwd in (True, False)}}
    if module is not None and x is not None and x.is_cuda:
        def step():
            x.grad = None
            module(x).sum().backward()
        rec["observed"] = observed_algorithm(step)
    return rec
