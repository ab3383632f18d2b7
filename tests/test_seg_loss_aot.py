"""The Triton loss kernels compiled ahead of time for sm_80 and sm_90 without a GPU: every variant the
op can launch (forward/backward, 2-D/3-D, each logits dtype, each tile shape; optional terms on) must
compile with no register spills. brnnseg_kernels/losses/_aot.py says what a variant is."""
import json
import os
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
from brnnseg_kernels.losses import _aot  # noqa: E402
from brnnseg_kernels.losses import _kernels  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_variants_cover_what_the_launchers_choose():
    """The tile shapes the launchers pick are all in the compiled set (both shapes are reachable)."""
    import torch

    chosen = {_kernels._layout(torch.empty(s))[5:7] for s in [(1, 1, 5, 3), (1, 1, 9, 17), (2, 3, 64, 200),
                                                              (1, 1, 4, 6, 16), (1, 1, 2, 3, 1000)]}
    assert chosen == set(_kernels.BLOCKS)
    names = {v.name for v in _aot.variants()}
    assert len(names) == 2 * 2 * 4 * len(_kernels.BLOCKS) * 2 + 4 * 2 * 2  # + the finish kernel


def test_every_variant_compiles_without_spills(tmp_path):
    # A fresh process without TRITON_INTERPRET (conftest sets it here; interpreted kernels cannot compile).
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")  # compile for real, not from a cache
    out = tmp_path / "aot.json"
    run = subprocess.run([sys.executable, "-m", "brnnseg_kernels.losses._aot", "--json", str(out)], env=env,
                         capture_output=True, text=True, timeout=1200)
    assert out.exists(), run.stderr[-3000:]
    rows = json.loads(out.read_text())
    bad = [(r["variant"], r["registers"], r["spills"]) for r in rows if r["spills"]]
    assert not bad, f"register spills (variant, registers, spill bytes): {bad}"
    assert len(rows) == len(_aot.variants()) and all(r["registers"] > 0 for r in rows)
    assert run.returncode == 0, run.stderr[-3000:]


def test_multiclass_kernel_subset_compiles_without_spills(tmp_path):
    """The multi-class loss kernels (ce_dice_kernels.py) at the extremes of what the launchers choose:
    2 and 256 classes (the tile shrinks to 4 pixels), 3-D, bfloat16/float32/float64, labels and soft
    targets, forward and backward, for sm_90 (`python -m brnnseg_kernels.losses._aot --set ce` compiles
    the whole product)."""
    from brnnseg_kernels.losses import ce_dice_kernels

    assert ce_dice_kernels.tile_shape(3) == (4, 256) and ce_dice_kernels.tile_shape(150) == (256, 4)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton-cache")
    out = tmp_path / "aot-ce.json"
    run = subprocess.run([sys.executable, "-m", "brnnseg_kernels.losses._aot", "--set", "ce-subset", "--json",
                          str(out)], env=env, capture_output=True, text=True, timeout=1200)
    assert out.exists(), run.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == len(_aot.CE_SUBSET) and all(r["registers"] > 0 for r in rows)
    bad = [(r["variant"], r["registers"], r["spills"]) for r in rows if r["spills"]]
    assert not bad, f"register spills (variant, registers, spill bytes): {bad}"
