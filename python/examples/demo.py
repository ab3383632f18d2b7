"""Demo: a ReNet block (BiGRU2d and BiLSTM2d) on a random feature map, checked against the
nn.GRU/nn.LSTM block users would otherwise write, and timed against it on this machine."""
import time

import torch

import brnnseg_kernels as bk
from brnnseg_kernels.reference import ReNetBaseline


def median_ms(fn, repeat=5):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def main():
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.randn(2, 32, 64, 64, requires_grad=True)
    for cls, cell in ((bk.BiGRU2d, "gru"), (bk.BiLSTM2d, "lstm")):
        layer = cls(32, 32)
        baseline = ReNetBaseline(32, 32, cell)
        baseline.load_state_dict(layer.state_dict())
        y = layer(x)
        err = (y - baseline(x)).abs().max().item()
        print(f"{cls.__name__}: {tuple(x.shape)} -> {tuple(y.shape)}; max |ours - nn.{cell.upper()} block| = {err:.2e}")

        def step(m):
            return lambda: m(x).sum().backward()

        t_ours, t_base = median_ms(step(layer)), median_ms(step(baseline))
        print(f"  forward+backward: {t_ours:.1f} ms (nn.{cell.upper()} block {t_base:.1f} ms, "
              f"{t_base / t_ours:.2f}x)")
    print(bk.build_info())


if __name__ == "__main__":
    main()
