"""The CUDA sweeps' launch plan for a GPU, and a per-step latency model of the recurrence kernels.

``python -m brnnseg_kernels plan --gpu h100`` (or ``a100``) prints, for every GPU benchmark shape, cell
and dtype, what the CUDA op launches -- from the C++ planner itself (``torch.ops.brnnseg.
sweep_launch_plan``, the code the CUDA build launches with), so it runs on any machine -- plus the
registers of each kernel in the shipped build (read off the extension with ``cuobjdump``) and the
model's time per step.

The latency model (today's FP32-core kernels, ``csrc/cuda/sweep_fwd_kernel.cuh, sweep_bwd_kernel.cuh``). Per CTA and step:
  * shared-memory wavefronts (one 128-byte wavefront per SM per cycle): forward, per k < hid and warp,
    one for each gate of W_hh held in shared memory plus one broadcast h_prev read per line a thread
    owns (4); backward, per row j < G*hid and warp, one weight read (if in shared memory) + 4 reads of
    the gate gradients;
  * FMA issue: 4 warp-instructions per SM per cycle;
  * W_hh rows not in shared memory come through L2 at ``L2_BYTES_PER_CLK`` per SM;
  * fixed latency on the critical path: the barrier, the input projections / saved gates loaded from
    memory after the product (one L2/DRAM round trip), gate math: ``FIXED_CYCLES``.
  The step takes max(bound x co-resident CTAs, bound + fixed) cycles, where bound is the largest of
  the three throughput terms and co-resident CTAs share one SM. A sweep takes T steps per wave.

The tensor-core kernels (``sweep_{fwd,bwd}_mma_kernel.cuh``; ``estimate_mma``), per CTA of 16 lines and
step, three phases separated by barriers:
  * product: each warp runs 2 kpw dependent mma.sync per accumulator chain (a wmma 16x16x16, or
    16x16x8 in TF32, is two m16n8k* instructions) at ``MMA_LATENCY`` cycles each, its nt chains
    interleaved; the SM's tensor cores issue one m16n8k* every ``MMA_ISSUE_CYCLES`` (mma.sync reaches
    about 2/3 of the wgmma peak on a Hopper SM); plus the A-fragment loads and the accumulator stores
    through shared memory (``SMEM_LATENCY`` each);
  * gate math: 16 x hidden (line, unit) pairs, ``PAIR_INSTRUCTIONS`` instructions each (shared-memory
    reads of the partial products, biases and input projections, the cell, the stores), issued at 4
    warp-instructions per SM per cycle, and ``PAIR_MUFU`` special-function operations (exp, rcp,
    tanh) at 16 per SM per cycle -- the larger of the two, plus one load latency: shared memory
    forward (the input projections arrived by cp.async), L2 backward (prefetched saved gates);
  * two barriers (``BARRIER_CYCLES`` each).
Co-resident CTAs (registers, shared memory) share the SM's issue and tensor cores.
These are paper figures until a GPU run confirms them: ``python/gpu_selfcheck.py`` times microseconds
per step over T = 16..512 for the same configurations, both recurrences.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch

from . import _C  # noqa: F401  (registers the ops)
from .cells import spec as cell_spec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
ARCH = {"a100": "sm_80", "h100": "sm_90", "h200": "sm_90"}
CLOCK_GHZ = {"a100": 1.41, "h100": 1.755, "h200": 1.755}
L2_BYTES_PER_CLK = {"a100": 32.0, "h100": 24.0, "h200": 24.0}  # L2 bandwidth / SMs / clock, all SMs loading
FIXED_CYCLES = {"fwd": 700, "bwd": 900}
# The tensor-core kernels' model (see the module doc): paper figures for an H100 / A100 SM.
MMA_LATENCY = 33          # cycles from one dependent mma.sync m16n8k16 to the next
MMA_ISSUE_CYCLES = 1.5    # cycles per m16n8k* per SM, all warps together
SMEM_LATENCY = 30
L2_LATENCY = 270
BARRIER_CYCLES = 40
PAIR_INSTRUCTIONS = {("fwd", 1): 45, ("fwd", 3): 70, ("fwd", 4): 80, ("bwd", 1): 60, ("bwd", 3): 100, ("bwd", 4): 110}
PAIR_MUFU = {("fwd", 1): 1, ("fwd", 3): 5, ("fwd", 4): 7, ("bwd", 1): 0, ("bwd", 3): 0, ("bwd", 4): 0}


@dataclass
class Launch:
    cell: str
    dtype: str
    kernel: str          # "fwd" or "bwd"
    hidden: int
    threads: int
    tile: int            # lines per CTA
    ctas: int            # per direction
    smem_gates: int
    smem_bytes: int
    mma: bool = False    # the tensor-core recurrence (sweep_{fwd,bwd}_mma_kernel.cuh)
    kt: int = 0          # tensor cores: hid_pad / 16
    nt: int = 0          # tensor cores: column tiles of 16 a warp owns
    kpw: int = 0         # tensor cores: k tiles a warp owns (16 wide, 8 for TF32)
    ksplit: int = 0      # tensor cores: warps sharing one column tile

    @property
    def recurrence(self) -> str:
        return "mma" if self.mma else "fma"

    @property
    def weights(self) -> str:
        if self.mma:
            return "regs"
        g = cell_spec(self.cell).gates
        return "smem" if self.smem_gates == g else "L2" if self.smem_gates == 0 else f"split {self.smem_gates}/{g}"


def launch_plan(cell: str, dtype: str, hidden: int, lines: int, backward: bool, gpu: str,
                recurrence: str = "auto", tf32: bool = False) -> Launch:
    """What the CUDA op launches: `recurrence` as BRNNSEG_CUDA_RECURRENCE (auto / fma / mma), `tf32` as
    torch.backends.cuda.matmul.allow_tf32."""
    threads, tile, ctas, gates, smem, mma, kt, nt, kpw, ksplit = torch.ops.brnnseg.sweep_launch_plan(
        cell, DTYPES[dtype], hidden, lines, backward, gpu, recurrence, tf32)
    return Launch(cell, dtype, "bwd" if backward else "fwd", hidden, threads, tile, ctas, gates, smem, bool(mma), kt,
                  nt, kpw, ksplit)


def kernel_constants() -> Dict[str, int]:
    """The recurrence kernels' compile-time constants, from C++ (csrc/cuda/sweep_plan.h)."""
    keys = ("launch_bounds", "lines_per_thread", "target_threads")
    return dict(zip(keys, torch.ops.brnnseg.sweep_kernel_constants()))


