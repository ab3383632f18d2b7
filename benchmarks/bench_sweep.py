"""pytest-benchmark suite: BiGRU2d/BiLSTM2d vs the nn.GRU/nn.LSTM ReNet block on the CPU shapes.

    PYTHONPATH=. .venv/bin/python -m pytest benchmarks/bench_sweep.py --benchmark-group-by=param:shape

Providers: "torch" (permute + nn.GRU/nn.LSTM, reference.ReNetBaseline) and "brnnseg" (our layers),
same process, 2 threads. For the speed-up table with GFLOP/s and peak memory use
``python -m brnnseg_kernels bench --device cpu``."""
import pytest
import torch

from brnnseg_kernels.bench import CPU_SHAPES, make_layers

torch.set_num_threads(2)


@pytest.mark.parametrize("provider", ["torch", "brnnseg"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("mode", ["fwd+bwd", "fwd-no-grad"])
@pytest.mark.parametrize("shape", list(CPU_SHAPES))
def test_renet_cpu(benchmark, shape, mode, cell, provider):
    dims = CPU_SHAPES[shape]
    layer = make_layers(cell, dims, "cpu")[provider]
    x = torch.randn(*dims[:4], requires_grad=True)
    benchmark.extra_info.update(shape=shape, cell=cell, provider=provider, mode=mode)
    if mode == "fwd+bwd":
        benchmark(lambda: layer(x).sum().backward())
    else:
        def run():
            with torch.no_grad():
                layer(x)
        benchmark(run)
