"""A build tied to another torch is refused at import with a message naming both, not an undefined
symbol (brnnseg_kernels/_compat.py)."""
import os
import subprocess
import sys

import pytest
import torch

import brnnseg_kernels as bk
from brnnseg_kernels._compat import mismatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILD = dict(torch="2.14.1+cu130", torch_cuda="13.0", with_cuda=True, cxx11_abi=True)


def test_mismatch_rules():
    assert mismatch(BUILD, "2.14.1+cu130", "13.0", True) is None
    assert mismatch(BUILD, "2.14.0", "13.1", True) is None            # patch and CUDA minor releases are fine
    assert mismatch({}, "2.6.0", None, True) is None                  # nothing recorded: nothing to compare
    msg = mismatch(BUILD, "2.11.0+cu130", "13.0", True)
    assert "torch 2.14.1+cu130 (running 2.11.0+cu130)" in msg and "--force-reinstall" in msg and "torch 2.11" in msg
    assert "CUDA 13.0 (running torch has CUDA 12.8)" in mismatch(BUILD, "2.14.1+cu128", "12.8", True)
    assert "_GLIBCXX_USE_CXX11_ABI=1 (running torch: 0)" in mismatch(BUILD, "2.14.1", "13.0", False)
    assert mismatch(dict(BUILD, with_cuda=False), "2.14.1+cpu", None, True) is None


def test_this_build_records_what_it_was_built_against():
    info = bk.build_info()
    assert info["torch"] == torch.__version__ and "cxx11_abi" in info


def _import_with(recorded: dict, env=None):
    code = ("import sys, types; m = types.ModuleType('brnnseg_kernels._build_info'); "
            f"m.BUILD_INFO = {recorded!r}; sys.modules['brnnseg_kernels._build_info'] = m; import brnnseg_kernels")
    return subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})),
                          capture_output=True, text=True, timeout=120)


def test_import_refuses_a_build_for_another_torch():
    fake = dict(bk.build_info(), torch="2.6.0+cu124", torch_cuda="12.4")
    out = _import_with(fake)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: brnnseg_kernels was built for torch 2.6.0+cu124 (running "), last
    assert _import_with(fake, {"BRNNSEG_SKIP_VERSION_CHECK": "1"}).returncode == 0
    assert _import_with(bk.build_info()).returncode == 0


def test_cuda_arch_rule_and_message():
    """The first CUDA call on a GPU the build cannot run raises, naming both archs (tested on the rule,
    no GPU needed)."""
    from brnnseg_kernels import dispatch

    assert dispatch.arch_runs("8.0;9.0+PTX", (8, 0)) and dispatch.arch_runs("8.0;9.0+PTX", (8, 6))  # same major
    assert dispatch.arch_runs("8.0;9.0+PTX", (9, 0)) and dispatch.arch_runs("8.0;9.0+PTX", (12, 0))  # PTX forward
    assert not dispatch.arch_runs("8.0;9.0", (7, 5)) and not dispatch.arch_runs("8.0;9.0", (12, 0))
    assert not dispatch.arch_runs("9.0+PTX", (8, 9))
    with pytest.raises(RuntimeError, match=r"sm_75, but the CUDA kernels were built for 8.0;9.0\+PTX"):
        dispatch.check_cuda_arch("8.0;9.0+PTX", (7, 5))
