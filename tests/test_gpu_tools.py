"""The GPU-run tools on a machine without a GPU: they say so in one line and exit 2; the parts that do not
need a GPU (the sanitizer-log summary, argument checks, the torch floor) are checked here."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "python"))

import gpu_selfcheck  # noqa: E402


def _run(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "python", script), *args], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
@pytest.mark.parametrize("script", ["gpu_selfcheck.py", "gpu_profile.py"])
def test_without_a_gpu_one_line_and_exit_2(script, tmp_path):
    r = _run(script, "--out", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1 and "no GPU" in r.stdout


def test_sanitizer_errors_counted_per_kernel():
    log = """========= COMPUTE-SANITIZER
========= Uninitialized __global__ memory read of size 2 bytes
=========     at void brnnseg::sweep_fwd_kernel<c10::BFloat16, brnnseg::LstmCell, (int)4>(brnnseg::SweepBatch<T1>)+0x1da0 in sweep_fwd_kernel.cuh:75
=========     by thread (96,0,0) in block (3,1,0)
========= Uninitialized __global__ memory read of size 2 bytes
=========     at void brnnseg::sweep_fwd_kernel<c10::BFloat16, brnnseg::LstmCell, (int)4>(brnnseg::SweepBatch<T1>)+0x1da0 in sweep_fwd_kernel.cuh:75
========= Uninitialized __global__ memory read of size 4 bytes
=========     at void at::native::reduce_kernel<512, 1>(at::native::ReduceOp<float>)+0x50
========= ERROR SUMMARY: 3 errors
"""
    counts = gpu_selfcheck.sanitizer_errors_by_kernel(log)
    assert counts == {
        "brnnseg::sweep_fwd_kernel: Uninitialized __global__ memory read of size 2 bytes": 2,
        "at::native::reduce_kernel: Uninitialized __global__ memory read of size 4 bytes": 1,
    }
    assert gpu_selfcheck.sanitizer_errors_by_kernel("========= ERROR SUMMARY: 0 errors\n") == {}


def test_selfcheck_caps_fit_the_budget():
    """The steps' caps add up to at most the default budget, and that to 6 minutes (prebuilt extension)."""
    assert set(gpu_selfcheck.CAPS) == {"tests", "sanitizers", "us-per-step", "bench-renet", "bench-loss"}
    assert sum(gpu_selfcheck.CAPS.values()) <= gpu_selfcheck.DEFAULT_BUDGET <= 360


def test_bundle_refuses_more_than_one_arch():
    r = _run("gpu_bundle.py", "--arch", "8.0;9.0", "--out", "/nonexistent/x.tar.gz")
    assert r.returncode == 2 and "--arch" in r.stderr


def test_torch_floor_is_read_from_setup():
    import check_torch_floor

    assert check_torch_floor.torch_floor() == "2.11"
