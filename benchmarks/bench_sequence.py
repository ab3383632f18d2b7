"""pytest-benchmark suite: a model with bidirectional nn.GRU/nn.LSTM vs the same model after
``brnnseg_kernels.nn.replace_rnns`` (batch 64, length 128, input 64, hidden 128; 1 and 2 layers).

    PYTHONPATH=. .venv/bin/python -m pytest benchmarks/bench_sequence.py --benchmark-group-by=param:shape

For the speed-up table with GFLOP/s and peak memory use ``python -m brnnseg_kernels bench --op rnn``."""
import copy

import pytest
import torch

from brnnseg_kernels.bench import RNN_SHAPES, _SeqModel
from brnnseg_kernels.nn import replace_rnns

torch.set_num_threads(2)


@pytest.mark.parametrize("provider", ["torch", "brnnseg"])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("mode", ["fwd+bwd", "fwd-no-grad"])
@pytest.mark.parametrize("shape", list(RNN_SHAPES))
def test_sequence_cpu(benchmark, shape, mode, cell, provider):
    b, t, c, hid, layers = RNN_SHAPES[shape]
    torch.manual_seed(0)
    model = _SeqModel(cell, c, hid, layers)
    if provider == "brnnseg":
        model = replace_rnns(copy.deepcopy(model))
    x = torch.randn(b, t, c, requires_grad=True)
    benchmark.extra_info.update(shape=shape, cell=cell, provider=provider, mode=mode)
    if mode == "fwd+bwd":
        benchmark(lambda: model(x).sum().backward())
    else:
        def run():
            with torch.no_grad():
                model(x)
        benchmark(run)
