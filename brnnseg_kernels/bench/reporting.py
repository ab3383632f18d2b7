"""Reporting: terminal tables with speed-up ratios and their spread across processes, CSV, the JSON of a
whole run (every figure plus the machine's description), and the speed-up chart with its 1x line."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, List

import torch

from .timing import machine
from .workloads import LossRow, Row


def report(rows: List[Row], sgemm: float, kernel_gemm: float = float("nan"), peak: float = float("nan"),
           cell_ms: dict = None) -> str:
    """Speed-up table; GFLOP/s as % of torch's sgemm rate, of our kernels' GEMM rate and of the
    CPU's FMA peak. "roof" is the speed-up ours would reach if its GEMM FLOPs ran at the FMA peak
    with nothing else costing time: torch's time over FLOPs / peak. No kernel can beat it.
    ``cell_ms`` ((shape, cell, mode) -> ms, :func:`cell_floor_ms`) adds "roof+cell": the same with the
    gate math at its measured rate added to the products' time."""
    lines = [f"{'shape':10s} {'cell':4s} {'mode':11s} {'torch ms':>9s} {'ours ms':>9s} {'speedup':>8s} "
             f"{'ours GF/s':>9s} {'% sgemm':>7s} {'% kGEMM':>7s} {'% peak':>6s} {'roof':>6s} "
             + (f"{'roof+cell':>9s} " if cell_ms else "") + f"{'torch MiB':>9s} {'ours MiB':>9s}"]
    key = lambda r: (r.shape, r.cell, r.mode)  # noqa: E731
    by = {}
    for r in rows:
        by.setdefault(key(r), {})[r.provider] = r
    forced = any("brnnseg-kernel" in d for d in by.values())
    if forced:  # CUDA: "ours" is what auto picks; the kernel's own time beside it
        lines[0] += f" {'kernel ms':>9s} {'kernel x':>8s}"
    for (shape, cell, mode), d in by.items():
        t, o = d["torch"], d["brnnseg"]
        line = (f"{shape:10s} {cell:4s} {mode:11s} {t.ms:9.1f} {o.ms:9.1f} {t.ms / o.ms:7.2f}x "
                f"{o.gflops:9.1f} {100 * o.gflops / sgemm:6.0f}% {100 * o.gflops / kernel_gemm:6.0f}% "
                f"{100 * o.gflops / peak:5.0f}% {t.ms * peak / (o.gflops * o.ms):5.2f}x "
                + (f"{t.ms / (o.gflops * o.ms / peak + cell_ms[(shape, cell, mode)]):8.2f}x "
                   if cell_ms else "")
                + f"{t.peak_mib:9.1f} {o.peak_mib:9.1f}")
        if forced and "brnnseg-kernel" in d:
            k = d["brnnseg-kernel"]
            line += f" {k.ms:9.1f} {t.ms / k.ms:7.2f}x"
        lines.append(line)
    return "\n".join(lines)


def report_processes(runs: List[List[Row]]) -> str:
    """One line per (shape, cell, mode) over several processes' runs: median and range of each
    side's time and of the per-process speed-up. Both sides can settle into a different speed in
    each process (oneDNN's LSTM especially), so one process's ratio can mislead; this shows the spread."""
    per_key: dict = {}
    for rows in runs:
        by = {}
        for r in rows:
            by.setdefault((r.shape, r.cell, r.mode), {})[r.provider] = r
        for key, d in by.items():
            per_key.setdefault(key, []).append((d["torch"].ms, d["brnnseg"].ms))

    def spread(v, fmt):
        return f"{fmt(statistics.median(v))} [{fmt(min(v))}-{fmt(max(v))}]"
    ms = lambda v: f"{v:.1f}"  # noqa: E731
    ratio = lambda v: f"{v:.2f}x"  # noqa: E731
    lines = [f"{len(runs)} processes; median [min-max] over processes",
             f"{'shape':10s} {'cell':4s} {'mode':11s} {'torch ms':>20s} {'ours ms':>20s} {'speedup':>24s}"]
    for (shape, cell, mode), pairs in per_key.items():
        t, o = [p[0] for p in pairs], [p[1] for p in pairs]
        lines.append(f"{shape:10s} {cell:4s} {mode:11s} {spread(t, ms):>20s} {spread(o, ms):>20s} "
                     f"{spread([a / b for a, b in pairs], ratio):>24s}")
    return "\n".join(lines)


def rows_to_json(rows: List[Row]) -> str:
    return json.dumps([dataclasses.asdict(r) for r in rows])


def rows_from_json(text: str) -> List[Row]:
    return [Row(**d) for d in json.loads(text)]


def write_csv(rows: List[Row], path: str, device_name: str, sgemm: float) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["date", "device", "torch", "sgemm_gflops", "shape", "cell", "provider", "mode", "ms",
                        "gflops", "peak_mib"])
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        for r in rows:
            w.writerow([stamp, device_name, torch.__version__, f"{sgemm:.1f}", r.shape, r.cell, r.provider, r.mode,
                        f"{r.ms:.3f}", f"{r.gflops:.1f}", f"{r.peak_mib:.1f}"])


