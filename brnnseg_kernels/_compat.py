"""The compiled extension against the running torch: a build is tied to the torch (minor version, CUDA
major version, C++ ABI) it was compiled against. Loading it under another one fails with undefined
symbols, or worse; ``check_build`` turns that into an ImportError that says what was built for what
and how to fix it. ``BRNNSEG_SKIP_VERSION_CHECK=1`` skips the check (at your own risk)."""
from __future__ import annotations

from typing import Optional


def _minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def mismatch(build: dict, torch_version: str, torch_cuda: Optional[str], cxx11_abi: Optional[bool]) -> Optional[str]:
    """None when `build` (the recorded build info) fits the running torch, else the reason."""
    built = build.get("torch")
    if not built:
        return None  # a tree setup.py never built: nothing recorded to compare
    reasons = []
    if _minor(built) != _minor(torch_version):
        reasons.append(f"torch {built} (running {torch_version})")
    if build.get("with_cuda") and build.get("torch_cuda") and torch_cuda and \
            build["torch_cuda"].split(".")[0] != torch_cuda.split(".")[0]:
        reasons.append(f"CUDA {build['torch_cuda']} (running torch has CUDA {torch_cuda})")
    abi = build.get("cxx11_abi")
    if abi is not None and cxx11_abi is not None and bool(abi) != bool(cxx11_abi):
        reasons.append(f"_GLIBCXX_USE_CXX11_ABI={int(abi)} (running torch: {int(cxx11_abi)})")
    if not reasons:
        return None
    return (f"brnnseg_kernels was built for {', '.join(reasons)}; its compiled extension cannot be loaded by "
            f"this torch. Rebuild it against the torch you have: `pip install --no-build-isolation "
            f"--force-reinstall .` (or `make build` in a checkout), or install a build made for torch "
            f"{_minor(torch_version)}{' with CUDA ' + torch_cuda if torch_cuda else ' (CPU)'}.")


def check_build(build: dict) -> None:
    import os

    import torch

    if os.environ.get("BRNNSEG_SKIP_VERSION_CHECK") == "1":
        return
    abi = getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", None)
    reason = mismatch(build, torch.__version__, torch.version.cuda, abi)
    if reason:
        raise ImportError(reason)


ISA_RUNGS = ("baseline", "avx2", "avx512", "avx512_bf16", "amx_bf16")


def check_isa_env(environ=None) -> None:
    """``BRNNSEG_CPU_ISA`` caps the CPU kernels' instruction set at one rung of the fallback chain
    (csrc/cpu/runtime/isa.h); an unknown value is a ValueError here, never a silently different rung."""
    import os

    value = (os.environ if environ is None else environ).get("BRNNSEG_CPU_ISA", "")
    if value and value not in ISA_RUNGS:
        raise ValueError(f"BRNNSEG_CPU_ISA must be one of {', '.join(ISA_RUNGS)} (or unset), got {value!r}")
