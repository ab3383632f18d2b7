"""The CUDA build, checked without a GPU on the artifact that ships (brnnseg_kernels/_C*.so, read with
cuobjdump): the CUDA kernels were compiled when torch has CUDA and nvcc is present; for sm_80 and
sm_90, every recurrence-kernel instantiation the launcher can pick is in the library, with no
register spills or stack frame, with the __launch_bounds__ the planner assumes, and with static
shared memory that leaves room for the largest dynamic amount the planner asks for on that GPU. The
tensor-core kernels likewise, one per (kt, cell, dtype) the planner can pick, with __launch_bounds__
equal to the threads the planner launches and registers that hold the resident W_hh fragments."""
import os
import shutil

import pytest
import torch

import brnnseg_kernels as bk
from brnnseg_kernels import plan

NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
GPU_OF_ARCH = {"sm_80": "a100", "sm_90": "h100"}
DTYPES = ("float32", "float16", "bfloat16")
VARIANTS = [(k, c, d) for k in ("fwd", "bwd") for c in bk.cells.kernel_cells() for d in DTYPES]


def mma_variants(gpu):
    """The tensor-core instantiations the planner can pick: (kernel key, cell, dtype, plan); float32 in
    TF32 and in 3xTF32 (key suffix x3)."""
    out = []
    for k in ("fwd", "bwd"):
        for c in bk.cells.kernel_cells():
            for d in DTYPES:
                for kt in (1, 2, 4, 8):
                    for rec in ("auto", "tf32x3") if d == "float32" else ("auto",):
                        lp = plan.launch_plan(c, d, 16 * kt, 1, k == "bwd", gpu, rec, tf32=True)
                        if lp.mma:
                            out.append((f"{k}_mma{kt}" + ("x3" if lp.tf32x3 else ""), c, d, lp))
    return out


def test_cuda_kernels_built_when_possible():
    info = bk.build_info()
    if torch.version.cuda and NVCC and os.environ.get("BRNNSEG_CPU_ONLY") != "1":
        assert info.get("with_cuda"), f"CUDA torch and nvcc present but the CUDA kernels were not built: {info}"
        if not torch.cuda.is_available():  # built without a GPU: the default archs
            assert "8.0" in info["cuda_archs"] and "9.0" in info["cuda_archs"]
    if info.get("with_cuda"):
        # The CUDA implementations are registered (calling them needs a GPU).
        for op in ("sweep", "sweep_backward", "sweep_pair", "sweep_pair_backward"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"brnnseg::{op}", "CUDA")


def resource_problems(resources, archs=("sm_80", "sm_90")):
    """Every rule the shipped kernels must meet, as a list of violations (empty when all hold)."""
    problems = []
    bounds = plan.kernel_constants()["launch_bounds"]
    for arch in archs:
        spec = plan.gpu_spec(GPU_OF_ARCH[arch])
        for kernel, cell, dtype in VARIANTS:
            # The largest dynamic shared memory the planner asks for, over every hidden size it accepts.
            worst = max(plan.launch_plan(cell, dtype, h, 1, kernel == "bwd", GPU_OF_ARCH[arch]).smem_bytes
                        for h in range(1, bounds + 1, 7))
            _kernel_problems(problems, resources.get((arch, kernel, cell, dtype)), f"{arch} {kernel} {cell} {dtype}",
                             bounds, f"up to {bounds}", worst, spec)
        for kernel, cell, dtype, lp in mma_variants(GPU_OF_ARCH[arch]):
            r = resources.get((arch, kernel, cell, dtype))
            name = f"{arch} {kernel} {cell} {dtype}"
            if not _kernel_problems(problems, r, name, lp.threads, str(lp.threads), lp.smem_bytes, spec):
                continue
            # B fragments + accumulators (3xTF32: two of each), registers a thread
            resident = (2 if lp.tf32x3 else 1) * (4 * lp.nt * lp.kpw + 8 * lp.nt)
            if r["REG"] < resident:
                problems.append(f"{name}: {r['REG']} registers cannot hold {resident} of resident W_hh "
                                f"fragments and accumulators")
    return problems


def _kernel_problems(problems, r, name, threads, threads_said, dynamic_smem, spec) -> bool:
    """The rules every shipped kernel meets: in the library, no spills, __launch_bounds__ = what the planner
    launches, static + dynamic shared memory within a CTA's limit. Appends violations; False when the
    kernel is missing (nothing else to check)."""
    if r is None:
        problems.append(f"{name}: not in the library")
        return False
    if r["STACK"] or r["LOCAL"]:
        problems.append(f"{name}: {r['STACK']} bytes stack frame, {r['LOCAL']} bytes local memory (spills)")
    if r.get("MAX_THREADS") != threads:
        problems.append(f"{name}: __launch_bounds__ {r.get('MAX_THREADS')} in the binary, the planner "
                        f"launches {threads_said}")
    if r["SHARED"] + dynamic_smem > spec["smem_per_block_optin"]:
        problems.append(f"{name}: {r['SHARED']} bytes static + {dynamic_smem} dynamic shared memory exceed the "
                        f"{spec['smem_per_block_optin']} bytes a CTA may have")
    return True


@pytest.fixture(scope="module")
def shipped():
    if not bk.build_info().get("with_cuda"):
        pytest.skip("no CUDA kernels in this build")
    if plan.find_cuobjdump() is None:
        pytest.skip("cuobjdump not found (CUDA toolkit or triton's copy)")
    return plan.kernel_resources()


def test_shipped_kernels_fit_and_do_not_spill(shipped):
    archs = tuple(a for a in GPU_OF_ARCH if any(k[0] == a for k in shipped))
    assert archs, f"no sm_80/sm_90 code in the library: {sorted(shipped)}"
    problems = resource_problems(shipped, archs)
    assert not problems, "\n".join(problems)


def test_resource_check_fails_on_planted_faults(shipped):
    """The check above can fail: each planted fault in a copy of the real figures is reported."""
    key = ("sm_90", "fwd", "lstm", "float32")
    for change, expect in [({"STACK": 16}, "stack frame"), ({"LOCAL": 8}, "local memory"),
                           ({"MAX_THREADS": 256}, "__launch_bounds__"), ({"SHARED": 40000}, "exceed")]:
        planted = {k: dict(v) for k, v in shipped.items()}
        planted[key].update(change)
        found = resource_problems(planted)
        assert len(found) == 1 and expect in found[0], (change, found)
    planted = dict(shipped)
    del planted[("sm_80", "bwd", "gru", "bfloat16")]
    assert resource_problems(planted) == ["sm_80 bwd gru bfloat16: not in the library"]
    key = ("sm_90", "bwd_mma8", "gru", "bfloat16")
    for change, expect in [({"LOCAL": 8}, "local memory"), ({"MAX_THREADS": 512}, "__launch_bounds__"),
                           ({"REG": 40}, "cannot hold")]:
        planted = {k: dict(v) for k, v in shipped.items()}
        planted[key].update(change)
        found = resource_problems(planted)
        assert len(found) == 1 and expect in found[0], (change, found)
    planted = dict(shipped)
    del planted[("sm_80", "fwd_mma2", "lstm", "float32")]
    assert resource_problems(planted) == ["sm_80 fwd_mma2 lstm float32: not in the library"]
