"""Build wheels of brnnseg_kernels tied to a CUDA toolkit and a torch minor version.

    python python/build_wheels.py                 # the CPU wheel and, where torch has CUDA and nvcc is
                                                  # found, the CUDA wheel, for the torch of this Python
    python python/build_wheels.py --cpu-only      # only the CPU wheel
    python python/build_wheels.py --archs "8.0;9.0+PTX"
    python python/build_wheels.py --matrix cu130:2.14.1 cpu:2.14.1
                                                  # one wheel per (toolkit, torch) pair, each in a fresh
                                                  # virtual environment (build/wheel-envs/), + dist/index.html

Each wheel carries a local version naming what it was built for -- ``0.1.0+cu130torch2.14`` (CUDA 13.0,
torch 2.14) or ``0.1.0+cputorch2.14`` -- and requires ``torch==<that minor>.*``; at import the recorded
build is compared with the running torch (``brnnseg_kernels._compat``). The test-only simulator
extension is not in the wheels. ``dist/index.html`` lists the wheels, so

    pip install brnnseg_kernels --find-links dist/         (or the URL where dist/ is served)

picks the one whose local version fits (``pip install "brnnseg_kernels==0.1.0+cu130torch2.14" ...``).

Environment variables read (matrix mode): ``BRNNSEG_CUDA_HOME_<TAG>`` (e.g. ``BRNNSEG_CUDA_HOME_CU130``)
for the toolkit of a CUDA pair (default: the nvcc found on PATH / ``CUDA_HOME``, whose version must
match); ``PIP_INDEX_URL`` / ``PIP_FIND_LINKS`` as pip reads them for installing torch; ``MAX_JOBS`` and
``NVCC_THREADS`` as setup.py reads them.
"""
from __future__ import annotations

import argparse
import html
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import venv

ROOT = pathlib.Path(__file__).resolve().parents[1]
DIST = ROOT / "dist"
BUILD_INFO = ROOT / "brnnseg_kernels" / "_build_info.py"
# setuptools' object folder for `setup.py build_ext --inplace` with this Python (`make build`).
INPLACE_TEMP = ROOT / "build" / f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}"


def build_one(python: str, cuda: bool, archs: str, dist: pathlib.Path, env_extra=None,
              build_temp: pathlib.Path | None = None) -> pathlib.Path:
    """One wheel with `python` (which has torch installed): CPU or CUDA. Returns the wheel's path.

    Built under build/wheel-<cpu|cuda>. build_temp: where the objects go (default under that folder). The
    CUDA wheel for the torch of this Python shares the in-place build's object folder (`make build`):
    objects compiled with the same flags are linked, not compiled again (ninja compares command lines, so
    other archs or flags still recompile). Its library folder stays separate: the in-place build leaves
    the simulator extensions there, and wheels hold what users run."""
    tag = "cuda" if cuda else "cpu"
    build_base = ROOT / "build" / f"wheel-{tag}"
    temp = ["--build-temp", str(build_temp)] if build_temp else []
    env = dict(os.environ, BRNNSEG_WHEEL="1", BRNNSEG_BUILD_SIM="0", **(env_extra or {}))
    if cuda:
        env.setdefault("TORCH_CUDA_ARCH_LIST", archs)
        env.pop("BRNNSEG_CPU_ONLY", None)
    else:
        env["BRNNSEG_CPU_ONLY"] = "1"
    before = set(dist.glob("*.whl"))
    saved = BUILD_INFO.read_bytes() if BUILD_INFO.exists() else None  # the in-place build's record
    try:
        subprocess.run([python, "setup.py", "-q", "build", "--build-base", str(build_base), *temp,
                        "bdist_wheel", "--dist-dir", str(dist)], cwd=ROOT, env=env, check=True)
    finally:
        if saved is not None:
            BUILD_INFO.write_bytes(saved)
    new = sorted(set(dist.glob("*.whl")) - before, key=lambda p: p.stat().st_mtime)
    if not new:  # rebuilt a wheel of the same name
        new = sorted(dist.glob("*.whl"), key=lambda p: p.stat().st_mtime)
    print(f"built {_shown(new[-1])}")
    return new[-1]


