"""Build here, run there: one archive holding the tree and the CUDA extension built for one GPU arch.

    python python/gpu_bundle.py --torch 2.11.0 --arch 9.0 --out build/gpu-bundle/brnnseg-gpu.tar.gz
    make gpu-bundle                                   # the same, for the GPU machines (torch 2.11.0, sm_90)

A GPU is lent for minutes; compiling the CUDA kernels takes about 4 of them on 2 cores. This builds on
the CPU machine instead:
  1. a virtual environment with torch==VERSION from PyPI (build/gpu-bundle/venv-torchVERSION, reused);
  2. a copy of the tree (git's tracked and untracked-but-not-ignored files) in build/gpu-bundle/src;
  3. the extension built there in place for that arch only (TORCH_CUDA_ARCH_LIST=ARCH, no PTX, no
     simulator: BRNNSEG_BUILD_SIM=0), device code with -lineinfo (Nsight Compute's source view), the host
     debug sections stripped;
  4. one .tar.gz of that tree (at most --max-mb, 20 MB by default; it fails otherwise).
On the GPU machine (whose torch must be the same minor and CUDA major: the import check says so):

    mkdir -p /tmp/b && tar xzf brnnseg-gpu.tar.gz -C /tmp/b && cd /tmp/b/brnnseg_kernels-gpu
    python python/gpu_selfcheck.py --no-build --out DIR && python python/gpu_profile.py --out DIR/profile

The archive's top folder is brnnseg_kernels-gpu/; BUNDLE.json in it records what was built, against what.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOP = "brnnseg_kernels-gpu"


def run(cmd, **kw):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def venv_python(work: str, torch_version: str) -> str:
    """A virtual environment with torch==torch_version and the build tools (created once)."""
    venv = os.path.join(work, f"venv-torch{torch_version}")
    py = os.path.join(venv, "bin", "python")
    stamp = os.path.join(venv, ".ready")
    if not os.path.exists(stamp):
        if not os.path.exists(py):
            run([sys.executable, "-m", "venv", venv])
        run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"])
        run([py, "-m", "pip", "install", "-q", f"torch=={torch_version}", "numpy", "ninja", "setuptools", "wheel"])
        open(stamp, "w").close()
    return py


def find_cuobjdump(py: str) -> str | None:
    """The toolkit's cuobjdump, or the copy triton carries in the build environment."""
    import glob

    venv = os.path.dirname(os.path.dirname(py))
    cands = [shutil.which("cuobjdump")] + [os.path.join(h, "bin", "cuobjdump") for h in
                                            (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if h]
    cands += glob.glob(os.path.join(venv, "lib", "python3*", "site-packages", "triton", "backends", "nvidia", "bin",
                                    "cuobjdump"))
    return next((c for c in cands if c and os.path.isfile(c) and os.access(c, os.X_OK)), None)


def tree_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode()
    return sorted(f for f in out.split("\0") if f and os.path.isfile(os.path.join(ROOT, f)))


def stage(src: str) -> list[str]:
    """src mirrors the tree: copied files refreshed, stale ones removed; build outputs kept (ninja reuses
    them between bundles). Returns the tree's files, as staged."""
    files = set(tree_files())
    for dirpath, _dirs, names in os.walk(src):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), src)
            top = rel.split(os.sep)[0]
            if top == "build" or rel.endswith(".so") or rel.endswith("_build_info.py"):
                continue
            if rel not in files:
                os.remove(os.path.join(src, rel))
    for rel in files:
        a, b = os.path.join(ROOT, rel), os.path.join(src, rel)
        if os.path.exists(b) and open(a, "rb").read() == open(b, "rb").read():
            continue  # unchanged: keep the mtime, so ninja does not recompile
        os.makedirs(os.path.dirname(b), exist_ok=True)
        shutil.copy2(a, b)
    return sorted(files)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--torch", default="2.11.0", help="torch version to build against (PyPI; default 2.11.0)")
    p.add_argument("--arch", default="9.0", help="one CUDA arch, TORCH_CUDA_ARCH_LIST form (default 9.0)")
    p.add_argument("--out", default=os.path.join(ROOT, "build", "gpu-bundle", "brnnseg-gpu.tar.gz"))
    p.add_argument("--work", default=os.path.join(ROOT, "build", "gpu-bundle"), help="venv, staged tree")
    p.add_argument("--jobs", default=os.environ.get("MAX_JOBS", "2"))
    p.add_argument("--max-mb", type=float, default=20.0)
    args = p.parse_args(argv)
    if ";" in args.arch or " " in args.arch or "PTX" in args.arch:
        p.error("--arch: one arch, e.g. 9.0 (the bundle carries no PTX)")
    t0 = time.time()
    os.makedirs(args.work, exist_ok=True)
    py = venv_python(args.work, args.torch)
    src = os.path.join(args.work, "src")
    os.makedirs(src, exist_ok=True)
    staged = stage(src)
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST=args.arch, BRNNSEG_BUILD_SIM="0", MAX_JOBS=str(args.jobs))
    env.pop("BRNNSEG_CPU_ONLY", None)
    run([py, "setup.py", "-q", "build_ext", "--inplace"], cwd=src, env=env)
    so = [os.path.join(src, "brnnseg_kernels", f) for f in os.listdir(os.path.join(src, "brnnseg_kernels"))
          if f.startswith("_C") and f.endswith(".so")]
    if len(so) != 1:
        raise SystemExit(f"gpu_bundle: expected one _C*.so in the staged tree, found {so}")
    info = subprocess.run([py, "-c", "import json, torch; print(json.dumps({'torch': torch.__version__, "
                           "'cuda': torch.version.cuda}))"], check=True, capture_output=True, text=True).stdout
    cuobj = find_cuobjdump(py)
    sm = "sm_" + args.arch.replace(".", "")
    if cuobj:
        elfs = subprocess.run([cuobj, "--list-elf", so[0]], capture_output=True, text=True).stdout.split()
        ptx = subprocess.run([cuobj, "--list-ptx", so[0]], capture_output=True, text=True).stdout.split()
        held = sorted({e.split(".")[-2] for e in elfs if e.endswith(".cubin")})
        if held != [sm] or ptx:
            raise SystemExit(f"gpu_bundle: the built .so holds cubins for {held} and {len(ptx)} PTX, not {sm} alone")
        print(f"gpu_bundle: {len(elfs)} cubins, all {sm}; no PTX", flush=True)
    else:
        print("gpu_bundle: no cuobjdump here; the arch of the cubins was not checked", flush=True)
    run(["strip", "--strip-debug", so[0]])  # host debug info; device -lineinfo lives in the fatbin
    meta = dict(json.loads(info), arch=args.arch, built_on=os.uname().nodename, built_at=time.strftime("%Y-%m-%d %H:%M:%S"),
                git=subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
                dirty=bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True,
                                          text=True).stdout.strip()),
                so=os.path.relpath(so[0], src), so_bytes=os.path.getsize(so[0]))
    with open(os.path.join(src, "BUNDLE.json"), "w") as f:
        json.dump(meta, f, indent=1)
    members = staged + [meta["so"], "brnnseg_kernels/_build_info.py", "BUNDLE.json"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with tarfile.open(args.out, "w:gz", compresslevel=9) as tar:
        for rel in sorted(set(members)):
            tar.add(os.path.join(src, rel), arcname=f"{TOP}/{rel}")
    mb = os.path.getsize(args.out) / 2**20
    print(f"gpu_bundle: {args.out}: {mb:.1f} MB ({len(set(members))} files; torch {meta['torch']}, {sm}, "
          f"_C {meta['so_bytes'] / 2**20:.1f} MB stripped) in {time.time() - t0:.0f} s")
    if mb > args.max_mb:
        raise SystemExit(f"gpu_bundle: {mb:.1f} MB exceeds --max-mb {args.max_mb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
