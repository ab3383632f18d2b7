"""Compile the extension's host-side C++ against the headers of the oldest torch we claim to support.

    python python/check_torch_floor.py                  # torch == setup.py's TORCH_FLOOR (.0)
    python python/check_torch_floor.py --torch 2.11.0   # any release on PyPI

CI builds and tests against one torch (the Makefile's); a source build promises every torch from
setup.py's TORCH_FLOOR on. Headers change between minors in ways that break a build (torch 2.11's
`Tensor::sum({0, 1})` is ambiguous under C++20: OptionalIntArrayRef vs DimnameList), so this check
downloads that torch's wheel from PyPI (no dependencies, nothing installed: about 530 MB, cached in
build/torch-floor/), takes its include/ folder, and runs `g++ -fsyntax-only` over every C++
translation unit of the extension with the flags setup.py uses, and over the device ops' host code
(csrc/cuda/sweep_host.h): through csrc/cuda/sweep_cuda.cpp, the CUDA op registration, against the CUDA
toolkit's headers, or through the simulator's files where those headers are missing. Exits non-zero naming each file that does not
compile, with the compiler's first errors.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import glob
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_floor() -> str:
    """setup.py's TORCH_FLOOR ("2.11"), the one place the floor is written."""
    text = open(os.path.join(ROOT, "setup.py")).read()
    m = re.search(r'^TORCH_FLOOR\s*=\s*"([0-9.]+)"', text, re.M)
    if not m:
        raise SystemExit("check_torch_floor: no TORCH_FLOOR = \"x.y\" in setup.py")
    return m.group(1)


def headers(version: str, cache: str) -> str:
    """The torch/include folder of torch==version's wheel for this Python, extracted once into cache."""
    dest = os.path.join(cache, f"torch-{version}-include")
    marker = os.path.join(dest, ".complete")
    if os.path.exists(marker):
        return os.path.join(dest, "torch", "include")
    wheels = os.path.join(cache, "wheels")
    os.makedirs(wheels, exist_ok=True)
    found = glob.glob(os.path.join(wheels, f"torch-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", wheels, f"torch=={version}"], check=True)
        found = glob.glob(os.path.join(wheels, f"torch-{version}-*.whl"))
    if not found:
        raise SystemExit(f"check_torch_floor: pip downloaded no wheel of torch=={version}")
    shutil.rmtree(dest, ignore_errors=True)
    with zipfile.ZipFile(found[0]) as z:
        z.extractall(dest, [n for n in z.namelist() if n.startswith("torch/include/")])
    open(marker, "w").close()
    return os.path.join(dest, "torch", "include")


def cuda_include() -> list[str]:
    """The toolkit's include folder, and the cuBLAS/cuSPARSE headers pip's nvidia wheels ship (ATen's
    CUDA headers include them)."""
    dirs = []
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "include", "cuda_runtime_api.h")):
            dirs.append(os.path.join(home, "include"))
            break
    try:
        import nvidia  # noqa: F401

        dirs += [os.path.join(b, "cu13", "include") for b in nvidia.__path__ if os.path.isdir(os.path.join(b, "cu13", "include"))]
    except ImportError:
        pass
    return dirs


def units() -> list[tuple[str, list[str], bool]]:
    """(file, extra flags, needs the CUDA headers) of every host translation unit, as setup.py builds them."""
    ext = sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")) +
                 glob.glob(os.path.join(ROOT, "csrc", "cpu", "*", "*.cpp")))
    sim = sorted(glob.glob(os.path.join(ROOT, "csrc", "sim", "*.cpp")))
    cuda = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cpp")))
    out = [(f, ["-fopenmp", "-fopenmp-simd"], False) for f in ext]
    if cuda and cuda_include():
        # The device ops' host code (cuda/sweep_host.h, sweep_registration.h) through the CUDA op
        # registration; the simulator's files include the same headers.
        out += [(f, ["-fopenmp", "-DBRNNSEG_WITH_CUDA=1"], True) for f in cuda]
    else:
        out += [(f, [], False) for f in sim]  # the same host code, without CUDA headers
    return out


def compile_one(src: str, extra: list[str], needs_cuda: bool, inc: str, cuda_inc: list[str]) -> tuple[str, int, str]:
    if needs_cuda and not cuda_inc:
        return src, 0, "skipped: no CUDA toolkit headers here"
    cmd = ["g++", "-fsyntax-only", "-std=c++20", "-fPIC", "-Wno-unused-function",
           "-I" + os.path.join(ROOT, "csrc", "include"), "-I" + os.path.join(ROOT, "csrc"),
           "-I" + inc, "-I" + os.path.join(inc, "torch", "csrc", "api", "include"),
           "-I" + sysconfig.get_paths()["include"],
           "-DTORCH_API_INCLUDE_EXTENSION_H", "-DPy_LIMITED_API=0x030A0000", "-DTORCH_EXTENSION_NAME=_C",
           "-D_GLIBCXX_USE_CXX11_ABI=1"] + extra + (["-I" + d for d in cuda_inc] if needs_cuda else []) + [src]
    r = subprocess.run(cmd, capture_output=True, text=True)
    return src, r.returncode, r.stderr


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--torch", default=None, help="torch version (default: setup.py's TORCH_FLOOR + '.0')")
    p.add_argument("--cache", default=os.path.join(ROOT, "build", "torch-floor"))
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--only", nargs="*", default=None, help="files (substrings of their paths) to compile")
    args = p.parse_args(argv)
    version = args.torch or torch_floor() + ".0"
    inc = headers(version, args.cache)
    cuda_inc = cuda_include()
    todo = [u for u in units() if not args.only or any(o in u[0] for o in args.only)]
    print(f"check_torch_floor: {len(todo)} translation units against torch {version}'s headers", flush=True)
    failed = []
    with cf.ThreadPoolExecutor(max(1, args.jobs)) as ex:
        for src, rc, err in ex.map(lambda u: compile_one(*u, inc, cuda_inc), todo):
            rel = os.path.relpath(src, ROOT)
            if rc:
                failed.append(rel)
                errors = [ln for ln in err.splitlines() if "error" in ln][:5]
                print(f"FAIL {rel}\n  " + "\n  ".join(errors), flush=True)
            else:
                print(f"ok   {rel}" + (f" ({err})" if err.startswith("skipped") else ""), flush=True)
    if failed:
        print(f"check_torch_floor: {len(failed)} of {len(todo)} do not compile against torch {version}: "
              + ", ".join(failed))
        return 1
    print(f"check_torch_floor: all {len(todo)} compile against torch {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
