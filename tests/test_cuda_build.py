"""The CUDA build, checked without a GPU: the extension was compiled with its CUDA kernels when torch
has CUDA and nvcc is present, and every recurrence-kernel variant compiles for sm_80 and sm_90
with no register spills, no stack frame, no static shared memory (all of it is the dynamic
amount the launcher plans), and few enough registers for the largest CTA (512 threads)."""
import os
import re
import shutil
import subprocess

import pytest
import torch

import brnnseg_kernels as bk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NVCC = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
MAX_THREADS = 512


def test_cuda_kernels_built_when_possible():
    info = bk.build_info()
    if torch.version.cuda and NVCC and os.environ.get("BRNNSEG_CPU_ONLY") != "1":
        assert info.get("with_cuda"), f"CUDA torch and nvcc present but the CUDA kernels were not built: {info}"
        assert "8.0" in info["cuda_archs"] and "9.0" in info["cuda_archs"]
    if info.get("with_cuda"):
        # The CUDA implementations are registered (calling them needs a GPU).
        for op in ("bigru_sweep", "bilstm_sweep", "bigru_sweep_backward", "bilstm_sweep_backward"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"brnnseg::{op}", "CUDA")


def _ptxas_report(arch):
    torch_include = os.path.join(os.path.dirname(torch.__file__), "include")
    cmd = [NVCC, "-std=c++20", "-cubin", f"-arch={arch}", "-Xptxas", "-v", "--expt-relaxed-constexpr",
           "--use_fast_math", "-I", os.path.join(ROOT, "csrc", "include"), "-I", os.path.join(ROOT, "csrc"),
           "-I", torch_include, "-o", os.devnull, os.path.join(ROOT, "csrc", "tests", "ptxas_probe.cu")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stderr


@pytest.mark.skipif(NVCC is None, reason="nvcc not found")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_ptxas_no_spills_and_resources_fit(arch):
    report = _ptxas_report(arch)
    kernels = re.split(r"Compiling entry function '", report)[1:]
    assert len(kernels) == 12, f"expected 12 kernel variants, ptxas reported {len(kernels)}"
    for block in kernels:
        name = block.split("'")[0]
        spills = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", block)
        assert spills, block
        assert spills.groups() == ("0", "0", "0"), f"{name}: {spills.group(0)}"
        regs = int(re.search(r"Used (\d+) registers", block).group(1))
        assert regs * MAX_THREADS <= 65536, f"{name}: {regs} registers x {MAX_THREADS} threads exceed the register file"
        static_smem = re.search(r"(\d+) bytes smem", block)
        assert static_smem is None or int(static_smem.group(1)) == 0, f"{name}: static shared memory {static_smem.group(0)}"
