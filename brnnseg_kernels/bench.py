"""Benchmarks of the ReNet layers against the plain-PyTorch block (permutes + nn.GRU/nn.LSTM), in one
process, same threads: speed (median of repeats), achieved GFLOP/s against a measured sgemm rate, and
peak memory of forward+backward (CPU: peak of live tensor bytes from the profiler's allocation
events; CUDA: the caching allocator's peak).

Run: ``python -m brnnseg_kernels bench --device cpu`` (see ``--help``)."""
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
GATES = {"gru": 3, "lstm": 4}
# Loss shapes (logits N, C, H, W): ../shared/README.md
LOSS_SHAPES = {"cpu": [(8, 1, 256, 256), (4, 3, 128, 128)], "cuda": [(16, 1, 512, 512), (8, 4, 512, 1024)]}


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
    p, g = n * h * w, GATES[cell] * hid
    return sum(2 * 2 * p * g * (cin + hid) for cin in (c, 2 * hid))


def make_layers(cell: str, shape, device, dtype=torch.float32):
    from . import BiGRU2d, BiLSTM2d
    from .reference import ReNetBaseline

    n, c, h, w, hid = shape
    base = ReNetBaseline(c, hid, cell).to(device=device, dtype=dtype)
    ours = (BiGRU2d if cell == "gru" else BiLSTM2d)(c, hid).to(device=device, dtype=dtype)
    ours.load_state_dict(base.state_dict())
    return {"torch": base, "brnnseg": ours}


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device="cpu", repeat=7, warmup=2) -> float:
    """Median wall time of fn in ms (CUDA: events around each call)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        if torch.device(device).type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def sgemm_gflops(device="cpu", n=2048) -> float:
    """float32 GEMM rate of torch.matmul (MKL on x86 CPUs, cuBLAS on GPUs)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    ms = time_ms(lambda: torch.matmul(a, b), device, repeat=5)
    return 2 * n ** 3 / ms / 1e6


def kernel_gemm_gflops(m=256, k=256, n=512, calls=50) -> float:
    """float32 rate of the GEMM our CPU kernels call per step (ops.kernel_gemm) on a step-sized
    product: every thread multiplies 128 rows by a 256 x 512 matrix (a tile of lines times W^T)."""
    from .ops import kernel_gemm

    a, b = torch.randn(m, k), torch.randn(k, n)

    def many():
        for _ in range(calls):
            kernel_gemm(a, b)
    ms = time_ms(many, "cpu", repeat=5)
    return 2 * m * k * n * calls / ms / 1e6


def fma_peak_gflops(seconds: float = 0.3) -> float:
    """float32 FMA rate of all intra-op threads at once (AVX-512 or AVX2 FMA chains, no memory
    traffic): the roof no kernel's GEMMs can pass. NaN on CPUs without either."""
    from . import _C

    return _C.cpu_fma_peak_gflops(seconds) or float("nan")


def cpu_peak_mib(fn: Callable[[], object]) -> float:
    """Peak of live tensor memory allocated by fn (CPU), from the profiler's allocation events:
    the running sum of allocations minus frees, in MiB. Counts every tensor either side allocates
    (outputs, saved activations, workspaces, gradients), not library-internal scratch."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def peak_mib(device: str, fn: Callable[[], object]) -> float:
    """Peak memory of one call of fn: live tensor bytes on the CPU, the caching allocator's peak
    above what was allocated before on CUDA."""
    if device == "cpu":
        return cpu_peak_mib(fn)
    torch.cuda.reset_peak_memory_stats()
    base_mem = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base_mem) / 2**20


@dataclass
class Row:
    shape: str
    cell: str
    provider: str
    mode: str
    ms: float
    gflops: float
    peak_mib: float


def time_module(module, x, flops: float, key, device: str, repeat: int, memory: bool) -> List[Row]:
    """Two rows for one provider: forward+backward (with its peak memory) and forward under no_grad.
    ``flops`` is the forward's; forward+backward counts 3x. ``key`` = (shape, cell, provider)."""
    def fwd_bwd():
        module(x).sum().backward()

    def fwd_nograd():
        with torch.no_grad():
            module(x)

    peak = peak_mib(device, fwd_bwd) if memory else float("nan")
    ms = time_ms(fwd_bwd, device, repeat)
    rows = [Row(*key, "fwd+bwd", ms, 3 * flops / ms / 1e6, peak)]
    ms = time_ms(fwd_nograd, device, repeat)
    return rows + [Row(*key, "fwd no_grad", ms, flops / ms / 1e6, float("nan"))]


