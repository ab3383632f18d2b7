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
These are paper figures: the H200 measured 4.5-8x more time per step (2026-12-04). The calibrated model
(``estimate_calibrated``, the default of ``plan``) prices what the shipped kernels actually do -- their SASS
instruction counts, dependent-issue latency, the dependent global and L2 loads of every step -- with
figures fitted to that run (``CALIBRATION``, ``fit_calibration``; every measured row within 25 %;
benchmarks/results/2026-12-04-h200-calibrated-model.md). ``python/gpu_selfcheck.py`` records both models
beside each measurement.
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
    tf32x3: bool = False  # tensor cores, float32: 3xTF32 products (BRNNSEG_CUDA_RECURRENCE=tf32x3)

    @property
    def recurrence(self) -> str:
        return ("tf32x3" if self.tf32x3 else "mma") if self.mma else "fma"

    @property
    def weights(self) -> str:
        if self.mma:
            return "regs"
        g = cell_spec(self.cell).gates
        return "smem" if self.smem_gates == g else "L2" if self.smem_gates == 0 else f"split {self.smem_gates}/{g}"


def launch_plan(cell: str, dtype: str, hidden: int, lines: int, backward: bool, gpu: str,
                recurrence: str = "auto", tf32: bool = False) -> Launch:
    """What the CUDA op launches: `recurrence` as BRNNSEG_CUDA_RECURRENCE (auto / fma / mma / tf32x3), `tf32`
    as torch.backends.cuda.matmul.allow_tf32."""
    threads, tile, ctas, gates, smem, mma, kt, nt, kpw, ksplit, x3 = torch.ops.brnnseg.sweep_launch_plan(
        cell, DTYPES[dtype], hidden, lines, backward, gpu, recurrence, tf32)
    return Launch(cell, dtype, "bwd" if backward else "fwd", hidden, threads, tile, ctas, gates, smem, bool(mma), kt,
                  nt, kpw, ksplit, bool(x3))


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
_KERNEL_RE = re.compile(
    r"sweep_(fwd|bwd)(_mma)?_kernelI(f|N3c104HalfE|N3c108BFloat16E)NS_\d+(\w+?)CellELi(\d+)E(?:Lb([01])E)?")
_DT = {"f": "float32", "N3c104HalfE": "float16", "N3c108BFloat16E": "bfloat16"}


def _kernel_key(arch: str, m) -> Tuple[str, str, str, str]:
    """(arch, kernel, cell, dtype); kernel is "fwd"/"bwd" for the FP32-core kernels, "fwd_mma<kt>" /
    "bwd_mma<kt>" for the tensor-core ones, "fwd_mma<kt>x3" / "bwd_mma<kt>x3" for their 3xTF32 float32 ones."""
    kernel = m.group(1) + (f"_mma{m.group(5)}" + ("x3" if m.group(6) == "1" else "") if m.group(2) else "")
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


