"""pytest-benchmark suite: fused CEDiceLoss (multi-class, integer label maps) vs the unfused PyTorch
composition (forward+backward).

    PYTHONPATH=. .venv/bin/python -m pytest benchmarks/bench_ce_dice_loss.py --benchmark-group-by=param:shape

Same settings on both sides: softmax cross-entropy with boundary weight 2 (radius 1: a pixel whose 3x3
neighbourhood holds more than one label), softmax Dice averaged over all classes, int64 labels. For
speed-up and peak memory side by side: ``python -m brnnseg_kernels bench --op seg_loss``."""
import pytest
import torch

from brnnseg_kernels.bench.workloads import LOSS_MC_SHAPES
from brnnseg_kernels.losses import CEDiceLoss
from brnnseg_kernels.reference import unfused_ce_dice

torch.set_num_threads(2)


@pytest.mark.parametrize("provider", ["torch", "brnnseg"])
@pytest.mark.parametrize("shape", LOSS_MC_SHAPES["cpu"], ids=lambda s: "x".join(map(str, s)))
def test_ce_dice_loss_cpu(benchmark, shape, provider):
    logits = torch.randn(*shape, requires_grad=True)
    labels = torch.randint(0, shape[1], (shape[0],) + tuple(shape[2:]))
    fused = CEDiceLoss(boundary_weight=2.0, boundary_radius=1, average="all")
    fn = (lambda: unfused_ce_dice(logits, labels)) if provider == "torch" else (lambda: fused(logits, labels))
    benchmark.extra_info.update(shape=shape, provider=provider)

    def step():
        logits.grad = None
        fn().backward()

    benchmark(step)
