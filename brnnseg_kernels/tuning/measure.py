"""``python -m brnnseg_kernels tune --out FILE``: measure, on the GPU at hand, the table the CUDA backend
choice reads (``tuning/sm90.json`` is one): the ReNet block (rows then columns), our kernel
(``BRNNSEG_CUDA_BACKEND=kernel``) against the permute + cuDNN block (``reference.ReNetBaseline``) with the
same weights, forward+backward and under no_grad, in float32, float16, bfloat16 and float32 modules under
``torch.autocast("cuda", dtype=torch.bfloat16)``, GRU and LSTM, on the GPU benchmark shapes; then the cuDNN
forward time per step (512 lines) the calibrated model compares against where no row is near; first, the
fused losses against their unfused composition (``loss`` rows, :func:`brnnseg_kernels.tuning.loss_choice`).

Each timing is a median over a few calls (CUDA events through ``bench.timing.time_ms``); the whole run
stops at ``--budget`` seconds (default 170) and writes what it has. Copy the file to
``brnnseg_kernels/tuning/sm<major><minor>.json`` to ship it. Without a GPU it exits 2 with one line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from typing import Dict, List, Optional

import torch

# Block shapes (N, C, H, W, hidden) measured by default: the H200 table's four plus the GPU benchmark's.
TUNE_SHAPES = [(8, 64, 64, 64, 64), (4, 128, 128, 128, 128), (16, 256, 32, 32, 128), (2, 32, 256, 256, 32),
               (8, 128, 36, 100, 64), (8, 128, 36, 100, 128), (1, 256, 64, 64, 128)]
DTYPES = ("float32", "float16", "bfloat16", "autocast-bfloat16")
STEP_HIDDEN = (32, 40, 64, 128, 256)


def _autocast(dtype: str, device: str):
    if dtype.startswith("autocast-"):
        return torch.autocast(device, dtype=getattr(torch, dtype.split("-", 1)[1]))
    return contextlib.nullcontext()


def measure_block(cell: str, shape, dtype: str, device: str = "cuda", repeat: int = 5) -> Dict:
    """One row: cuDNN block and our kernel, forward+backward and no_grad, ms and peak MiB."""
    from .. import nn
    from ..bench.timing import peak_mib, time_ms
    from ..bench.workloads import forced_cuda_backend
    from ..cells import family
    from ..reference import ReNetBaseline

    n, c, h, w, hid = shape
    module_dtype = torch.float32 if dtype.startswith("autocast-") else getattr(torch, dtype)
    torch.manual_seed(0)
    fam = family(cell)
    base = ReNetBaseline(c, hid, fam.kernel()).to(device=device, dtype=module_dtype)
    ours = getattr(nn, fam.layer2d)(c, hid).to(device=device, dtype=module_dtype)
    ours.load_state_dict(base.state_dict())
    x = torch.randn(n, c, h, w, device=device, dtype=module_dtype, requires_grad=True)
    out = dict(cell=cell, shape=[n, c, h, w], hidden=hid, dtype=dtype, cudnn_ms={}, ours_ms={}, peak_mib={})
    for side, module in (("cudnn", base), ("ours", ours)):
        force = forced_cuda_backend("kernel") if side == "ours" else contextlib.nullcontext()
        with force:
            def train():
                with _autocast(dtype, device):
                    y = module(x)
                y.float().sum().backward()

            def infer():
                with torch.no_grad(), _autocast(dtype, device):
                    module(x)

            out[f"{side}_ms"]["fwd+bwd"] = round(time_ms(train, device, repeat), 4)
            out[f"{side}_ms"]["no_grad"] = round(time_ms(infer, device, repeat), 4)
            out["peak_mib"][side] = round(peak_mib(device, train)) if device == "cuda" else None
    return out


def measure_cudnn_steps(cell: str, dtype: str, hidden: int, device: str = "cuda", lines: int = 512,
                        ts=(32, 128), repeat: int = 5) -> Dict:
    """cuDNN's forward microseconds per step (bidirectional, `lines` sequences): the slope over T."""
    from ..bench.timing import time_ms
    from ..cells import family

    torch.manual_seed(0)
    fam = family(cell)
    rnn = fam.torch_module(hidden, hidden, batch_first=True, bidirectional=True).to(device=device,
                                                                                  dtype=getattr(torch, dtype))
    ms = []
    for t in ts:
        x = torch.randn(lines, t, hidden, device=device, dtype=getattr(torch, dtype))
        with torch.no_grad():
            ms.append(time_ms(lambda: rnn(x), device, repeat))
    slope = (ms[-1] - ms[0]) / (ts[-1] - ts[0]) * 1e3
    return dict(cell=cell, dtype=dtype, hidden=hidden, lines=lines, cudnn_fwd_us_per_step=round(slope, 3))