def run(device="cpu", shapes=None, cells=("gru", "lstm"), repeat=7, threads=2, memory=True,
        dtype=torch.float32) -> List[Row]:
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
    return rows


def report(rows: List[Row], sgemm: float, kernel_gemm: float = float("nan"), peak: float = float("nan")) -> str:
    """Speed-up table; GFLOP/s as % of torch's sgemm rate, of our kernels' GEMM rate and of the
    CPU's FMA peak. "roof" is the speed-up ours would reach if its GEMM FLOPs ran at the FMA peak
    with nothing else costing time: torch's time over FLOPs / peak. No kernel can beat it."""
    lines = [f"{'shape':10s} {'cell':4s} {'mode':11s} {'torch ms':>9s} {'ours ms':>9s} {'speedup':>8s} "
             f"{'ours GF/s':>9s} {'% sgemm':>7s} {'% kGEMM':>7s} {'% peak':>6s} {'roof':>6s} "
             f"{'torch MiB':>9s} {'ours MiB':>9s}"]
    key = lambda r: (r.shape, r.cell, r.mode)  # noqa: E731
    by = {}
    for r in rows:
        by.setdefault(key(r), {})[r.provider] = r
    for (shape, cell, mode), d in by.items():
        t, o = d["torch"], d["brnnseg"]
        lines.append(f"{shape:10s} {cell:4s} {mode:11s} {t.ms:9.1f} {o.ms:9.1f} {t.ms / o.ms:7.2f}x "
                     f"{o.gflops:9.1f} {100 * o.gflops / sgemm:6.0f}% {100 * o.gflops / kernel_gemm:6.0f}% "
                     f"{100 * o.gflops / peak:5.0f}% {t.ms * peak / (o.gflops * o.ms):5.2f}x "
                     f"{t.peak_mib:9.1f} {o.peak_mib:9.1f}")
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


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def machine(device: str = "cpu") -> dict:
    """The machine and software a benchmark ran on, for --json: CPU model and cores, GPU and driver,
    torch, CUDA, cuDNN, the git commit and this package's build info."""
    import subprocess

    from . import build_info

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), python=platform.python_version(),
                torch=torch.__version__, cuda=torch.version.cuda, cudnn=None, gpu=None, driver=None,
                build=build_info(), date=time.strftime("%Y-%m-%d %H:%M:%S"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        info["commit"] = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                        timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["commit"] = None
    if device == "cuda" and torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), cudnn=torch.backends.cudnn.version(),
                    tf32=dict(matmul=torch.backends.cuda.matmul.allow_tf32, cudnn=torch.backends.cudnn.allow_tf32))
        try:
            info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                            capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.TimeoutExpired):
            pass
    return info


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
    colors = {"fwd+bwd": "tab:blue", "fwd no_grad": "tab:orange"}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(keys) + 2), 4))
    ax.bar(range(len(keys)), med, yerr=[lo, hi], capsize=3, color=[colors.get(k[2], "tab:gray") for k in keys])
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_xticks(range(len(keys)), [f"{k[0]}\n{k[1]} {k[2]}" for k in keys], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("speed-up over PyTorch (x)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@dataclass
class LossRow:
    shape: str
    provider: str
    ms: float
    peak_mib: float
    floor_ms: float


def run_loss(device="cpu", repeat=9, threads=2, memory=True, bandwidth_gbs: float = 3000.0) -> List[LossRow]:
    """Fused loss (forward+backward) vs the unfused PyTorch composition, same settings: pos_weight 10,
    boundary weight 2, radius 1, Dice weight 1; uint8 targets. ``floor_ms``: the compulsory bytes
    at ``bandwidth_gbs`` (GPU only)."""
    from .losses import BCEDiceLoss
    from .reference import unfused_bce_dice

    if device == "cpu":
        torch.set_num_threads(threads)
    fused = BCEDiceLoss(pos_weight=10.0, boundary_weight=2.0, boundary_radius=1, dice_weight=1.0)
    rows: List[LossRow] = []
    for shape in LOSS_SHAPES[device]:
        torch.manual_seed(0)
        logits = torch.randn(*shape, device=device, requires_grad=True)
        target = (torch.rand(*shape, device=device) > 0.7).to(torch.uint8)
        floor = loss_bytes(shape)["fwd+bwd"] / (bandwidth_gbs * 1e9) * 1e3 if device == "cuda" else float("nan")
        for provider, fn in (("torch", lambda: unfused_bce_dice(logits, target)), ("brnnseg", lambda: fused(logits, target))):
            def step():
                logits.grad = None
                fn().backward()
            peak = peak_mib(device, step) if memory else float("nan")
            rows.append(LossRow("x".join(map(str, shape)), provider, time_ms(step, device, repeat), peak, floor))
    return rows


def report_loss(rows: List[LossRow]) -> str:
    lines = [f"{'logits':18s} {'torch ms':>9s} {'ours ms':>9s} {'speedup':>8s} {'torch MiB':>10s} {'ours MiB':>9s} "
             f"{'grad MiB':>9s} {'floor ms':>9s}"]
    by = {}
    for r in rows:
        by.setdefault(r.shape, {})[r.provider] = r
    for shape, d in by.items():
        t, o = d["torch"], d["brnnseg"]
        px = 1
        for s in shape.split("x"):
            px *= int(s)
        lines.append(f"{shape:18s} {t.ms:9.2f} {o.ms:9.2f} {t.ms / o.ms:7.2f}x {t.peak_mib:10.1f} {o.peak_mib:9.1f} "
                     f"{px * 4 / 2**20:9.1f} {o.floor_ms:9.3f}")
    return "\n".join(lines)


# Drop-in sequence RNNs: (batch, length, input, hidden, layers) -- issue: batch 64, length 128, in 64, hid 128.
RNN_SHAPES = {"seq-b64-t128": (64, 128, 64, 128, 1), "seq-b64-t128-2layer": (64, 128, 64, 128, 2)}


class _SeqModel(torch.nn.Module):
    """What replace_rnns is for: a model holding a bidirectional torch RNN (batch_first) and a head."""

    def __init__(self, cell: str, c: int, hid: int, layers: int):
        super().__init__()
        rnn = torch.nn.GRU if cell == "gru" else torch.nn.LSTM
        self.rnn = rnn(c, hid, num_layers=layers, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(2 * hid, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def rnn_flops(shape, cell: str) -> float:
    """Forward GEMM FLOPs of the bidirectional stack."""
    b, t, c, hid, layers = shape
    g = GATES[cell] * hid
    return sum(2 * 2 * b * t * g * ((c if i == 0 else 2 * hid) + hid) for i in range(layers))


def run_rnn(shapes=None, cells=("gru", "lstm"), repeat=7, threads=2, memory=True) -> List[Row]:
    """torch.nn.GRU/LSTM model vs the same model after ``replace_rnns`` (same weights), CPU."""
    import copy

    from .nn import replace_rnns

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
    from .models import BRNNUNet, EncoderBiLSTMDecoder

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


def report_models(rows) -> str:
    lines = [f"input {MODEL_INPUT}, base_channels 32, depth 4 (encoder-bilstm-decoder: depth 3)",
             f"{'model':28s} {'params':>10s} {'fwd+bwd ms':>11s} {'eval fwd ms':>12s}"]
    for name, params, tb, ti in rows:
        lines.append(f"{name:28s} {params:10,d} {tb:11.1f} {ti:12.1f}")
    return "\n".join(lines)
