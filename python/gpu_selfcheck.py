"""For whoever has a GPU: the CUDA test module, then the GPU benchmarks, in one command.

    python python/gpu_selfcheck.py            # from the repository root, after `make build`
"""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_selfcheck: no GPU visible", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONPATH=ROOT)
    steps = [
        [sys.executable, "-m", "brnnseg_kernels", "info"],
        [sys.executable, "-m", "pytest", "-q", "tests/test_line_scan_cuda.py", "tests/test_line_scan.py",
         "tests/test_seg_loss.py"],
        [sys.executable, "-m", "brnnseg_kernels", "bench", "--device", "cuda", "--dtype", "float32", "float16",
         "bfloat16", "--csv", "benchmarks/results/cuda_renet.csv"],
        [sys.executable, "-m", "brnnseg_kernels", "bench", "--op", "loss", "--device", "cuda"],
    ]
    for cmd in steps:
        print("+", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, cwd=ROOT, env=env)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