def write_json(path: str, runs: List[List[Row]], device: str, **extra) -> None:
    """Every row of every run (one run per process) with the machine's description."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(dict(machine=machine(device), **extra,
                       runs=[[dataclasses.asdict(r) for r in rows] for rows in runs]), f, indent=1)


def speedups(runs: List[List[Row]]) -> dict:
    """{(shape, cell, mode): [torch ms / ours ms per run]}."""
    out: dict = {}
    for rows in runs:
        by: dict = {}
        for r in rows:
            by.setdefault((r.shape, r.cell, r.mode), {})[r.provider] = r
        for key, d in by.items():
            if "torch" in d and "brnnseg" in d:
                out.setdefault(key, []).append(d["torch"].ms / d["brnnseg"].ms)
    return out


def plot_speedups(runs: List[List[Row]], path: str, title: str) -> None:
    """Bars of the speed-up over PyTorch per shape, cell and mode (median over runs, whiskers for the
    range when several processes ran), with the 1x line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sp = speedups(runs)
    keys = list(sp)
    med = [statistics.median(sp[k]) for k in keys]
    lo = [m - min(sp[k]) for m, k in zip(med, keys)]
    hi = [max(sp[k]) - m for m, k in zip(med, keys)]
    colors = {"fwd+bwd": "tab:blue", "fwd grad": "tab:green", "fwd no_grad": "tab:orange"}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(keys) + 2), 4))
    ax.bar(range(len(keys)), med, yerr=[lo, hi], capsize=3, color=[colors.get(k[2], "tab:gray") for k in keys])
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    from matplotlib.patches import Patch

    modes = [m for m in colors if any(k[2] == m for k in keys)]
    ax.legend(handles=[Patch(color=colors[m], label=m) for m in modes], fontsize=7, loc="upper right")
    ax.set_xticks(range(len(keys)), [f"{k[0]}\n{k[1]} {k[2]}" for k in keys], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speed-up over PyTorch (x)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report_cudnn(records: List[dict]) -> str:
    """Per (shape, cell): the cuDNN algorithm PyTorch asked for (rows/cols sweep, forward/backward), the
    one the profiler saw, and both sides' time per recurrent step (time / (W + H))."""
    lines = ["cuDNN baseline: algorithm asked for (rows fwd/bwd, cols fwd/bwd), algorithm seen, us per step",
             f"{'shape':18s} {'cell':4s} {'asked for':48s} {'seen':11s} {'torch fwd+bwd':>13s} {'ours fwd+bwd':>12s} "
             f"{'torch no_grad':>13s} {'ours no_grad':>12s}"]
    short = {"standard": "std", "persist_static": "ps", "persist_static_small_h": "ps_small_h"}
    for r in records:
        asked = "/".join(short.get(v, v) for v in r["predicted"].values())
        seen = r.get("observed", {}).get("algorithm", "-")
        us = r["us_per_step"]
        lines.append(f"{r['shape']:18s} {r['cell']:4s} {asked:48s} {seen:11s} {us.get('torch fwd+bwd', float('nan')):13.2f} "
                     f"{us.get('brnnseg fwd+bwd', float('nan')):12.2f} {us.get('torch fwd no_grad', float('nan')):13.2f} "
                     f"{us.get('brnnseg fwd no_grad', float('nan')):12.2f}")
    return "\n".join(lines)


def report_loss(rows: List[LossRow]) -> str:
    lines = ["logits: the sigmoid loss (BCEDiceLoss); ce:...: the multi-class loss (CEDiceLoss, integer labels); "
             "ce-monai:...: the same fused loss against the composition with MONAI's DiceLoss",
             "launches: device work per forward+backward (Triton launches + ATen ops that do work); syncs: "
             "operations in it that make the host wait for the GPU (brnnseg_kernels/bench/census.py)",
             f"{'logits':18s} {'torch ms':>9s} {'ours ms':>9s} {'speedup':>8s} {'torch MiB':>10s} {'ours MiB':>9s} "
             f"{'grad MiB':>9s} {'floor ms':>9s} {'launches t/o':>13s} {'syncs t/o':>10s}"]
    by = {}
    for r in rows:
        by.setdefault(r.shape, {})[r.provider] = r
    for shape, d in by.items():
        t, o = d["torch"], d["brnnseg"]
        px = 1
        for s in shape.split(":")[-1].split("x"):  # "ce:4x8x128x128", "ce-monai:...": the multi-class loss
            px *= int(s)
        lines.append(f"{shape:18s} {t.ms:9.2f} {o.ms:9.2f} {t.ms / o.ms:7.2f}x {t.peak_mib:10.1f} {o.peak_mib:9.1f} "
                     f"{px * 4 / 2**20:9.1f} {o.floor_ms:9.3f} {f'{t.launches}/{o.launches}':>13s} "
                     f"{f'{t.syncs}/{o.syncs}':>10s}")
    return "\n".join(lines)


def report_models(rows) -> str:
    lines = [f"input {MODEL_INPUT}, base_channels 32, depth 4 (encoder-bilstm-decoder: depth 3)",
             f"{'model':28s} {'params':>10s} {'fwd+bwd ms':>11s} {'eval fwd ms':>12s}"]
    for name, params, tb, ti in rows:
        lines.append(f"{name:28s} {params:10,d} {tb:11.1f} {ti:12.1f}")
    return "\n".join(lines)