def _residency(launch: Launch, gpu: str, sweeps: int, registers: Optional[int], default_regs: int):
    spec = gpu_spec(gpu)
    regs = registers or default_regs
    per_sm = min(spec["smem_per_sm"] // (launch.smem_bytes + 1024), spec["max_threads_per_sm"] // launch.threads,
                 spec["regs_per_sm"] // (regs * launch.threads))
    per_sm = max(1, per_sm)
    total = launch.ctas * 2 * sweeps
    concurrent = min(per_sm, math.ceil(total / spec["sm_count"]))
    waves = math.ceil(total / (spec["sm_count"] * per_sm))
    return total, per_sm, concurrent, waves


def estimate_mma(launch: Launch, gpu: str, sweeps: int = 1, registers: Optional[int] = None) -> Estimate:
    """Per-step time of one tensor-core launch (see the module doc). bound: "mma" or "gates", the
    larger phase."""
    g, hid = cell_spec(launch.cell).gates, launch.hidden
    hp = 16 * launch.kt
    kk = 8 if launch.dtype == "float32" else 16
    kernel = launch.kernel
    ntiles, ktiles = (g * hp // 16, hp // kk) if kernel == "fwd" else (hp // 16, g * hp // kk)
    total, per_sm, concurrent, waves = _residency(launch, gpu, sweeps, registers, 168)
    x3 = 3 if launch.tf32x3 else 1  # 3xTF32: three dependent products per tile and k
    chain = x3 * (2 * launch.kpw * MMA_LATENCY + max(0, launch.nt - 1) * 2 * launch.kpw) + 2 * SMEM_LATENCY
    product = max(chain, x3 * ntiles * ktiles * 2 * MMA_ISSUE_CYCLES * concurrent)
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
    # registers: __launch_bounds__(512) caps a thread at 128
    total, per_sm, concurrent, waves = _residency(launch, gpu, sweeps, registers, 128)
    cycles = max(bound * concurrent, bound + FIXED_CYCLES[launch.kernel])
    return Estimate(launch, total, per_sm, waves, registers, bound_name, cycles / (CLOCK_GHZ[gpu] * 1e3))


def renet_plan(gpu: str, shape, cell: str, dtype: str, resources=None, recurrence: str = "auto",
               tf32: bool = False, model: str = "calibrated") -> List[Tuple[str, Estimate, int]]:
    """The four launches of a ReNet block (rows then columns, forward and backward) with their step
    counts: [(sweep, estimate, steps)]. recurrence / tf32: as BRNNSEG_CUDA_RECURRENCE and
    torch.backends.cuda.matmul.allow_tf32; model: "calibrated" (``estimate_calibrated``, the paper model
    where the GPU has no calibration) or "paper" (``estimate``)."""
    if model not in ("calibrated", "paper"):
        raise ValueError(f"model must be 'calibrated' or 'paper', got {model!r}")
    n, c, h, w, hid = shape
    arch = ARCH[gpu]
    out = []
    for kernel in ("fwd", "bwd"):
        for sweep, lines, steps in (("rows", n * h, w), ("cols", n * w, h)):
            launch = launch_plan(cell, dtype, hid, lines, kernel == "bwd", gpu, recurrence, tf32)
            key = f"{kernel}_mma{launch.kt}" + ("x3" if launch.tf32x3 else "") if launch.mma else kernel
            regs = (resources or {}).get((arch, key, cell, dtype), {}).get("REG")
            est = estimate_calibrated(launch, gpu, registers=regs) if model == "calibrated" else None
            out.append((sweep, est or estimate(launch, gpu, registers=regs), steps))
    return out


def plan_table(gpu: str, shapes: Dict[str, tuple], cells=("gru", "lstm"), dtypes=("float32", "bfloat16"),
               resources=None, recurrence: str = "auto", tf32: bool = False, model: str = "calibrated") -> str:
    resources = kernel_resources() if resources is None else resources
    if model == "calibrated" and ARCH[gpu] not in CALIBRATION:
        model = "paper"  # nothing measured on this architecture yet
    head = (f"{'shape':<20} {'cell':<4} {'dtype':<8} {'pass':<4} {'rec':<3} {'threads':>7} {'lines/CTA':>9} {'CTAs r/c':>10} "
            f"{'smem B':>7} {'W_hh':<9} {'CTA/SM':>6} {'waves r/c':>9} {'regs':>4} {'bound':<5} {'us/step':>7} "
            f"{'ms':>7}")
    rows = [f"launch plan on {gpu} ({ARCH[gpu]}, {gpu_spec(gpu)['sm_count']} SMs); recurrence {recurrence}, TF32 "
            + ("allowed" if tf32 else "not allowed") + f"; {model} model; registers from "
            + ("the shipped build" if resources else "- (no CUDA build or no cuobjdump)"), head, "-" * len(head)]
    for name, shape in shapes.items():
        for cell in cells:
            for dtype in dtypes:
                plan = renet_plan(gpu, shape, cell, dtype, resources, recurrence, tf32, model)
                for kernel, (r, cst) in (("fwd", plan[0:2]), ("bwd", plan[2:4])):
                    e, ec = r[1], cst[1]
                    ms = (r[2] * e.us_per_step * e.waves + cst[2] * ec.us_per_step * ec.waves) / 1e3
                    regs = "-" if e.registers is None else str(e.registers)
                    rows.append(f"{name:<20} {cell:<4} {dtype:<8} {kernel:<4} {e.launch.recurrence:<3} {e.launch.threads:>7} "
                                f"{e.launch.tile:>9} {f'{e.total_ctas}/{ec.total_ctas}':>10} "
                                f"{e.launch.smem_bytes:>7} {e.launch.weights:<9} {e.ctas_per_sm:>6} "
                                f"{f'{e.waves}/{ec.waves}':>9} {regs:>4} {e.bound:<5} {e.us_per_step:>7.2f} "
                                f"{ms:>7.2f}")
    rows.append("ms: rows sweep (T = W) + columns sweep (T = H), each T x us/step x waves; "
                + ("calibrated on the H200 run of 2026-12-04 (brnnseg_kernels/plan.py: CALIBRATION; every measured "
                   "row within 25 %)" if model == "calibrated" else
                   "paper figures (brnnseg_kernels/plan.py), 4.5-8x below what the H200 measured"))
    return "\n".join(rows)


# ---- the calibrated model (issue 22, part 1) -------------------------------------------------------------
# The paper model above predicted 4.5-8x less time per step than the H200 measured (2026-12-04). The model
# below keeps the launch geometry and replaces the paper's throughput figures by the costs the shipped
# code actually pays, counted in its SASS and priced by a least-squares fit to the 52 measured rows
# (``fit_calibration``; the data: benchmarks/results/2026-12-04-h200/us_per_step.json).
#
# Static instruction counts of the build the H200 ran (python/sass_steps.py on the torch 2.11 / sm_90
# build, benchmarks/results/2026-12-04-h200-sass-budget.md): counted, not fitted.
# FP32-core kernels: (one pass of the k loop forward / of the W_hh-row loop backward, the rest of a step).
SASS_FMA = {
    ("fwd", "gru", "float32"): (62, 1026), ("fwd", "gru", "bfloat16"): (68, 1034),
    ("fwd", "lstm", "float32"): (126, 1082), ("fwd", "lstm", "bfloat16"): (135, 1103),
    ("bwd", "gru", "float32"): (80, 1650), ("bwd", "gru", "bfloat16"): (84, 1658),
    ("bwd", "lstm", "float32"): (85, 1365), ("bwd", "lstm", "bfloat16"): (84, 1370),
}
# Tensor-core kernels: one pass of the gate-math loop (one (line, unit) pair of a thread), by kt.
SASS_MMA_PAIR = {
    ("fwd", "gru", "float32", 4): 107, ("fwd", "gru", "bfloat16", 4): 112, ("fwd", "gru", "bfloat16", 8): 114,
    ("fwd", "lstm", "float32", 4): 139, ("fwd", "lstm", "bfloat16", 4): 136, ("fwd", "lstm", "bfloat16", 8): 134,
    ("bwd", "gru", "float32", 4): 163, ("bwd", "gru", "bfloat16", 4): 167, ("bwd", "gru", "bfloat16", 8): 177,
    ("bwd", "lstm", "float32", 4): 169, ("bwd", "lstm", "bfloat16", 4): 198, ("bwd", "lstm", "bfloat16", 8): 233,
}


@dataclass(frozen=True)
class Calibration:
    """Per-step costs in SM cycles, each the price of one thing the kernels do (fitted on one GPU).

    FP32-core kernels (``sweep_{fwd,bwd}_kernel.cuh``), per step:
      fixed + passes x (I_pass x max(warps per scheduler x issue_cpi, dep_cpi) + L2 term)
    * ``fma_fixed_fwd`` / ``fma_fixed_bwd``: everything outside the k / row loop: the rest-of-step
      instructions (~1,030-1,660 a warp, SASS) and the loads whose results the same step needs -- forward,
      each of a thread's 4 lines loads its input projections from global memory after the product
      (``sweep_fwd_kernel.cuh:75``, 12-16 LDGs), one line after the other; backward, the saved gates,
      grad_y and h_prev -- then the barrier;
    * ``dep_cpi``: cycles between a warp's dependent instructions; with 2 warps per scheduler (256 threads,
      one CTA per SM) nothing hides them, so one loop pass costs I_pass x dep_cpi;
    * ``issue_cpi``: cycles per warp instruction per scheduler once enough warps share it (issue-bound);
    * ``l2_latency``: W_hh rows that are not in shared memory come through L2 in every pass, loaded and
      used in the same pass: one L2 round trip (or the SM's share of L2 bandwidth, ``L2_BYTES_PER_CLK``,
      a hardware figure, not fitted: where the bytes take longer; in none of the measured rows).
    Tensor-core kernels (``sweep_{fwd,bwd}_mma_kernel.cuh``), per step:
      mma_fixed + pair passes x mma_pass + mma_cpi x (16 lines x hidden x I_pair / 128)
    * ``mma_fixed_fwd`` / ``_bwd``: the product (chains of mma.sync), two barriers and, forward, the wait
      for the next step's projections copied with cp.async at the start of the step (a DRAM round trip
      when the step is shorter);
    * ``mma_pass_fwd`` / ``_bwd``: the latency of one pass of the gate-math loop (BRNNSEG_NO_UNROLL, a
      thread's pairs one after the other): backward, its loads of grad_y, the saved gates and h_prev come
      from L2 (prefetched, not yet on chip), in sequence;
    * ``mma_cpi_fwd`` / ``_bwd``: cycles per gate-math warp instruction per scheduler.
    """
    fma_fixed_fwd: float
    fma_fixed_bwd: float
    dep_cpi: float
    issue_cpi: float
    l2_latency: float
    mma_fixed_fwd: float
    mma_fixed_bwd: float
    mma_pass_fwd: float
    mma_pass_bwd: float
    mma_cpi_fwd: float
    mma_cpi_bwd: float

    FMA_FIELDS = ("fma_fixed_fwd", "fma_fixed_bwd", "dep_cpi", "issue_cpi", "l2_latency")
    MMA_FIELDS = ("mma_fixed_fwd", "mma_fixed_bwd", "mma_pass_fwd", "mma_pass_bwd", "mma_cpi_fwd", "mma_cpi_bwd")


kMmaLines = 16  # lines per CTA of the tensor-core kernels (sweep_mma.cuh)

# fit_calibration() of the H200 run of 2026-12-04 (52 rows; tests/test_plan.py refits and compares), rounded.
CALIBRATION = {
    "sm_90": Calibration(fma_fixed_fwd=10710, fma_fixed_bwd=8510, dep_cpi=2.74, issue_cpi=1.15, l2_latency=263,
                         mma_fixed_fwd=2314, mma_fixed_bwd=0, mma_pass_fwd=59,
                         mma_pass_bwd=1552, mma_cpi_fwd=3.17, mma_cpi_bwd=3.77),
}


def _sass_key(cell: str, dtype: str) -> Tuple[str, str]:
    """The measured build's counts stand in for the cells and dtypes it was not counted for: the Elman
    cells take the GRU's (more gates: an upper bound), float16 takes bfloat16's (same instructions)."""
    return ("gru" if cell.startswith("rnn") else cell), ("bfloat16" if dtype == "float16" else dtype)


def calibrated_cycles(launch: Launch, gpu: str, cal: Calibration, sweeps: int = 1,
                      registers: Optional[int] = None) -> Tuple[float, int, Dict[str, float], int, int]:
    """(cycles per step of one wave, waves, the step's cycles by term, CTAs in all, CTAs per SM)."""
    g, hid = cell_spec(launch.cell).gates, launch.hidden
    cell, dtype = _sass_key(launch.cell, launch.dtype)
    if launch.mma:
        total, per_sm, conc, waves = _residency(launch, gpu, sweeps, registers, 168)
        kts = sorted(kt for (k, c, d, kt) in SASS_MMA_PAIR if (k, c, d) == (launch.kernel, cell, dtype))
        kt = min(kts, key=lambda v: (abs(v - launch.kt), -v))
        pair = SASS_MMA_PAIR[(launch.kernel, cell, dtype, kt)]
        passes = math.ceil(kMmaLines * 16 * launch.kt / launch.threads)
        fwd = launch.kernel == "fwd"
        parts = {"fixed": cal.mma_fixed_fwd if fwd else cal.mma_fixed_bwd,
                 "gate passes": passes * (cal.mma_pass_fwd if fwd else cal.mma_pass_bwd),
                 "gate issue": (cal.mma_cpi_fwd if fwd else cal.mma_cpi_bwd) * conc * kMmaLines * hid * pair / 128}
        if launch.tf32x3:
            # Not calibrated (no 3xTF32 row measured yet): the two extra dependent products per k tile of
            # a warp's chain at the paper's MMA latency, plus splitting A (3 instructions per element).
            parts["3xTF32 products"] = 2 * launch.kpw * (2 * MMA_LATENCY + max(0, launch.nt - 1) * 2) + 12 * launch.kpw
        return sum(parts.values()), waves, parts, total, per_sm
    total, per_sm, conc, waves = _residency(launch, gpu, sweeps, registers, 128)
    per_pass, _ = SASS_FMA[(launch.kernel, cell, dtype)]
    wps = conc * launch.threads / 32 / 4
    elem = 4 if launch.dtype == "float32" else 2
    warps = conc * launch.threads // 32
    if launch.kernel == "fwd":
        passes, l2_share, l2_bytes = hid, 1.0 if launch.smem_gates < g else 0.0, warps * (g - launch.smem_gates) * 32 * elem
    else:
        passes, l2_share, l2_bytes = g * hid, (g - launch.smem_gates) / g, warps * 32 * elem
    l2 = max(cal.l2_latency, l2_bytes / L2_BYTES_PER_CLK[gpu]) if l2_share > 0 else 0.0
    parts = {"fixed": cal.fma_fixed_fwd if launch.kernel == "fwd" else cal.fma_fixed_bwd,
             "loop issue": passes * per_pass * max(wps * cal.issue_cpi, cal.dep_cpi),
             "W_hh via L2": passes * l2_share * l2}
    return sum(parts.values()), waves, parts, total, per_sm



def estimate_calibrated(launch: Launch, gpu: str, sweeps: int = 1, registers: Optional[int] = None,
                        calibration: Optional[Calibration] = None) -> Optional[Estimate]:
    """Per-step time of one launch by the calibrated model, or None where no calibration exists for the
    GPU's architecture (the paper model, ``estimate``, then stands)."""
    cal = calibration or CALIBRATION.get(ARCH[gpu])
    if cal is None:
        return None
    cycles, waves, parts, total, per_sm = calibrated_cycles(launch, gpu, cal, sweeps, registers)
    bound = max(parts, key=parts.get)
    return Estimate(launch, total, per_sm, waves, registers, bound, cycles / (CLOCK_GHZ[gpu] * 1e3), parts)


def measured_launch(row: dict, gpu: str = "h200") -> Launch:
    """The launch of one row of gpu_selfcheck.py's us_per_step.json, from today's planner."""
    rec = "mma" if row["recurrence"].startswith("mma") else "fma"
    return launch_plan(row["cell"], row["dtype"], row["hidden"], row["lines"], row["kernel"] == "bwd", gpu, rec,
                       tf32=row["recurrence"] == "mma(tf32)")


def fit_calibration(rows: List[dict], gpu: str = "h200") -> Calibration:
    """Least squares on log(model / measured) over the rows of a gpu_selfcheck.py us_per_step.json
    (time per step of one wave x waves): the FP32-core terms on the FP32-core rows, the tensor-core
    terms on the tensor-core rows. Needs scipy."""
    from scipy.optimize import least_squares

    launches = [(r, measured_launch(r, gpu)) for r in rows]
    clock = CLOCK_GHZ[gpu] * 1e3
    base = dict.fromkeys(Calibration.FMA_FIELDS + Calibration.MMA_FIELDS, 0.0)

    def fit(fields, start, upper, mma):
        sel = [(r, lp) for r, lp in launches if lp.mma == mma]

        def residuals(p):
            cal = Calibration(**{**base, **dict(zip(fields, p))})
            out = []
            for r, lp in sel:
                cycles, waves, _, _, _ = calibrated_cycles(lp, gpu, cal)
                out.append(math.log(max(cycles * waves / clock, 1e-9) / r["us_per_step"]))
            return out

        return least_squares(residuals, start, bounds=([0.0] * len(start), upper)).x

    fma = fit(Calibration.FMA_FIELDS, [5000, 7000, 4, 1, 300], [1e5, 1e5, 20, 10, 3000], False)
    mma = fit(Calibration.MMA_FIELDS, [1500, 3000, 500, 300, 1, 1], [1e5, 1e5, 1e4, 1e4, 20, 20], True)
    return Calibration(**dict(zip(Calibration.FMA_FIELDS, map(float, fma))),
                       **dict(zip(Calibration.MMA_FIELDS, map(float, mma))))


def calibration_table(rows: List[dict], gpu: str = "h200", calibration: Optional[Calibration] = None) -> str:
    """Markdown: every measured row of a us_per_step.json beside the calibrated model's step budget in
    cycles (its terms add up to the model's total) and the paper model's figure."""
    clock = CLOCK_GHZ[gpu] * 1e3
    out = ["| cell | dtype | hidden | pass | kernel | W_hh | measured us/step | measured cycles | model terms (cycles "
           "per step of one wave) | waves | model us/step | error | paper model us/step |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    worst = 0.0
    for r in rows:
        lp = measured_launch(r, gpu)
        e = estimate_calibrated(lp, gpu, calibration=calibration)
        if e is None:
            raise ValueError(f"no calibration for {gpu} ({ARCH[gpu]})")
        us = e.us_per_step * e.waves
        err = us / r["us_per_step"] - 1
        worst = max(worst, abs(err))
        terms = " + ".join(f"{k} {v:,.0f}" for k, v in e.cycles.items() if v)
        out.append(f"| {r['cell']} | {r['dtype']} | {r['hidden']} | {r['kernel']} | {r['recurrence']} | {lp.weights} | "
                   f"{r['us_per_step']:.2f} | {r['us_per_step'] * clock:,.0f} | {terms} | {e.waves} | {us:.2f} | "
                   f"{100 * err:+.0f} % | {estimate(lp, gpu).us_per_step * e.waves:.2f} |")
    out.append(f"\nlargest error {100 * worst:.1f} % over {len(rows)} rows (clock {CLOCK_GHZ[gpu]} GHz)")
    return "\n".join(out)