def _shown(path: pathlib.Path) -> str:
    """A path relative to the checkout where it lies inside it (--dist may point anywhere)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def torch_has_cuda(python: str) -> bool:
    out = subprocess.run([python, "-c", "import torch; print(bool(torch.version.cuda))"], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip() == "True"


def nvcc_found() -> bool:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    return bool(shutil.which("nvcc") or (home and (pathlib.Path(home) / "bin" / "nvcc").exists()))


def write_index(dist: pathlib.Path) -> pathlib.Path:
    """dist/index.html: one link per wheel, the page pip's --find-links reads."""
    wheels = sorted(p.name for p in dist.glob("*.whl"))
    rows = "\n".join(f'    <a href="{html.escape(w)}">{html.escape(w)}</a><br>' for w in wheels)
    page = dist / "index.html"
    page.write_text(f"<!DOCTYPE html>\n<html>\n  <head><title>brnnseg_kernels wheels</title></head>\n  <body>\n"
                    f"{rows}\n  </body>\n</html>\n")
    print(f"wrote {_shown(page)} ({len(wheels)} wheels)")
    return page


def matrix_env(tag: str, torch_version: str) -> str:
    """A fresh virtual environment with torch==torch_version for `tag` (cpu or cuXYZ); its python."""
    where = ROOT / "build" / "wheel-envs" / f"{tag}-torch{torch_version}"
    python = where / "bin" / "python"
    if not python.exists():
        venv.EnvBuilder(with_pip=True).create(where)
        pkgs = [f"torch=={torch_version}", "setuptools", "wheel", "ninja", "numpy"]
        extra = [] if tag != "cpu" else ["--index-url", os.environ.get("BRNNSEG_CPU_INDEX_URL",
                                                                        "https://download.pytorch.org/whl/cpu")]
        if tag == "cpu" and "BRNNSEG_CPU_INDEX_URL" not in os.environ and os.environ.get("PIP_FIND_LINKS"):
            extra = []  # a local cache of wheels: take torch from there
        subprocess.run([str(python), "-m", "pip", "install", "-q", *extra, *pkgs], check=True)
    return str(python)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="8.0;9.0+PTX", help="CUDA archs (TORCH_CUDA_ARCH_LIST); default 8.0;9.0+PTX")
    p.add_argument("--cpu-only", action="store_true", help="only the CPU wheel")
    p.add_argument("--dist", default=str(DIST), help="output folder (default dist/)")
    p.add_argument("--matrix", nargs="*", metavar="TAG:TORCH",
                   help="pairs such as cu130:2.14.1 cpu:2.14.1, each built in its own virtual environment")
    args = p.parse_args(argv)
    dist = pathlib.Path(args.dist).resolve()
    dist.mkdir(parents=True, exist_ok=True)
    if args.matrix:
        for pair in args.matrix:
            tag, _, version = pair.partition(":")
            if not version or not (tag == "cpu" or tag.startswith("cu")):
                p.error(f"--matrix takes TAG:TORCH pairs such as cu130:2.14.1 or cpu:2.14.1, got {pair!r}")
            python = matrix_env(tag, version)
            extra = {}
            if tag != "cpu":
                home = os.environ.get(f"BRNNSEG_CUDA_HOME_{tag.upper()}")
                if home:
                    extra["CUDA_HOME"] = home
            build_one(python, tag != "cpu", args.archs, dist, extra)
    else:
        build_one(sys.executable, False, args.archs, dist)
        if not args.cpu_only:
            if torch_has_cuda(sys.executable) and nvcc_found():
                build_one(sys.executable, True, args.archs, dist, build_temp=INPLACE_TEMP)
            else:
                print("no CUDA wheel: this torch has no CUDA or nvcc was not found")
    write_index(dist)
    return 0


if __name__ == "__main__":
    sys.exit(main())
