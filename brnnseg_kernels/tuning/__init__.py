"""Which backend runs a CUDA sweep: our fused kernel or permute + cuDNN (torch's own GRU/LSTM/RNN ops,
with the same weights), whichever is faster -- "never slower than what users have".

The decision (:func:`cuda_choice`) reads a table measured on a GPU and shipped here, one file per
architecture (``sm90.json``: the H200 run of 2026-12-04): the ReNet block (rows then columns), ours
against the permute + cuDNN block in the same process, forward+backward and under no_grad, per cell,
dtype, hidden size and shape. A sweep takes the nearest measured row of its cell and dtype (hidden size
within 2x, positions within 16x) in its mode (training: forward+backward; else no_grad) and the faster
side of it. Where no row is near, the calibrated model (``plan.estimate_calibrated``) prices our forward
step against cuDNN's measured forward step at the nearest hidden size (``cudnn_steps``). Where neither
exists (an architecture without a table), ours runs, as before.

``BRNNSEG_CUDA_BACKEND=kernel|cudnn`` forces a side (``auto``: the default); :func:`explain` says which
backend an input takes and why.

The losses the same way (:func:`loss_choice`): the fused op (``bce_dice_loss`` / ``ce_dice_loss``) or the
unfused composition of plain tensor ops (``losses.unfused``), by the table's ``loss`` rows, forward+backward,
fused against unfused in the same process. A row records the ``revision`` of the fused path it timed
(:data:`LOSS_REVISION`). A row of the current revision near the call decides. Until the current revision has
been measured on that GPU, the last measurement of an older one decides, and says so: a fused path measured
slower stays behind the unfused one until a GPU shows the new one faster (``tune`` measures it).
``BRNNSEG_CUDA_LOSS=fused|unfused`` forces a side.
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Tuple

__all__ = ["BACKENDS", "LOSS_BACKENDS", "LOSS_REVISION", "backend_env", "loss_backend_env", "table", "cuda_choice",
           "loss_choice"]

BACKENDS = ("auto", "kernel", "cudnn")
LOSS_BACKENDS = ("auto", "fused", "unfused")
# The fused CUDA path of each loss, as timed by a table row's "revision". 1: the sums op plus ~47 small tensor
# ops and a host synchronisation per call (the H200 run of 2026-12-04). 2: one op each way, two Triton
# launches forward and one backward, no synchronisation (2026-12-05). Bump it when the fused path changes.
LOSS_REVISION = {"bce_dice": 2, "ce_dice": 2}
# A measured row decides for sizes near it: hidden within 2x, positions (lines x steps) within 16x.
HIDDEN_SPAN = math.log(2.0)
POSITIONS_SPAN = math.log(16.0)


def backend_env() -> str:
    choice = os.environ.get("BRNNSEG_CUDA_BACKEND", "auto") or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"BRNNSEG_CUDA_BACKEND must be one of {', '.join(BACKENDS)}, got {choice!r}")
    return choice


def loss_backend_env() -> str:
    choice = os.environ.get("BRNNSEG_CUDA_LOSS", "auto") or "auto"
    if choice not in LOSS_BACKENDS:
        raise ValueError(f"BRNNSEG_CUDA_LOSS must be one of {', '.join(LOSS_BACKENDS)}, got {choice!r}")
    return choice


def _load_tables() -> Dict[str, Dict]:
    here = os.path.dirname(os.path.abspath(__file__))
    out = {}
    for name in sorted(os.listdir(here)):
        if name.startswith("sm") and name.endswith(".json"):
            with open(os.path.join(here, name)) as f:
                out["sm_" + name[2:-5]] = json.load(f)
    return out


_TABLES = _load_tables()  # read once at import: the decision also runs under torch.compile's tracing


def table(arch: str) -> Optional[Dict]:
    """The measured table of an architecture ("sm_90" -> sm90.json), or None."""
    return _TABLES.get(arch)


def _positions(row: Dict) -> int:
    n, _, h, w = row["shape"]
    return n * h * w


def nearest_row(rows: List[Dict], cell: str, dtype: str, hidden: int, positions: int) -> Optional[Dict]:
    """The measured block row of this cell and dtype nearest in (hidden, positions), if it is near."""
    best, best_d = None, None
    for r in rows:
        if r["cell"] != cell or r["dtype"] != dtype:
            continue
        dh = abs(math.log(hidden / r["hidden"]))
        dp = abs(math.log(max(positions, 1) / _positions(r)))
        if dh > HIDDEN_SPAN or dp > POSITIONS_SPAN:
            continue
        d = dh / HIDDEN_SPAN + dp / POSITIONS_SPAN
        if best_d is None or d < best_d:
            best, best_d = r, d
    return best


def _cudnn_step(steps: List[Dict], cell: str, dtype: str, hidden: int) -> Optional[Tuple[float, Dict]]:
    """cuDNN's forward microseconds per step, from the measured row of this cell and dtype nearest in
    hidden size. What was not measured is estimated on the side of cuDNN (so that ours is not chosen on a
    guess): float16 takes float32's time, the Elman cells the GRU's x 1/3 (one gate of three), a larger
    hidden size the nearest one's x the ratio of hidden sizes (its products grow with its square)."""
    dt = "float32" if dtype == "float16" else dtype
    elman = cell.startswith("rnn")
    cands = [s for s in steps if s["cell"] == ("gru" if elman else cell) and s["dtype"] == dt]
    if not cands:
        return None
    s = min(cands, key=lambda s: abs(math.log(hidden / s["hidden"])))
    us = s["cudnn_fwd_us_per_step"] * max(1.0, hidden / s["hidden"]) * (1 / 3 if elman else 1)
    return us, s


