"""Ahead-of-time compilation of the Triton loss kernels for a GPU target, without a GPU.

Every variant the op can launch along the axes that change the generated code's shape -- forward and
backward, 2-D and 3-D (BOUNDARY_RADIUS_Z), each logits dtype (float16/bfloat16/float32, and float64 which also
accumulates in float64), each tile shape in ``_kernels.BLOCKS`` -- is compiled with every optional
term switched on (per-pixel weight, ignore value, boundary weighting at radius 1, squared Dice): the
other flag settings compile a subset of that code. ``python -m brnnseg_kernels.losses._aot`` compiles
them all for sm_80 and sm_90 and prints registers and spills; tests/test_seg_loss_aot.py runs it in CI
and fails on any spill.

The multi-class kernels (``ce_dice_kernels.py``) vary along the class count rounded to a power of two
(C_PAD, which sets the tile: about 1024 logits a program), 2-D/3-D, the logits dtype and integer or soft
targets: ``ce_variants()`` is that product for C_PAD 2..256; ``--set ce`` compiles it, and CI compiles
``CE_SUBSET`` (every C_PAD for float32 2-D labels, plus 3-D, float16/bfloat16/float64 and soft targets).
"""
from __future__ import annotations

import itertools
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Dict, List, NamedTuple

ARCHS = (80, 90)
DTYPES = ("fp16", "bf16", "fp32", "fp64")


class Variant(NamedTuple):
    kernel: str      # "fwd" or "bwd"
    dims: int        # 2 or 3
    dtype: str       # logits dtype, Triton spelling
    block: tuple     # (BLOCK_H, BLOCK_W)
    arch: int        # 80, 90

    @property
    def name(self) -> str:
        return f"{self.kernel}-{self.dims}d-{self.dtype}-{self.block[0]}x{self.block[1]}-sm{self.arch}"


def variants(archs=ARCHS) -> List[Variant]:
    """The pixel kernels (fwd, bwd) per dims, dtype and tile; the finish kernel ("finish", 2-D entry only)
    per logits dtype with block = (batch Dice, reduction): (0, 2) mean and (1, 0) batch "none", the two
    ends of its code."""
    from ._kernels import BLOCKS

    pixel = [Variant(k, d, t, b, a) for k, d, t, b, a in itertools.product(("fwd", "bwd"), (2, 3), DTYPES, BLOCKS, archs)]
    return pixel + [Variant("finish", 2, t, b, a) for t, b, a in itertools.product(DTYPES, ((0, 2), (1, 0)), archs)]