def measure_loss(loss: str, shape, dtype: str, device: str = "cuda", repeat: int = 5) -> Dict:
    """One ``loss`` row: the fused op (``BRNNSEG_CUDA_LOSS=fused``) against the unfused composition with the
    same options (``=unfused``, ``losses.unfused``), forward+backward and forward alone, in ms; the options of
    ``bench --op seg_loss`` (boundary weight 2, radius 1; BCE: pos_weight 10, uint8 targets; CE: int64 labels)."""
    from .. import functional
    from ..bench.timing import time_ms
    from ..bench.workloads import forced_loss_backend
    from . import LOSS_REVISION

    torch.manual_seed(0)
    logits = torch.randn(*shape, device=device, dtype=getattr(torch, dtype), requires_grad=True)
    if loss == "bce_dice":
        target = (torch.rand(*shape, device=device) > 0.7).to(torch.uint8)
        fn = lambda: functional.bce_dice_loss(logits, target, pos_weight=10.0, boundary_weight=2.0)  # noqa: E731
    else:
        target = torch.randint(0, shape[1], (shape[0],) + tuple(shape[2:]), device=device)
        fn = lambda: functional.ce_dice_loss(logits, target, boundary_weight=2.0, average="all")  # noqa: E731
    out = dict(loss=loss, shape=list(shape), dtype=dtype, unfused_ms={}, fused_ms={}, revision=LOSS_REVISION[loss])
    for side in ("unfused", "fused"):
        with forced_loss_backend(side):
            def train():
                logits.grad = None
                fn().backward()

            def forward():
                with torch.no_grad():
                    fn()

            out[f"{side}_ms"]["fwd+bwd"] = round(time_ms(train, device, repeat), 4)
            out[f"{side}_ms"]["fwd"] = round(time_ms(forward, device, repeat), 4)
    return out


def tune(out: str, device: str = "cuda", budget_s: float = 170.0, shapes=None, cells=("gru", "lstm"),
         dtypes=DTYPES, step_hidden=STEP_HIDDEN, repeat: int = 5, loss_shapes=None) -> Dict:
    """Measure and write the table (JSON, the format of sm90.json); returns it."""
    t_end = time.time() + budget_s
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        gpu, arch = props.name, "sm_%d%d" % torch.cuda.get_device_capability(0)
        cudnn = str(torch.backends.cudnn.version())
    else:  # the simulator's CUDA rules on CPU tensors (CI): the code path, not the figures
        gpu, arch, cudnn = "simulated", "sm_90", None
    doc = dict(gpu=gpu, arch=arch, date=time.strftime("%Y-%m-%d"), torch=torch.__version__, cudnn=cudnn,
               source="python -m brnnseg_kernels tune", block=[], cudnn_steps=[], loss=[], complete=False,
               note="dtype 'autocast-bfloat16': float32 modules on both sides under torch.autocast('cuda', "
                    "dtype=torch.bfloat16)")

    def write():
        with open(out, "w") as f:
            json.dump(doc, f, indent=1)

    from ..bench.workloads import LOSS_MC_SHAPES, LOSS_SHAPES

    losses = ([("bce_dice", s, d) for s in LOSS_SHAPES["cuda"] for d in ("float32", "bfloat16")]
              + [("ce_dice", s, "float32") for s in LOSS_MC_SHAPES["cuda"]]) if loss_shapes is None else loss_shapes
    for loss, shape, dtype in losses:  # first: a few seconds, and the loss decision reads them
        if time.time() > t_end:
            break
        doc["loss"].append(measure_loss(loss, shape, dtype, device, repeat))
        write()
    jobs = [(c, s, d) for s in (TUNE_SHAPES if shapes is None else shapes) for c in cells for d in dtypes]
    steps = [(c, d, h) for c in cells for d in ("float32", "bfloat16") for h in step_hidden]
    for cell, shape, dtype in jobs:
        if time.time() > t_end:
            break
        doc["block"].append(measure_block(cell, shape, dtype, device, repeat))
        write()
    for cell, dtype, hid in steps:
        if time.time() > t_end:
            break
        doc["cudnn_steps"].append(measure_cudnn_steps(cell, dtype, hid, device, repeat=repeat))
        write()
    doc["complete"] = (len(doc["block"]) == len(jobs) and len(doc["cudnn_steps"]) == len(steps)
                       and len(doc["loss"]) == len(losses))
    write()
    return doc


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m brnnseg_kernels tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write (the format of tuning/sm90.json)")
    p.add_argument("--budget", type=float, default=170.0, help="seconds; stops and writes what it has")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--losses-only", action="store_true",
                   help="only the loss rows (fused against unfused, ~10-20 s on a GPU): merge them into the shipped "
                        "table's \"loss\" list")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune: no GPU here (torch.cuda.is_available() is False): nothing to measure")
        return 2
    doc = tune(args.out, budget_s=args.budget, repeat=args.repeat,
               **(dict(shapes=[], step_hidden=()) if args.losses_only else {}))
    print(f"tune: {len(doc['loss'])} loss rows, {len(doc['block'])} block rows, {len(doc['cudnn_steps'])} cuDNN "
          f"step rows on {doc['gpu']} "
          f"({doc['arch']}){'' if doc['complete'] else ' (budget spent: partial)'} -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