def cuda_choice(cell: str, dtype: str, hidden: int, lines: int, steps: int, training: bool, arch: str = "sm_90",
                autocast: bool = False, gpu: str = "h200") -> Tuple[str, str]:
    """("kernel" | "cudnn", why) for one CUDA sweep: `lines` sequences of `steps` steps, hidden size
    `hidden`, in `dtype` ("float32", "float16", "bfloat16"; `autocast`: cast there by torch.autocast from
    float32 modules). Our kernel only where measured (or, unmeasured, modelled) not slower."""
    forced = backend_env()
    if forced != "auto":
        return forced, f"BRNNSEG_CUDA_BACKEND={forced}"
    data = table(arch)
    if data is None:
        return "kernel", f"no measured table for {arch}: our kernel"
    mode = "fwd+bwd" if training else "no_grad"
    key = f"autocast-{dtype}" if autocast else dtype
    row = nearest_row(data["block"], cell, key, hidden, lines * steps)
    if row is None and autocast:
        row = nearest_row(data["block"], cell, dtype, hidden, lines * steps)
    if row is not None:
        ratio = row["cudnn_ms"][mode] / row["ours_ms"][mode]
        side = "kernel" if ratio >= 1.0 else "cudnn"
        n, c, h, w = row["shape"]
        return side, (f"measured on {data['gpu']} ({data['date']}): {row['cell']} {row['dtype']} hidden {row['hidden']} "
                      f"({n}, {c}, {h}, {w}) {mode}: cuDNN block {row['cudnn_ms'][mode]} ms, ours {row['ours_ms'][mode]} ms "
                      f"({ratio:.2f}x)")
    from .. import plan

    step = _cudnn_step(data.get("cudnn_steps", []), cell, dtype, hidden)
    if step is None or cell not in ("gru", "lstm", "rnn_tanh", "rnn_relu"):
        return "cudnn", f"no measured row near {cell} {key} hidden {hidden}, and no cuDNN step to model against: cuDNN"
    cudnn_us, ref = step
    try:
        launch = plan.launch_plan(cell, dtype, hidden, lines, False, gpu)
    except ValueError:
        return "cudnn", f"hidden {hidden}: beyond our kernel's plans: cuDNN"
    est = plan.estimate_calibrated(launch, gpu)
    if est is None:
        return "kernel", f"no calibrated model for {arch}: our kernel"
    ours_us = est.us_per_step * est.waves
    side = "kernel" if ours_us <= cudnn_us else "cudnn"
    return side, (f"no measured row near {cell} {key} hidden {hidden}; calibrated model: ours {ours_us:.2f} us/step "
                  f"forward vs cuDNN {cudnn_us:.2f} (measured, {ref['cell']} {ref['dtype']} hidden {ref['hidden']})")


def _loss_row_text(row: Dict, mode: str) -> str:
    u, f = row["unfused_ms"][mode], row["fused_ms"][mode]
    return (f"{row['loss']} {row['dtype']} {tuple(row['shape'])} {mode}: unfused {u} ms, fused {f} ms "
            f"({u / f:.2f}x), fused revision {row.get('revision', 1)}")


def loss_choice(loss: str, shape, dtype: str, training: bool, arch: str = "sm_90") -> Tuple[str, str]:
    """("fused" | "unfused", why) for one CUDA call of a loss ("bce_dice" or "ce_dice") on logits of
    ``shape`` and ``dtype`` ("float32", ...). The measured ``loss`` row of this loss nearest in size (the
    loss's dtype first, else float32's: both losses compute in float32) decides: rows that timed the
    current fused revision first, else the newest older revision. With no table for the architecture, or no
    row of this loss, the fused op runs, as before."""
    forced = loss_backend_env()
    if forced != "auto":
        return forced, f"BRNNSEG_CUDA_LOSS={forced}"
    data = table(arch)
    rows = [r for r in (data or {}).get("loss", []) if r["loss"] == loss]
    if data is None or not rows:
        return "fused", f"no measured {loss} row for {arch}: the fused op"
    same = [r for r in rows if r["dtype"] == dtype] or [r for r in rows if r["dtype"] == "float32"] or rows
    current = LOSS_REVISION[loss]
    size = max(1, math.prod(int(s) for s in shape))
    revs = {r.get("revision", 1) for r in same}
    rev = current if current in revs else max(revs)
    pool = [r for r in same if r.get("revision", 1) == rev]
    row = min(pool, key=lambda r: abs(math.log(size / math.prod(r["shape"]))))
    mode = "fwd+bwd" if training or "fwd" not in row["fused_ms"] else "fwd"
    side = "fused" if row["fused_ms"][mode] <= row["unfused_ms"][mode] else "unfused"
    where = f"measured on {data['gpu']} ({data['date']}): {_loss_row_text(row, mode)}"
    if row.get("revision", 1) != current:
        return side, (f"{where}; the fused path is now revision {current}, not yet measured on a GPU "
                      f"(python -m brnnseg_kernels tune): the older measurement decides")
    return side, where