def compile_variant(v: Variant) -> Dict:
    """Compiles one variant for its arch; returns registers, spills and shared memory of the cubin."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import _kernels as K

    acc = "fp64" if v.dtype == "fp64" else "fp32"
    if v.kernel == "finish":
        return _compile(K._bce_dice_finish_kernel, v, {
            "part_ptr": f"*{acc}", "sel_ptr": "*fp32", "out_ptr": f"*{v.dtype}", "fac_ptr": f"*{acc}",
            "sums_ptr": f"*{acc}", **{n: "i32" for n in ("N", "C", "T", "dice_from")},
            **{f"{n}_{part}": "fp32" for n in ("lambda_ce", "lambda_dice", "smooth_nr", "smooth_dr")
               for part in ("hi", "lo")}},
            dict(HAS_SEL=True, BATCH=v.block[0] == 1, LOG_DICE=True, REDUCTION=v.block[1],
                 ACC=tl.float64 if acc == "fp64" else tl.float32, BLOCK_NC=K.FINISH_BLOCK[0],
                 BLOCK_T=K.FINISH_BLOCK[1]), num_warps=4)
    ints = {n: "i32" for n in ("N", "C", "D", "H", "W", "tiles_w", "n_tiles")}
    floats = {"boundary_weight": "fp32", "ignore_index": "fp32", "pw_value": "fp32"}
    flags = dict(PW_TENSOR=True, HAS_WEIGHT=True, HAS_IGNORE=True, USE_BOUNDARY=True, SQUARED=True, BOUNDARY_RADIUS=1,
                 BOUNDARY_RADIUS_Z=1 if v.dims == 3 else 0, ACC=tl.float64 if acc == "fp64" else tl.float32,
                 BLOCK_H=v.block[0], BLOCK_W=v.block[1])
    if v.kernel == "fwd":
        fn = K._seg_loss_fwd_kernel
        ptrs = {"x_ptr": f"*{v.dtype}", "y_ptr": "*fp32", "w_ptr": "*fp32", "pw_ptr": f"*{acc}", "part_ptr": f"*{acc}"}
    else:  # GO_MODE 2 holds the code of modes 0 and 1 and the loop over the batch
        fn = K._seg_loss_bwd_kernel
        flags["GO_MODE"] = 2
        ptrs = {"go_ptr": f"*{v.dtype}", "fac_ptr": f"*{acc}", "x_ptr": f"*{v.dtype}", "y_ptr": "*fp32",
                "w_ptr": "*fp32", "pw_ptr": f"*{acc}", "dx_ptr": f"*{v.dtype}"}
    return _compile(fn, v, {**ptrs, **ints, **floats}, flags, K.NUM_WARPS)


def _compile(fn, v, types, flags, num_warps) -> Dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: ("constexpr" if name in flags else types[name]) for name in fn.arg_names}
    src = ASTSource(fn=fn, signature=signature, constexprs=flags)
    compiled = triton.compile(src, target=GPUTarget("cuda", v.arch, 32), options={"num_warps": num_warps})
    md = compiled.metadata
    n_regs, n_spills = _ptxas_resources(compiled.asm["cubin"])  # (n_regs is only set once loaded on a GPU)
    return {"variant": v.name, "registers": int(n_regs), "spills": int(n_spills), "shared": int(md.shared),
            "num_warps": int(md.num_warps)}


def _ptxas_resources(cubin: bytes):
    """Registers and spill/stack bytes of a cubin, from the cuobjdump that Triton's package carries."""
    import os
    import re
    import subprocess
    import tempfile

    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    regs = int(re.search(r"REG:(\d+)", out).group(1))
    spill = int(re.search(r"STACK:(\d+)", out).group(1)) + int(re.search(r"LOCAL:(\d+)", out).group(1))
    return regs, spill


class CeVariant(NamedTuple):
    kernel: str      # "fwd" or "bwd"
    dims: int        # 2 or 3
    dtype: str       # logits dtype, Triton spelling
    c_pad: int       # classes rounded up to a power of two
    index: bool      # integer labels (else soft targets)
    arch: int

    @property
    def name(self) -> str:
        return f"ce-{self.kernel}-{self.dims}d-{self.dtype}-c{self.c_pad}-{'labels' if self.index else 'soft'}-sm{self.arch}"


C_PADS = (2, 4, 8, 16, 32, 64, 128, 256)
CE_SUBSET = [CeVariant(k, d, t, c, i, 90) for k in ("fwd", "bwd")
             for d, t, c, i in [(2, "bf16", 2, True), (3, "fp32", 256, True), (2, "fp64", 8, False),
                                (3, "fp16", 16, False)] + [(2, "fp32", c, True) for c in C_PADS]] + \
    [CeVariant("finish", 2, t, c, True, 90) for t in ("fp32", "fp64") for c in (2, 4)]


def ce_variants(archs=ARCHS) -> List[CeVariant]:
    """The pixel kernels along every axis; the finish kernel (one program, no tile) per logits dtype at its
    two ends of code (c_pad 2: batch Dice with reduction "none"; 4: "mean")."""
    return [CeVariant(k, d, t, c, i, a) for k, d, t, c, i, a in
            itertools.product(("fwd", "bwd"), (2, 3), DTYPES, C_PADS, (True, False), archs)] + \
        [CeVariant("finish", 2, t, c, True, a) for t, c, a in itertools.product(DTYPES, (2, 4), archs)]


