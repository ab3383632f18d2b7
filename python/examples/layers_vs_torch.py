"""The layers against torch on random data (`python python/examples/layers_vs_torch.py`):

1. a ReNet block (BiGRU2d and BiLSTM2d), checked against the nn.GRU/nn.LSTM block users would
   otherwise write, and timed against it on this machine;
2. replace_rnns on a model holding a bidirectional nn.LSTM: same outputs, time against torch;
3. a small BRNNUNet trained for a few steps on synthetic squares, loss printed."""
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

    # 2. Drop-in nn.LSTM: the same model before and after replace_rnns.
    import copy

    model = torch.nn.Sequential(torch.nn.LSTM(64, 128, batch_first=True, bidirectional=True))
    ours = bk.nn.replace_rnns(copy.deepcopy(model))
    seq = torch.randn(32, 100, 64)
    err = (ours(seq)[0] - model(seq)[0]).abs().max().item()

    def seq_step(m):
        return lambda: m(seq)[0].sum().backward()

    t_ours, t_base = median_ms(seq_step(ours)), median_ms(seq_step(model))
    print(f"replace_rnns(nn.LSTM(64, 128, bidirectional)) on (32, 100, 64): max |diff| = {err:.2e}; "
          f"forward+backward {t_ours:.1f} ms vs torch {t_base:.1f} ms ({t_base / t_ours:.2f}x)")

    # 3. A small BRNNUNet learning to segment bright squares on noise.
    net = bk.models.BRNNUNet(1, 1, base_channels=8, depth=2, rnn="gru")
    loss_fn = bk.losses.BCEDiceLoss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    images = torch.randn(8, 1, 32, 32) * 0.3
    masks = torch.zeros(8, 1, 32, 32)
    for i in range(8):
        r, c = torch.randint(0, 20, (2,)).tolist()
        images[i, 0, r:r + 12, c:c + 12] += 1.0
        masks[i, 0, r:r + 12, c:c + 12] = 1
    for step in range(30):
        opt.zero_grad()
        loss = loss_fn(net(images), masks)
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == 29:
            print(f"BRNNUNet step {step:2d}: BCE+Dice loss {loss.item():.3f}")
    print(bk.build_info())


if __name__ == "__main__":
    main()