def gpu_spec(gpu: str) -> Dict[str, int]:
    keys = ("sm_count", "smem_per_block_default", "smem_per_block_optin", "smem_per_sm", "regs_per_sm",
            "max_threads_per_block", "max_threads_per_sm")
    return dict(zip(keys, torch.ops.brnnseg.gpu_spec(gpu)))


# ---- registers of the shipped build ------------------------------------------------------------------

def find_cuobjdump() -> Optional[str]:
    cands = [shutil.which("cuobjdump")]
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            cands.append(os.path.join(home, "bin", "cuobjdump"))
    try:
        import triton

        cands.append(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump"))
    except ImportError:
        pass
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


# sweep_{fwd,bwd}_kernel<T, Cell, kLPT> and sweep_{fwd,bwd}_mma_kernel<T, Cell, kt>, mangled: the storage
# type, then the cell's struct (NS_<len><Name>CellE; a cell named "rnn_tanh" is the struct RnnTanhCell), then
# the integer parameter.
_KERNEL_RE = re.compile(r"sweep_(fwd|bwd)(_mma)?_kernelI(f|N3c104HalfE|N3c108BFloat16E)NS_\d+(\w+?)CellELi(\d+)E")
_DT = {"f": "float32", "N3c104HalfE": "float16", "N3c108BFloat16E": "bfloat16"}


def _kernel_key(arch: str, m) -> Tuple[str, str, str, str]:
    """(arch, kernel, cell, dtype); kernel is "fwd"/"bwd" for the FP32-core kernels, "fwd_mma<kt>" /
    "bwd_mma<kt>" for the tensor-core ones."""
    kernel = m.group(1) + (f"_mma{m.group(5)}" if m.group(2) else "")
    return (arch, kernel, _cell_name(m.group(4)), _DT[m.group(3)])


def _cell_name(struct: str) -> str:
    """"RnnTanh" -> "rnn_tanh" (the struct of a cell is its name in CamelCase + "Cell")."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", struct).lower()


def kernel_resources(library: Optional[str] = None) -> Dict[Tuple[str, str, str, str], Dict[str, int]]:
    """{(arch, kernel, cell, dtype): {REG, STACK, SHARED, LOCAL, MAX_THREADS}} of every recurrence kernel
    (kernel: "fwd"/"bwd", or "fwd_mma<kt>"/"bwd_mma<kt>" for the tensor-core ones)
    in the shipped extension (``brnnseg_kernels/_C*.so``): ``cuobjdump -res-usage`` for registers, stack,
    static shared and local memory, ``cuobjdump -elf`` for the __launch_bounds__ ptxas recorded
    (EIATTR_MAX_THREADS). Empty without CUDA kernels or cuobjdump."""
    if library is None:
        from . import _C as lib

        library = lib.__file__
    tool = find_cuobjdump()
    if tool is None:
        return {}
    out = subprocess.run([tool, "-res-usage", library], capture_output=True, text=True)
    if out.returncode != 0:
        return {}
    res, arch = {}, None
    lines = out.stdout.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*arch = (sm_\d+)", line)
        if m:
            arch = m.group(1)
        m = _KERNEL_RE.search(line) if line.strip().startswith("Function") else None
        if m and i + 1 < len(lines):
            usage = dict((k, int(v)) for k, v in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", lines[i + 1]))
            res[_kernel_key(arch, m)] = usage
    for arch in sorted({k[0] for k in res}):
        elf = subprocess.run([tool, "-elf", "-arch", arch, library], capture_output=True, text=True).stdout
        for section in elf.split("\n.nv.info.")[1:]:
            m = _KERNEL_RE.search(section.split("\n", 1)[0])
            bounds = re.search(r"EIATTR_MAX_THREADS\s*\n\s*Format:.*\n\s*Value:\s*(0x[0-9a-f]+)", section)
            key = m and _kernel_key(arch, m)
            if key in res and bounds:
                res[key]["MAX_THREADS"] = int(bounds.group(1), 16)
    return res


# ---- the latency model ---------------------------------------------------------------------------------

@dataclass
class Estimate:
    launch: Launch
    total_ctas: int
    ctas_per_sm: int
    waves: int
    registers: Optional[int]
    bound: str
    us_per_step: float
    cycles: Optional[Dict[str, float]] = None  # tensor-core kernels: product, gates, barriers (cycles)


def estimate_mma(launch: Launch, gpu: str, sweeps: int = 1, registers: Optional[int] = None) -> Estimate:
    """Per-step time of one tensor-core launch (see the module doc). bound: "mma" or "gates", the
    larger phase."""
    spec = gpu_spec(gpu)
    g, hid = cell_spec(launch.cell).gates, launch.hidden
    hp = 16 * launch.kt
    kk = 8 if launch.dtype == "float32" else 16
    kernel = launch.kernel
    ntiles, ktiles = (g * hp // 16, hp // kk) if kernel == "fwd" else (hp // 16, g * hp // kk)
    regs = registers or 168
    per_sm = min(spec["smem_per_sm"] // (launch.smem_bytes + 1024), spec["max_threads_per_sm"] // launch.threads,
                 spec["regs_per_sm"] // (regs * launch.threads))
    per_sm = max(1, per_sm)
    total = launch.ctas * 2 * sweeps
    concurrent = min(per_sm, math.ceil(total / spec["sm_count"]))
    waves = math.ceil(total / (spec["sm_count"] * per_sm))
    chain = 2 * launch.kpw * MMA_LATENCY + max(0, launch.nt - 1) * 2 * launch.kpw + 2 * SMEM_LATENCY
    product = max(chain, ntiles * ktiles * 2 * MMA_ISSUE_CYCLES * concurrent)
    pairs = 16 * hid * concurrent
    key = (kernel, g)
    gates = max(pairs * PAIR_INSTRUCTIONS[key] / 32 / 4, pairs * PAIR_MUFU[key] / 16)
    gates += SMEM_LATENCY if kernel == "fwd" else L2_LATENCY
    cycles = product + gates + 2 * BARRIER_CYCLES
    bound = "mma" if product >= gates else "gates"
    parts = dict(product=product, gates=gates, barriers=2 * BARRIER_CYCLES)
    return Estimate(launch, total, per_sm, waves, registers, bound, cycles / (CLOCK_GHZ[gpu] * 1e3), parts)


def estimate(launch: Launch, gpu: str, sweeps: int = 1, registers: Optional[int] = None) -> Estimate:
    """Per-step time of one launch of `sweeps` sweeps (2 directions each) on `gpu` (see module doc)."""
    if launch.mma:
        return estimate_mma(launch, gpu, sweeps, registers)
    spec = gpu_spec(gpu)
    g, hid = cell_spec(launch.cell).gates, launch.hidden
    elem = 4 if launch.dtype == "float32" else 2
    warps = launch.threads // 32
    L = kernel_constants()["lines_per_thread"]
    if launch.kernel == "fwd":
        smem = warps * hid * (launch.smem_gates + L)
        l2_bytes = warps * hid * (g - launch.smem_gates) * 32 * elem
        fma = warps * hid * g * L / 4
    else:
        rows_in_smem = launch.smem_gates * hid
        smem = warps * (rows_in_smem * (1 + L) + (g * hid - rows_in_smem) * L)
        l2_bytes = warps * (g * hid - rows_in_smem) * 32 * elem
        fma = warps * g * hid * L / 4
    l2 = l2_bytes / L2_BYTES_PER_CLK[gpu]
    terms = {"smem": smem, "fma": fma, "L2": l2}
    bound_name = max(terms, key=terms.get)
    bound = terms[bound_name]
    regs = registers or 128  # __launch_bounds__(512) caps a thread at 128
    per_sm = min(spec["smem_per_sm"] // (launch.smem_bytes + 1024), spec["max_threads_per_sm"] // launch.threads,
                 spec["regs_per_sm"] // (regs * launch.threads))
    per_sm = max(1, per_sm)
    total = launch.ctas * 2 * sweeps
    concurrent = min(per_sm, math.ceil(total / spec["sm_count"]))
    waves = math.ceil(total / (spec["sm_count"] * per_sm))
    cycles = max(bound * concurrent, bound + FIXED_CYCLES[launch.kernel])
    return Estimate(launch, total, per_sm, waves, registers, bound_name, cycles / (CLOCK_GHZ[gpu] * 1e3))


def renet_plan(gpu: str, shape, cell: str, dtype: str, resources=None, recurrence: str = "auto",
               tf32: bool = False) -> List[Tuple[str, Estimate, int]]:
    """The four launches of a ReNet block (rows then columns, forward and backward) with their step
    counts: [(sweep, estimate, steps)]. recurrence / tf32: as BRNNSEG_CUDA_RECURRENCE and
    torch.backends.cuda.matmul.allow_tf32."""
    n, c, h, w, hid = shape
    arch = ARCH[gpu]
    out = []
    for kernel in ("fwd", "bwd"):
        for sweep, lines, steps in (("rows", n * h, w), ("cols", n * w, h)):
            launch = launch_plan(cell, dtype, hid, lines, kernel == "bwd", gpu, recurrence, tf32)
            key = f"{kernel}_mma{launch.kt}" if launch.mma else kernel
            regs = (resources or {}).get((arch, key, cell, dtype), {}).get("REG")
            out.append((sweep, estimate(launch, gpu, registers=regs), steps))
    return out


def plan_table(gpu: str, shapes: Dict[str, tuple], cells=("gru", "lstm"), dtypes=("float32", "bfloat16"),
               resources=None, recurrence: str = "auto", tf32: bool = False) -> str:
    resources = kernel_resources() if resources is None else resources
    head = (f"{'shape':<20} {'cell':<4} {'dtype':<8} {'pass':<4} {'rec':<3} {'threads':>7} {'lines/CTA':>9} {'CTAs r/c':>10} "
            f"{'smem B':>7} {'W_hh':<9} {'CTA/SM':>6} {'waves r/c':>9} {'regs':>4} {'bound':<5} {'us/step':>7} "
            f"{'ms':>7}")
    rows = [f"launch plan on {gpu} ({ARCH[gpu]}, {gpu_spec(gpu)['sm_count']} SMs); recurrence {recurrence}, TF32 "
            + ("allowed" if tf32 else "not allowed") + "; registers from "
            + ("the shipped build" if resources else "- (no CUDA build or no cuobjdump)"), head, "-" * len(head)]
    for name, shape in shapes.items():
        for cell in cells:
            for dtype in dtypes:
                plan = renet_plan(gpu, shape, cell, dtype, resources, recurrence, tf32)
                for kernel, (r, cst) in (("fwd", plan[0:2]), ("bwd", plan[2:4])):
                    e, ec = r[1], cst[1]
                    ms = (r[2] * e.us_per_step * e.waves + cst[2] * ec.us_per_step * ec.waves) / 1e3
                    regs = "-" if e.registers is None else str(e.registers)
                    rows.append(f"{name:<20} {cell:<4} {dtype:<8} {kernel:<4} {e.launch.recurrence:<3} {e.launch.threads:>7} "
                                f"{e.launch.tile:>9} {f'{e.total_ctas}/{ec.total_ctas}':>10} "
                                f"{e.launch.smem_bytes:>7} {e.launch.weights:<9} {e.ctas_per_sm:>6} "
                                f"{f'{e.waves}/{ec.waves}':>9} {regs:>4} {e.bound:<5} {e.us_per_step:>7.2f} "
                                f"{ms:>7.2f}")
    rows.append("ms: rows sweep (T = W) + columns sweep (T = H), each T x us/step x waves; paper figures "
                "(brnnseg_kernels/plan.py) until python/gpu_selfcheck.py measures them")
    return "\n".join(rows)