def compile_ce_variant(v: CeVariant) -> Dict:
    """One multi-class kernel variant with every optional term on (weight, ignore, boundary, squared)."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import ce_dice_kernels as K

    acc = "fp64" if v.dtype == "fp64" else "fp32"
    import torch

    _, block = K.tile_shape(v.c_pad, torch.float64 if v.dtype == "fp64" else torch.float32)
    flags = dict(INDEX=v.index, HAS_WEIGHT=True, HAS_IGNORE=v.index, USE_BOUNDARY=True, SQUARED=True,
                 BOUNDARY_RADIUS=1, BOUNDARY_RADIUS_Z=1 if v.dims == 3 else 0,
                 ACC=tl.float64 if acc == "fp64" else tl.float32, C_PAD=v.c_pad, BLOCK=block)
    if v.kernel == "finish":  # c_pad stands for the flags: 2 batch + "none", else mean
        batch_none = v.c_pad == 2
        bt, bk, bc = K.FINISH_BLOCK
        return _compile(K._ce_dice_finish_kernel, v, {
            "part_ptr": f"*{acc}", "sums_ptr": f"*{acc}", "out_ptr": f"*{v.dtype}", "fac_ptr": f"*{acc}",
            **{n: "i32" for n in ("N", "C", "T")},
            **{f"{n}_{part}": "fp32" for n in ("lce", "ldice", "snr", "sdr") for part in ("hi", "lo")}},
            dict(BATCH=batch_none, LOG_DICE=True, PRESENT=True, NO_BACKGROUND=True, REDUCTION=0 if batch_none else 2,
                 ACC=tl.float64 if acc == "fp64" else tl.float32, BLOCK_T=bt, BLOCK_K=bk, BLOCK_C=bc), num_warps=4)
    ints = {n: "i32" for n in ("N", "C", "P", "D", "H", "W", "n_tiles", "ignore_index")}
    floats = {n: "fp32" for n in ("bw_hi", "bw_lo", "ls_hi", "ls_lo")}
    t_ptr = "*i64" if v.index else f"*{v.dtype}"
    lab_ptr = "*i64" if v.index else "*i32"
    common = {"x_ptr": f"*{v.dtype}", "t_ptr": t_ptr, "lab_ptr": lab_ptr, "w_ptr": f"*{acc}", "cw_ptr": f"*{acc}"}
    if v.kernel == "fwd":
        fn = K._ce_dice_fwd_kernel
        ptrs = {**common, "part_ptr": f"*{acc}"}
    else:  # GO_MODE 2 holds the code of modes 0 and 1 and the loop over the batch
        fn = K._ce_dice_bwd_kernel
        flags["GO_MODE"] = 2
        ptrs = {**common, "go_ptr": f"*{v.dtype}", "fac_ptr": f"*{acc}", "dx_ptr": f"*{v.dtype}"}
    return _compile(fn, v, {**ptrs, **ints, **floats}, flags, K.NUM_WARPS)


def _compile_any(v) -> Dict:
    return compile_ce_variant(v) if isinstance(v, CeVariant) else compile_variant(v)


def compile_all(archs=ARCHS, jobs: int = 2, which: str = "all") -> List[Dict]:
    vs = {"seg": variants(archs), "ce": ce_variants(archs), "ce-subset": CE_SUBSET,
          "all": variants(archs) + ce_variants(archs)}[which]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(_compile_any, vs))


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, nargs="*", default=list(ARCHS))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--set", choices=["seg", "ce", "ce-subset", "all"], default="seg",
                   help="seg: the sigmoid loss's kernels (CI); ce: the multi-class loss's; ce-subset: CE_SUBSET (CI)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        print("_aot: unset TRITON_INTERPRET (interpreted kernels cannot be compiled)", file=sys.stderr)
        return 2
    rows = compile_all(tuple(args.arch), args.jobs, args.set)
    for r in rows:
        print(f"{r['variant']:<32} regs {r['registers']:>3}  spills {r['spills']}  smem {r['shared']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    bad = [r["variant"] for r in rows if r["spills"]]
    if bad:
        print("spills in:", ", ".join(bad), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
