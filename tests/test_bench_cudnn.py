"""bench's record of the cuDNN baseline (brnnseg_kernels/bench/cudnn.py): the algorithm PyTorch asks cuDNN for,
by the rules of aten/src/ATen/native/cudnn/RNN.cpp, the classification of the kernels a profile saw, the time per
recurrent step, the default benchmark dtypes and the table. The profiled part runs on a GPU only
(tests/test_sweep_cuda.py runs `bench --device cuda`)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from brnnseg_kernels import bench
from brnnseg_kernels.bench import cudnn

SMALL, STD, PS = cudnn.PERSIST_STATIC_SMALL_H, cudnn.STANDARD, cudnn.PERSIST_STATIC


@pytest.mark.parametrize("mode,hidden,forward,expected", [
    ("gru", 64, True, SMALL), ("gru", 192, True, SMALL), ("gru", 193, True, STD),
    ("lstm", 128, False, SMALL), ("lstm", 129, False, STD), ("gru", 192, False, STD),
    ("rnn_tanh", 384, True, SMALL), ("rnn_tanh", 385, True, STD), ("rnn_relu", 256, False, SMALL),
    ("rnn_relu", 257, False, STD),
])
def test_persist_small_h_thresholds(mode, hidden, forward, expected):
    got = cudnn.predicted_algorithm(mode, hidden, 64, 32, 50, torch.float32, forward)
    assert got == expected


def test_what_excludes_the_persistent_algorithms():
    args = ("lstm", 64, 64, 32, 50)
    assert cudnn.predicted_algorithm(*args, torch.float64, True) == STD           # double: standard only
    assert cudnn.predicted_algorithm(*args, torch.bfloat16, True) == SMALL
    assert cudnn.predicted_algorithm(*args, torch.float32, True, capability=(5, 2)) == STD
    assert cudnn.predicted_algorithm(*args, torch.float32, True, proj_size=16) == STD
    assert cudnn.predicted_algorithm(*args, torch.float32, True, packed=True) == STD


def test_persist_static_for_half_single_layer_unidirectional():
    """float16, hidden and input multiples of 128, one layer, one direction, on a big sm_80+ part."""
    kw = dict(bidirectional=False, capability=(8, 0), sm_count=108)
    assert cudnn.predicted_algorithm("lstm", 256, 256, 64, 50, torch.float16, True, **kw) == PS
    assert cudnn.predicted_algorithm("lstm", 256, 256, 64, 50, torch.float32, True, **kw) == STD
    assert cudnn.predicted_algorithm("gru", 256, 256, 64, 50, torch.float16, True, **kw) == STD      # GRU excluded
    assert cudnn.predicted_algorithm("lstm", 256, 256, 60, 50, torch.float16, True, **kw) == STD     # batch % 8
    assert cudnn.predicted_algorithm("lstm", 256, 200, 64, 50, torch.float16, True, **kw) == STD     # input % 128
    assert cudnn.predicted_algorithm("lstm", 256, 256, 64, 50, torch.float16, True,
                                     **dict(kw, bidirectional=True)) == STD
    assert cudnn.predicted_algorithm("lstm", 256, 256, 64, 50, torch.float16, True,
                                     **dict(kw, capability=(8, 6))) == STD                          # sm_86
    assert cudnn.predicted_algorithm("lstm", 256, 256, 64, 50, torch.float16, True,
                                     **dict(kw, sm_count=56)) == STD                                # A30-size
    assert cudnn.predicted_algorithm("lstm", 256, 256, 64, 50, torch.float16, True,
                                     **dict(kw, capability=(7, 0))) == PS                           # V100 rule
    assert cudnn.predicted_algorithm("lstm", 256, 256, 64, 15, torch.float16, True,
                                     **dict(kw, capability=(7, 0))) == STD                          # too short


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="mode: expected"):
        cudnn.predicted_algorithm("transformer", 64, 64, 8, 8, torch.float32, True)


def test_kernel_names_classified():
    assert cudnn.classify_kernels([]) == "unknown"
    assert cudnn.classify_kernels(["RNN_blockPersist_fp_GRU<float>", "elementwise_kernel"]) == "persistent"
    assert cudnn.classify_kernels(["sm90_xmma_gemm_f32f32", "RNN_elementWise_fp"]) == STD


def test_per_step_time_and_record_of_a_benchmark_shape():
    """lanes-64 (8, 128, 36, 100, 64): rows calls batch 8*36, length 100; cols batch 800, length 36;
    W + H = 136 sequential steps. Hidden 64 takes the persistent small-h algorithm both ways; hidden 256
    (cityscapes-s8-256) the standard one."""
    assert cudnn.per_step_us(1.36, bench.GPU_SHAPES["lanes-64"]) == pytest.approx(10.0)
    rec = cudnn.baseline_record("gru", bench.GPU_SHAPES["lanes-64"], torch.float32)
    assert rec["predicted"] == {"rows fwd": SMALL, "rows bwd": SMALL, "cols fwd": SMALL, "cols bwd": SMALL}
    assert "observed" not in rec  # no GPU input given
    rec = cudnn.baseline_record("lstm", bench.GPU_SHAPES["cityscapes-s8-256"], torch.bfloat16)
    assert set(rec["predicted"].values()) == {STD}
    rec = cudnn.baseline_record("rnn", bench.GPU_SHAPES["ade-s16-256"], torch.float32)
    assert rec["predicted"] == {"rows fwd": SMALL, "rows bwd": SMALL, "cols fwd": SMALL, "cols bwd": SMALL}


def test_report_cudnn_table():
    rec = dict(shape="lanes-64", cell="gru", dtype="float32",
               predicted={"rows fwd": SMALL, "rows bwd": SMALL, "cols fwd": SMALL, "cols bwd": STD},
               observed={"algorithm": "persistent", "kernels": ["RNN_blockPersist_fp_GRU"]},
               us_per_step={"torch fwd+bwd": 3.5, "brnnseg fwd+bwd": 1.25, "torch fwd no_grad": 1.0,
                            "brnnseg fwd no_grad": 0.5})
    line = bench.report_cudnn([rec]).splitlines()[2].split()
    assert line == ["lanes-64", "gru", "ps_small_h/ps_small_h/ps_small_h/std", "persistent", "3.50", "1.25",
                    "1.00", "0.50"], line


def test_native_dtypes():
    cpu = bench.native_dtypes("cpu")
    assert cpu[0] == "float32" and set(cpu) <= {"float32", "bfloat16", "float16"}
    cuda = bench.native_dtypes("cuda")
    assert cuda[:2] == ["float32", "float16"]


def test_bench_cli_half_precision_rows(tmp_path):
    """--dtype bfloat16 on the CPU end to end: both sides run in bfloat16, rows are labelled with the dtype
    in the JSON when several dtypes run, and the JSON lists the dtypes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-m", "brnnseg_kernels", "bench", "--repeat", "1", "--shapes", "cpu-wide",
                          "--cells", "gru", "--no-memory", "--dtype", "float32", "bfloat16",
                          "--json", str(tmp_path / "r.json")], cwd=root, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=root))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "-- bfloat16" in out.stdout
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["dtypes"] == ["float32", "bfloat16"] and "cudnn" not in data
    shapes = {r["shape"] for r in data["runs"][0]}
    assert shapes == {"cpu-wide float32", "cpu-wide bfloat16"}


def test_cpu_peak_memory_counts_live_tensors():
    """bench's CPU peak memory (profiler allocation events): two live 1000x1000 float32 tensors peak at
    2 x 3.81 MiB; one freed before the next is allocated peaks at one."""
    def two_live():
        a = torch.randn(1000, 1000)
        b = torch.randn(1000, 1000)
        return a.sum() + b.sum()

    def one_at_a_time():
        for _ in range(2):
            torch.randn(1000, 1000).sum()

    assert bench.cpu_peak_mib(two_live) == pytest.approx(2 * 4e6 / 2**20, rel=0.02)
    assert bench.cpu_peak_mib(one_at_a_time) == pytest.approx(4e6 / 2**20, rel=0.02)
