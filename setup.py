"""Build brnnseg_kernels: CPU kernels always, CUDA kernels when torch has CUDA and nvcc is found.

Build switches (environment variables), read once here:
  BRNNSEG_CPU_ONLY=1       skip the CUDA kernels even when nvcc and a CUDA torch are present
  BRNNSEG_CUDA_ARCHS       semicolon list of SM archs, e.g. "80;90" (default "80;90"); ignored when
                           TORCH_CUDA_ARCH_LIST is set, which torch's build honours as usual
  MAX_JOBS                 parallel compile jobs (default: cores, capped by memory at ~4 GiB a job)
  NVCC_THREADS             nvcc --threads (default 2)
  DEBUG=1                  -O0 -g instead of -O3
  BRNNSEG_BUILD_SIM=0      skip the test-only simulator extension (_sim)
  BRNNSEG_SIM_ASAN=1       build only the simulator extension under AddressSanitizer + UBSan (_sim_asan,
                           for make test-sim-asan)
  BRNNSEG_WHEEL=1          a wheel for distribution (python/build_wheels.py): local version
                           +cu<XYZ>torch<M.m> / +cputorch<M.m>, requires torch==<M.m>.*, no simulator
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "brnnseg_kernels"

CPU_ONLY = os.environ.get("BRNNSEG_CPU_ONLY", "0") == "1"
DEBUG = os.environ.get("DEBUG", "0") == "1"
NVCC_THREADS = os.environ.get("NVCC_THREADS", "2")
DEFAULT_ARCHS = os.environ.get("BRNNSEG_CUDA_ARCHS", "80;90")


def _max_jobs():
    # Each nvcc/g++ job over torch headers peaks around 3-4 GiB; keep clear of the OOM killer.
    if "MAX_JOBS" in os.environ:
        return os.environ["MAX_JOBS"]
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = 8
    return str(max(1, min(os.cpu_count() or 1, int(mem_gib // 4))))


os.environ["MAX_JOBS"] = _max_jobs()


def _find_cuda_home():
    """The toolkit folder that holds bin/nvcc (not a wrapper's folder on PATH)."""
    for cand in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if cand and os.path.isfile(os.path.join(cand, "bin", "nvcc")):
            return os.path.realpath(cand)
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        home = os.path.dirname(os.path.dirname(real))
        if os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return home
    return None


CUDA_HOME = None if CPU_ONLY else _find_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME  # before torch.utils.cpp_extension reads it at import

from torch.utils import cpp_extension  # noqa: E402
cu_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
BUILD_CUDA = bool(torch.version.cuda) and CUDA_HOME is not None and not CPU_ONLY and bool(cu_sources)

if BUILD_CUDA:
    os.environ["CUDA_HOME"] = CUDA_HOME
    cpp_extension.CUDA_HOME = CUDA_HOME
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # No GPU visible: build for A100 and H100 (+PTX of the newest for forward compatibility).
        archs = [a.strip() for a in DEFAULT_ARCHS.split(";") if a.strip()]
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(f"{a[:-1]}.{a[-1]}" for a in archs) + "+PTX"
CUDA_ARCHS = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if BUILD_CUDA else ""

cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*", "*.cpp")))
include_dirs = [os.path.join(ROOT, "csrc", "include"), os.path.join(ROOT, "csrc")]
opt = ["-O0", "-g"] if DEBUG else ["-O3"]
# -fopenmp: ATen's at::parallel_for is an inline "#pragma omp parallel"; without it the loop runs serially.
# -std=c++20 stated here: older torch (2.11 on the GPU machines) would otherwise pass -std=c++17.
cxx_flags = opt + ["-std=c++20", "-fopenmp", "-fopenmp-simd", "-fno-trapping-math", "-fno-math-errno", "-Wno-unused-function"]
define_macros = []

if BUILD_CUDA:
    cuda_sources = cu_sources + sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
    # ATen's CUDA headers include cublas/cusparse headers that pip's CUDA 13 wheels ship here.
    try:
        import nvidia  # noqa: F401

        for base in nvidia.__path__:
            for sub in ("cu13/include",):
                if os.path.isdir(os.path.join(base, sub)):
                    include_dirs.append(os.path.join(base, sub))
    except ImportError:
        pass
    ext = cpp_extension.CUDAExtension(
        f"{PACKAGE}._C",
        cpp_sources + cuda_sources,
        include_dirs=include_dirs,
        define_macros=define_macros + [("BRNNSEG_WITH_CUDA", "1")],
        extra_compile_args={
            "cxx": cxx_flags,
            "nvcc": opt + ["--threads", NVCC_THREADS, "-lineinfo", "--use_fast_math",
                           "-Xptxas=-v", "--expt-relaxed-constexpr"],
        },
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )
else:
    ext = cpp_extension.CppExtension(
        f"{PACKAGE}._C",
        cpp_sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"],
        py_limited_api=True,
    )


def _write_build_info():
    info = {
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "with_cuda": BUILD_CUDA,
        "cuda_archs": CUDA_ARCHS,
        "cuda_home": CUDA_HOME if BUILD_CUDA else None,
        "debug": DEBUG,
        "cxx11_abi": bool(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True)),
        "compiler_flags": " ".join(cxx_flags),
    }
    path = os.path.join(ROOT, PACKAGE, "_build_info.py")
    with open(path, "w") as f:
        f.write("# Written by setup.py at build time; do not edit.\n")
        f.write(f"BUILD_INFO = {info!r}\n")


