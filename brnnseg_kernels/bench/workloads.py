"""What is benchmarked: the shapes (../shared/README.md), the layers and models on both sides (ours and
the plain-PyTorch / cuDNN baseline, same weights), FLOP counts, and the runs that time them into rows.
Cells come from the cell table (brnnseg_kernels.cells): ``cells=`` takes family names."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch

from .. import cells as cell_table
from .timing import _sync, peak_mib, time_ms


# name: (N, C, H, W, hidden) -- ../shared/README.md
CPU_SHAPES = {
    "cpu-med": (4, 64, 64, 64, 64),
    "cpu-hires": (2, 32, 128, 128, 32),
    "cpu-wide": (1, 128, 32, 32, 128),
}
GPU_SHAPES = {
    "lanes-64": (8, 128, 36, 100, 64), "lanes-128": (8, 128, 36, 100, 128),
    "cityscapes-s8-64": (8, 512, 64, 128, 64), "cityscapes-s8-128": (8, 512, 64, 128, 128),
    "cityscapes-s8-256": (8, 512, 64, 128, 256),
    "ade-s16-128": (16, 512, 32, 32, 128), "ade-s16-256": (16, 512, 32, 32, 256),
    "ade-s8-64": (16, 256, 64, 64, 64), "ade-s8-128": (16, 256, 64, 64, 128),
    "hires-64": (2, 64, 256, 256, 64), "latency-128": (1, 256, 64, 64, 128),
}
# Loss shapes (logits N, C, H, W): ../shared/README.md
LOSS_SHAPES = {"cpu": [(8, 1, 256, 256), (4, 3, 128, 128)],
               "cuda": [(16, 1, 512, 512), (8, 4, 512, 1024), (8, 1, 512, 512)]}  # issue 22's targets
# The multi-class loss (CEDiceLoss, integer label maps): logits shapes.
LOSS_MC_SHAPES = {"cpu": [(4, 8, 128, 128)], "cuda": [(4, 8, 256, 256), (2, 19, 512, 512)]}


def native_dtypes(device: str) -> List[str]:
    """float32 and the half-precision types the device computes natively (the benchmark's default):
    CUDA: float16, and bfloat16 from sm_80; CPU: bfloat16 with AVX512-BF16, float16 with AMX-FP16 (else
    torch emulates them through float32, which says nothing about either side's kernels)."""
    out = ["float32"]
    if device == "cuda":
        out.append("float16")
        if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
            out.append("bfloat16")
        return out
    cpu = getattr(torch, "cpu", None)
    if getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
        out.append("bfloat16")
    if getattr(cpu, "_is_amx_fp16_supported", lambda: False)():
        out.append("float16")
    return out


def gates(cell: str) -> int:
    """G of a cell family's (default) kernel cell."""
    return cell_table.spec(cell_table.family(cell).kernel()).gates


def loss_bytes(shape, target_bytes: int = 1, logit_bytes: int = 4) -> dict:
    """Compulsory DRAM traffic of the fused loss: forward reads logits + target; backward reads them
    again and writes the gradient (halo re-reads of the target hit the cache)."""
    px = 1
    for s in shape:
        px *= s
    fwd = px * (logit_bytes + target_bytes)
    return {"fwd": fwd, "fwd+bwd": fwd + px * (logit_bytes + target_bytes + logit_bytes)}


def renet_flops(shape, cell: str) -> float:
    """Forward FLOPs of a ReNet block (GEMMs only): per sweep and direction, 2*P*G*hid*(C_in + hid)."""
    n, c, h, w, hid = shape
    p, g = n * h * w, gates(cell) * hid
    return sum(2 * 2 * p * g * (cin + hid) for cin in (c, 2 * hid))


def cell_floor_ms(shape, cell: str, threads: int, rates=None, bf16_gates: bool = False) -> dict:
    """The ReNet block's gate math alone, per mode, in ms on ``threads`` threads, at the measured rate of
    our cell steps (``cell_step_ns``): 2 sweeps x 2 directions x positions x hidden unit-steps, each at
    its forward (no_grad), forward-with-saving (fwd grad) or forward-with-saving + backward (fwd+bwd)
    cost. Beside the products at the peak it makes the "roof+cell" of ``bench``: the gate math runs on
    the same vector units the products need, so the two add. ``bf16_gates``: at the rate of bfloat16 ops
    (their gate math to bfloat16's accuracy)."""
    from .timing import cell_step_ns

    n, c, h, w, hid = shape
    fwd, fwd_saved, bwd = rates or cell_step_ns(cell_table.family(cell).kernel(), hid, min(128, n * max(h, w)),
                                                bf16_gates=bf16_gates)
    units = 4 * n * h * w * hid / max(1, threads) / 1e6
    return {"fwd no_grad": units * fwd, "fwd grad": units * fwd_saved, "fwd+bwd": units * (fwd_saved + bwd)}


def make_layers(cell: str, shape, device, dtype=torch.float32):
    from .. import nn
    from ..reference import ReNetBaseline

    n, c, h, w, hid = shape
    fam = cell_table.family(cell)
    base = ReNetBaseline(c, hid, fam.kernel()).to(device=device, dtype=dtype)
    ours = getattr(nn, fam.layer2d)(c, hid).to(device=device, dtype=dtype)
    ours.load_state_dict(base.state_dict())
    return {"torch": base, "brnnseg": ours}


@dataclass
class Row:
    shape: str
    cell: str
    provider: str
    mode: str
    ms: float
    gflops: float
    peak_mib: float


@contextlib.contextmanager
def _env(name: str, value: str):
    """os.environ[name] = value inside the block, restored (or removed) after."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def forced_cuda_backend(backend: str):
    """BRNNSEG_CUDA_BACKEND=backend inside the block (the benchmark's our-kernel rows)."""
    return _env("BRNNSEG_CUDA_BACKEND", backend)


def forced_loss_backend(backend: str):
    """BRNNSEG_CUDA_LOSS=backend inside the block (the loss benchmark's fused rows: the fused op whatever
    the table says, so that the benchmark measures it)."""
    return _env("BRNNSEG_CUDA_LOSS", backend)


def time_module(module, x, flops: float, key, device: str, repeat: int, memory: bool) -> List[Row]:
    """Three rows for one provider: forward+backward (with its peak memory), forward with grad (the graph
    and what backward needs are built and saved, no backward) and forward under no_grad. ``flops`` is
    the forward's; forward+backward counts 3x. ``key`` = (shape, cell, provider)."""
    def fwd_bwd():
        module(x).sum().backward()

    def fwd_grad():
        module(x)

    def fwd_nograd():
        with torch.no_grad():
            module(x)

    peak = peak_mib(device, fwd_bwd) if memory else float("nan")
    ms = time_ms(fwd_bwd, device, repeat)
    rows = [Row(*key, "fwd+bwd", ms, 3 * flops / ms / 1e6, peak)]
    ms = time_ms(fwd_grad, device, repeat)
    rows.append(Row(*key, "fwd grad", ms, flops / ms / 1e6, float("nan")))
    ms = time_ms(fwd_nograd, device, repeat)
    return rows + [Row(*key, "fwd no_grad", ms, flops / ms / 1e6, float("nan"))]


def run(device="cpu", shapes=None, cells=("gru", "lstm"), repeat=7, threads=2, memory=True,
        dtype=torch.float32, cudnn_records: Optional[list] = None) -> List[Row]:
    """Rows of the ReNet comparison. On CUDA, ``cudnn_records`` (a list) receives per (shape, cell) which
    cuDNN RNN algorithm the baseline asked for and ran (:mod:`.cudnn`) and both sides' time per
    recurrent step."""
    if device == "cpu":
        torch.set_num_threads(threads)
    table = CPU_SHAPES if device == "cpu" else GPU_SHAPES
    names = shapes or list(table)
    rows: List[Row] = []
    for name in names:
        shape = table[name]
        for cell in cells:
            torch.manual_seed(0)
            layers = make_layers(cell, shape, device, dtype)
            x = torch.randn(*shape[:4], device=device, dtype=dtype, requires_grad=True)
            if device == "cuda":
                torch.cuda.synchronize()
            flops = renet_flops(shape, cell)
            for provider, layer in layers.items():
                rows += time_module(layer, x, flops, (name, cell, provider), device, repeat, memory)
            if device == "cuda":  # "brnnseg" is what auto picks; "brnnseg-kernel": our kernel whatever auto says
                from ..dispatch import recording

                with recording() as rec:
                    layers["brnnseg"](x)
                if all(r["path"] == "kernel" for r in rec):  # auto runs our kernel already: the same rows
                    rows += [dataclasses.replace(r, provider="brnnseg-kernel") for r in rows
                             if r.shape == name and r.cell == cell and r.provider == "brnnseg"]
                else:
                    with forced_cuda_backend("kernel"):
                        rows += time_module(layers["brnnseg"], x, flops, (name, cell, "brnnseg-kernel"), device,
                                            repeat, memory)
            if cudnn_records is not None and device == "cuda":
                from .cudnn import baseline_record, per_step_us

                rec = dict(shape=name, cell=cell, dtype=str(dtype).replace("torch.", ""),
                           **baseline_record(cell, shape, dtype, layers["torch"], x))
                rec["us_per_step"] = {f"{r.provider} {r.mode}": round(per_step_us(r.ms, shape), 3)
                                      for r in rows if r.shape == name and r.cell == cell}
                cudnn_records.append(rec)
    return rows


@dataclass
class LossRow:
    shape: str
    provider: str
    ms: float
    peak_mib: float
    floor_ms: float
    launches: int = -1  # device work per forward+backward: Triton launches + ATen ops that do work
    syncs: int = -1     # operations in it that make the host wait for the device (bench/census.py)


def _step_census(step) -> tuple:
    """(launches, host syncs) of one call of ``step`` (bench/census.py); our loss ops count by the
    Triton kernels they launch, not as ops."""
    from ..losses import _kernels, ce_dice_kernels
    from .census import census

    with census(_kernels, ce_dice_kernels) as c:
        step()
    ours = ("bce_dice_loss", "ce_dice_loss", "seg_loss_sums", "ce_dice_sums")
    return len(c.launches) + len([w for w in c.work if not w.startswith(ours)]), len(c.syncs)


def run_loss(device="cpu", repeat=9, threads=2, memory=True, bandwidth_gbs: float = 3000.0) -> List[LossRow]:
    """Fused loss (forward+backward) vs the unfused PyTorch composition, same settings: pos_weight 10,
    boundary weight 2, radius 1, Dice weight 1; uint8 targets. ``floor_ms``: the compulsory bytes
    at ``bandwidth_gbs`` (GPU only)."""
    from ..losses import BCEDiceLoss
    from ..reference import unfused_bce_dice

    if device == "cpu":
        torch.set_num_threads(threads)
    fused = BCEDiceLoss(pos_weight=10.0, boundary_weight=2.0, boundary_radius=1, lambda_dice=1.0)
    rows: List[LossRow] = []
    for shape in LOSS_SHAPES[device]:
        torch.manual_seed(0)
        logits = torch.randn(*shape, device=device, requires_grad=True)
        target = (torch.rand(*shape, device=device) > 0.7).to(torch.uint8)
        floor = loss_bytes(shape)["fwd+bwd"] / (bandwidth_gbs * 1e9) * 1e3 if device == "cuda" else float("nan")
        for provider, fn in (("torch", lambda: unfused_bce_dice(logits, target)), ("brnnseg", lambda: fused(logits, target))):
            def step():
                logits.grad = None
                with forced_loss_backend("fused"):  # the fused op, whatever auto would pick
                    fn().backward()
            peak = peak_mib(device, step) if memory else float("nan")
            rows.append(LossRow("x".join(map(str, shape)), provider, time_ms(step, device, repeat), peak, floor,
                                *_step_census(step)))
    # Multi-class: CEDiceLoss (softmax CE + boundary weight 2, radius 1 + softmax Dice) on int64 label maps
    # against the unfused composition (reference.unfused_ce_dice) and the same with MONAI's DiceLoss.
    from ..losses import CEDiceLoss
    from ..reference import unfused_ce_dice, unfused_ce_monai_dice

    fused_mc = CEDiceLoss(boundary_weight=2.0, boundary_radius=1, average="all")
    for shape in LOSS_MC_SHAPES[device]:
        torch.manual_seed(0)
        logits = torch.randn(*shape, device=device, requires_grad=True)
        labels = torch.randint(0, shape[1], (shape[0],) + tuple(shape[2:]), device=device)
        floor = float("nan")
        if device == "cuda":
            floor = (3 * logits.numel() * 4 + 2 * labels.numel() * 8) / (bandwidth_gbs * 1e9) * 1e3
        providers = [("ce:", "torch", lambda: unfused_ce_dice(logits, labels)),
                     ("ce:", "brnnseg", lambda: fused_mc(logits, labels))]
        try:  # the same with MONAI's DiceLoss as the Dice term (rows ce-monai:, against the same fused loss)
            import monai.losses  # noqa: F401

            providers.append(("ce-monai:", "torch", lambda: unfused_ce_monai_dice(logits, labels)))
            has_monai = True
        except ImportError:
            has_monai = False
        for prefix, provider, fn in providers:
            def step():
                logits.grad = None
                with forced_loss_backend("fused"):
                    fn().backward()
            peak = peak_mib(device, step) if memory else float("nan")
            rows.append(LossRow(prefix + "x".join(map(str, shape)), provider, time_ms(step, device, repeat), peak,
                                floor, *_step_census(step)))
        if has_monai:  # the fused loss's row, timed once, stands on both comparisons
            fused_row = next(r for r in rows if r.shape == "ce:" + "x".join(map(str, shape)) and r.provider == "brnnseg")
            rows.append(LossRow("ce-monai:" + "x".join(map(str, shape)), "brnnseg", fused_row.ms, fused_row.peak_mib,
                                floor, fused_row.launches, fused_row.syncs))
    return rows


# Drop-in sequence RNNs: (batch, length, input, hidden, layers) -- issue: batch 64, length 128, in 64, hid 128.
RNN_SHAPES = {"seq-b64-t128": (64, 128, 64, 128, 1), "seq-b64-t128-2layer": (64, 128, 64, 128, 2)}


class _SeqModel(torch.nn.Module):
    """What replace_rnns is for: a model holding a bidirectional torch RNN (batch_first) and a head."""

    def __init__(self, cell: str, c: int, hid: int, layers: int):
        super().__init__()
        rnn = cell_table.family(cell).torch_module
        self.rnn = rnn(c, hid, num_layers=layers, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(2 * hid, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def rnn_flops(shape, cell: str) -> float:
    """Forward GEMM FLOPs of the bidirectional stack."""
    b, t, c, hid, layers = shape
    g = gates(cell) * hid
    return sum(2 * 2 * b * t * g * ((c if i == 0 else 2 * hid) + hid) for i in range(layers))


def run_rnn(shapes=None, cells=("gru", "lstm"), repeat=7, threads=2, memory=True) -> List[Row]:
    """torch.nn.GRU/LSTM model vs the same model after ``replace_rnns`` (same weights), CPU."""
    import copy

    from ..nn import replace_rnns

    torch.set_num_threads(threads)
    rows: List[Row] = []
    for name in shapes or list(RNN_SHAPES):
        shape = RNN_SHAPES[name]
        b, t, c, hid, layers = shape
        for cell in cells:
            torch.manual_seed(0)
            base = _SeqModel(cell, c, hid, layers)
            models = {"torch": base, "brnnseg": replace_rnns(copy.deepcopy(base))}
            x = torch.randn(b, t, c, requires_grad=True)
            flops = rnn_flops(shape, cell)
            for provider, model in models.items():
                rows += time_module(model, x, flops, (name, cell, provider), "cpu", repeat, memory)
    return rows


# Models: (N, C, H, W) input for the segmentation models; classes 2.
MODEL_INPUT = (2, 3, 128, 128)


def model_variants():
    """The U-Net variants compared by ``bench --op models`` (name -> constructor)."""
    from ..models import BRNNUNet, EncoderBiLSTMDecoder

    return {
        "unet (plain CNN)": lambda: BRNNUNet(3, 2, rnn_in_skips=False, rnn_at_bottleneck=False),
        "brnn-unet gru": lambda: BRNNUNet(3, 2, rnn="gru"),
        "brnn-unet gru light (r=4)": lambda: BRNNUNet(3, 2, rnn="gru", rnn_reduction=4),
        "brnn-unet lstm": lambda: BRNNUNet(3, 2, rnn="lstm"),
        "brnn-unet lstm light (r=4)": lambda: BRNNUNet(3, 2, rnn="lstm", rnn_reduction=4),
        "encoder-bilstm-decoder": lambda: EncoderBiLSTMDecoder(3, 2),
    }


def run_models(repeat=5, threads=2):
    """Parameter count and CPU time (forward+backward, eval-mode forward) of each model variant."""
    torch.set_num_threads(threads)
    x = torch.randn(*MODEL_INPUT)
    rows = []
    for name, make in model_variants().items():
        torch.manual_seed(0)
        model = make()
        params = sum(p.numel() for p in model.parameters())

        def train_step():
            model.train()
            model(x).mean().backward()

        def infer():
            model.eval()
            with torch.no_grad():
                model(x)

        rows.append((name, params, time_ms(train_step, "cpu", repeat, 1), time_ms(infer, "cpu", repeat, 1)))
    return rows
