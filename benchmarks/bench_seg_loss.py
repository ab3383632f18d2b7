"""pytest-benchmark suite: fused BCEDiceLoss vs the unfused PyTorch composition (forward+backward).

    PYTHONPATH=. .venv/bin/python -m pytest benchmarks/bench_seg_loss.py --benchmark-group-by=param:shape

Same settings on both sides: pos_weight 10, boundary weight 2 (radius 1), Dice weight 1, uint8
targets. For speed-up and peak memory side by side: ``python -m brnnseg_kernels bench --op loss``."""
import pytest
import torch

from brnnseg_kernels.bench import LOSS_SHAPES
from brnnseg_kernels.losses import BCEDiceLoss
from brnnseg_kernels.reference import unfused_bce_dice

torch.set_num_threads(2)


@pytest.mark.parametrize("provider", ["torch", "brnnseg"])
@pytest.mark.parametrize("shape", LOSS_SHAPES["cpu"], ids=lambda s: "x".join(map(str, s)))
def test_seg_loss_cpu(benchmark, shape, provider):
    logits = torch.randn(*shape, requires_grad=True)
    target = (torch.rand(*shape) > 0.7).to(torch.uint8)
    fused = BCEDiceLoss(pos_weight=10.0, boundary_weight=2.0, boundary_radius=1, dice_weight=1.0)
    fn = (lambda: unfused_bce_dice(logits, target)) if provider == "torch" else (lambda: fused(logits, target))
    benchmark.extra_info.update(shape=shape, provider=provider)

    def step():
        logits.grad = None
        fn().backward()

    benchmark(step)