_write_build_info()

# The CUDA kernels compiled by g++ under the SIMT simulator (csrc/sim/): always built, so CI executes
# the kernel source without a GPU (tests/test_sweep_sim.py).
sim_ext = cpp_extension.CppExtension(
    f"{PACKAGE}._sim",
    sorted(glob.glob(os.path.join("csrc", "sim", "*.cpp"))),
    include_dirs=include_dirs,
    extra_compile_args={"cxx": ["-std=c++20", "-O2", "-fno-math-errno", "-Wno-unused-function"]},
    py_limited_api=True,
)

WHEEL = os.environ.get("BRNNSEG_WHEEL") == "1"
BUILD_SIM = os.environ.get("BRNNSEG_BUILD_SIM", "1") != "0" and not WHEEL  # wheels hold what users run
ext_modules = [ext, sim_ext] if BUILD_SIM else [ext]
if os.environ.get("BRNNSEG_SIM_ASAN") == "1":
    # Only the simulator extension under AddressSanitizer + UBSan, as brnnseg_kernels._sim_asan (loaded
    # with LD_PRELOAD=libasan.so; `make test-sim-asan`). The other extensions are left as built.
    san = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
    ext_modules = [cpp_extension.CppExtension(
        f"{PACKAGE}._sim_asan",
        sorted(glob.glob(os.path.join("csrc", "sim", "*.cpp"))),
        include_dirs=include_dirs,
        define_macros=[("BRNNSEG_SIM_MODULE", "_sim_asan")],
        extra_compile_args={"cxx": ["-std=c++20", "-O1", "-g", "-fno-math-errno", "-Wno-unused-function"] + san},
        extra_link_args=san,
        py_limited_api=True,
    )]


def _defines_once(args):
    seen, out = set(), []
    for a in args:
        if a.startswith("-D") and a in seen:
            continue
        seen.add(a)
        out.append(a)
    return out


class BuildExtension(cpp_extension.BuildExtension):
    """torch's BuildExtension with one build folder per extension: they share ninja's log and deps
    files otherwise, and building one made ninja forget the other's dependencies (every `make build`
    recompiled everything, CUDA included)."""

    def build_extension(self, ext):
        # torch appends its -D defines to the extension each time build_extensions runs (twice in a
        # `build` + `bdist_wheel`), so the same object had different command lines in an in-place build
        # and in a wheel build and ninja compiled it again. Each define once: the CUDA wheel links the
        # objects `make build` already compiled (same flags, same build folder).
        if isinstance(ext.extra_compile_args, dict):
            ext.extra_compile_args = {k: _defines_once(v) for k, v in ext.extra_compile_args.items()}
        else:
            ext.extra_compile_args = _defines_once(ext.extra_compile_args)
        base = self.build_temp
        self.build_temp = os.path.join(base, ext.name.rsplit(".", 1)[-1])
        try:
            super().build_extension(ext)
        finally:
            self.build_temp = base


VERSION = "0.1.0"
TORCH_MINOR = ".".join(torch.__version__.split("+")[0].split(".")[:2])
# The oldest torch a source build supports: 2.11, the GPU machines' torch. CI builds and tests against
# 2.14 and compiles every host translation unit against 2.11's headers (python/check_torch_floor.py,
# make test-torch-floor); a wheel pins the minor it was built against (its C++ ABI is that torch's).
TORCH_FLOOR = "2.11"
if WHEEL:
    cuda_tag = "cu" + torch.version.cuda.replace(".", "") if BUILD_CUDA else "cpu"
    VERSION += f"+{cuda_tag}torch{TORCH_MINOR}"
    INSTALL_REQUIRES = [f"torch=={TORCH_MINOR}.*"]
else:
    INSTALL_REQUIRES = [f"torch>={TORCH_FLOOR}"]

setup(
    name="brnnseg_kernels",
    version=VERSION,
    install_requires=INSTALL_REQUIRES,
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    # PEP 561 (the public API carries type hints); the measured backend tables (tuning/sm90.json).
    package_data={PACKAGE: ["py.typed", "tuning/*.json"]},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
