"""Timing and measurement: wall-clock medians with device synchronisation, peak memory (CPU: live
tensor bytes from the profiler's allocation events; CUDA: the caching allocator's peak), the GEMM and
FMA rates the roofs are drawn from, and the machine's description."""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, List

import torch


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], device="cpu", repeat=7, warmup=2) -> float:
    """Median time of one call of fn in ms, measured by ``torch.utils.benchmark.Timer``
    (``blocked_autorange``: it synchronises CUDA around every block and keeps the thread count). After
    ``warmup`` calls, blocks of calls are timed until about ``repeat`` calls' worth of time has passed
    (at least ``repeat`` blocks for fast functions); the median over blocks is returned."""
    from torch.utils import benchmark

    for _ in range(warmup):
        fn()
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    one = time.perf_counter() - t0
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=max(repeat * one, 0.05))
    return measurement.median * 1e3


def sgemm_gflops(device="cpu", n=2048) -> float:
    """float32 GEMM rate of torch.matmul (MKL on x86 CPUs, cuBLAS on GPUs)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    ms = time_ms(lambda: torch.matmul(a, b), device, repeat=5)
    return 2 * n ** 3 / ms / 1e6


def kernel_gemm_gflops(m=256, k=256, n=512, calls=50) -> float:
    """float32 rate of the GEMM our CPU kernels call per step (ops.kernel_gemm) on a step-sized
    product: every thread multiplies 128 rows by a 256 x 512 matrix (a tile of lines times W^T)."""
    from ..ops import kernel_gemm

    a, b = torch.randn(m, k), torch.randn(k, n)

    def many():
        for _ in range(calls):
            kernel_gemm(a, b)
    ms = time_ms(many, "cpu", repeat=5)
    return 2 * m * k * n * calls / ms / 1e6


def fma_peak_gflops(seconds: float = 0.3) -> float:
    """float32 FMA rate of all intra-op threads at once (AVX-512 or AVX2 FMA chains, no memory
    traffic): the roof no kernel's GEMMs can pass. NaN on CPUs without either."""
    from .. import _C

    return _C.cpu_fma_peak_gflops(seconds) or float("nan")


def bf16_peak_gflops(seconds: float = 0.3) -> float:
    """bfloat16 product rate of all intra-op threads at once (tdpbf16ps chains on four AMX tiles, 8,192
    products per instruction, where the products run there; else vdpbf16ps chains, 32 per instruction):
    the roof of the bfloat16 ops' GEMMs. NaN where their products run in float32."""
    from .. import _C

    return _C.cpu_bf16_peak_gflops(seconds) or float("nan")


def cell_step_ns(cell: str, hidden: int, lines: int = 128, seconds: float = 0.15, bf16_gates: bool = False) -> tuple:
    """(forward, forward saving for backward, backward) nanoseconds per hidden unit and time step of
    our CPU cell math (the vectorised gate math of one tile, cell_steps.h, in cache), one thread: the
    second term of the roof beside the products (:func:`brnnseg_kernels.bench.cell_floor_ms`).
    ``bf16_gates``: the forward as bfloat16 ops with bfloat16 products run it (gate math to bfloat16's
    accuracy, on AVX-512)."""
    from .. import _C

    return _C.cpu_cell_step_ns(cell, int(hidden), int(lines), float(seconds), bool(bf16_gates))


@contextlib.contextmanager
def _quiet_native_stderr():
    """File descriptor 2 to /dev/null: the profiler's native start/stop lines (kineto's "USDT ...
    profiler_start", and a device-count error on a machine without a GPU) would otherwise fill the
    benchmark's output. Only around starting and stopping a profile, never around the timed code."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def profiled(fn: Callable[[], object], activities):
    """One call of fn under torch.profiler (its native start/stop chatter silenced); the profile."""
    from torch.profiler import profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    prof = profile(activities=activities, profile_memory=True)
    with _quiet_native_stderr():
        prof.__enter__()
    try:
        fn()
    finally:
        with _quiet_native_stderr():
            prof.__exit__(None, None, None)
    return prof


def cpu_peak_mib(fn: Callable[[], object]) -> float:
    """Peak of live tensor memory allocated by fn (CPU), from the profiler's allocation events:
    the running sum of allocations minus frees, in MiB. Counts every tensor either side allocates
    (outputs, saved activations, workspaces, gradients), not library-internal scratch."""
    from torch.profiler import ProfilerActivity

    fn()  # warm-up outside the profile
    prof = profiled(fn, [ProfilerActivity.CPU])
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


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{cpu_model()} x{torch.get_num_threads()} threads"


def machine(device: str = "cpu") -> dict:
    """The machine and software a benchmark ran on, for --json: CPU model and cores, GPU and driver,
    torch, CUDA, cuDNN, the git commit and this package's build info."""
    import subprocess

    from .. import build_info

    info = dict(cpu=cpu_model(), cores=os.cpu_count(), threads=torch.get_num_threads(), python=platform.python_version(),
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
