"""``python -m brnnseg_kernels demo``: a BRNN-U-Net against the same U-Net without ReNet blocks, on an
equal budget (same data, epochs, optimizer, loss and seed), on built-in procedural tasks; held-out
metrics, curves, predictions, checkpoints and a comparison table in ``runs/<task>-<timestamp>/``."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict

import torch

from .data import TASKS, SyntheticSegmentation
from .metrics import evaluate
from .train import TrainConfig, broadcast, fit, init_distributed, predict_logits, rank

# Sizes of a run: (train, val, test images, image size, epochs). "quick" is a smoke run (about a
# minute on 2 CPU cores for both tasks); the default fits `make demo` in under 10 minutes there.
PRESETS = {"quick": (32, 8, 16, 64, 2), "default": (192, 32, 48, 64, 12)}
MODELS = ("unet", "brnn-unet")


def build_model(kind: str, seed: int, base_channels: int = 16, depth: int = 3, in_channels: int = 1):
    """The demo's models: BRNNUNet with (brnn-unet) or without (unet) its ReNet blocks."""
    from ..models import BRNNUNet

    if kind not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {kind!r}")
    torch.manual_seed(seed)
    brnn = kind == "brnn-unet"
    return BRNNUNet(in_channels, 1, base_channels=base_channels, depth=depth, rnn="gru", rnn_in_skips=brnn,
                    rnn_at_bottleneck=brnn)


def model_meta(kind: str, in_channels: int = 1, base_channels: int = 16, depth: int = 3) -> dict:
    """What a checkpoint records to rebuild its model (`predict`)."""
    return dict(kind=kind, in_channels=in_channels, base_channels=base_channels, depth=depth)


def make_loss(pos_weight: float):
    from ..losses import BCEDiceLoss

    return BCEDiceLoss(pos_weight=pos_weight, boundary_weight=2.0, boundary_radius=1, lambda_dice=1.0)


def time_loss_step(model, x, y, pos_weight: float, device: str, repeat: int = 9) -> Dict[str, float]:
    """Milliseconds (medians) with the fused BCEDiceLoss and with the unfused PyTorch composition
    (max-pool boundary map + BCE-with-logits + soft Dice), same settings: the whole training step
    (forward, loss, backward; "fused"/"unfused") and the loss alone, forward+backward on the model's
    logits ("fused_loss"/"unfused_loss") -- the step's spread is larger than the loss's share of it."""
    from ..bench import time_ms
    from ..reference import unfused_bce_dice

    fused = make_loss(pos_weight)
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        base = model(x).float()
    out = {}
    for name, fn in (("fused", lambda lg: fused(lg, y)),
                     ("unfused", lambda lg: unfused_bce_dice(lg, y, pos_weight=pos_weight, boundary_weight=2.0))):
        def step():
            model.zero_grad(set_to_none=True)
            fn(model(x)).backward()

        def loss_only():
            lg = base.detach().requires_grad_()
            fn(lg).backward()

        out[name] = time_ms(step, device, repeat, warmup=1)
        out[name + "_loss"] = time_ms(loss_only, device, 4 * repeat, warmup=1)
    return out


def plot_curves(histories: Dict[str, dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, h in histories.items():
        ep = range(1, len(h["loss"]) + 1)
        a.plot(ep, h["loss"], label=f"{name} train")
        a.plot(ep, h["val_loss"], "--", label=f"{name} val")
        b.plot(ep, h["val_dice"], label=name)
    a.set(xlabel="epoch", ylabel="BCE + Dice loss", title="loss")
    b.set(xlabel="epoch", ylabel="Dice (held-out val)", title="validation Dice", ylim=(0, 1))
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_predictions(x, y, preds: Dict[str, torch.Tensor], path: str, title: str, n: int = 4) -> None:
    """image | truth | one column per model, errors marked: false positives red, false negatives blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2 + len(preds)
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.2 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(x[i, 0], cmap="gray", vmin=0, vmax=1)
        axes[i, 1].imshow(y[i, 0], cmap="gray", vmin=0, vmax=1)
        for j, (name, p) in enumerate(preds.items()):
            pr, tr = p[i, 0].bool(), y[i, 0].bool()
            rgb = torch.stack([pr.float()] * 3, -1) * 0.85
            rgb[pr & ~tr] = torch.tensor([1.0, 0.1, 0.1])   # false positive
            rgb[~pr & tr] = torch.tensor([0.1, 0.4, 1.0])   # false negative
            axes[i, 2 + j].imshow(rgb)
            inter = (pr & tr).sum().item()
            dice = 2 * inter / max(pr.sum().item() + tr.sum().item(), 1)
            axes[i, 2 + j].set_xlabel(f"Dice {dice:.3f}", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    for j, name in enumerate(["image", "truth"] + list(preds)):
        axes[0, j].set_title(name, fontsize=9)
    fig.suptitle(title + "  (red: false positive, blue: false negative)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(results: Dict[str, dict]) -> str:
    head = (f"{'model':<10} {'params':>9} {'Dice':>6} {'IoU':>6} {'BF1@2':>6} {'HD95':>6} {'s/epoch':>8} "
            f"{'step ms fused/unfused':>22} {'loss ms fused/unfused':>22}")
    rows = [head, "-" * len(head)]
    for name, r in results.items():
        m, t = r["test"], r["loss_step_ms"]
        rows.append(f"{name:<10} {r['parameters']:>9,} {m['dice']:>6.3f} {m['iou']:>6.3f} {m['boundary_f1']:>6.3f} "
                    f"{m['hd95']:>6.2f} {r['seconds_per_epoch']:>8.2f} {t['fused']:>13.1f} / {t['unfused']:>6.1f} "
                    f"{t['fused_loss']:>13.2f} / {t['unfused_loss']:>6.2f}")
    return "\n".join(rows)


def run_task(task: str, preset: str, epochs: int, device: str, out_root: str, seed: int, resume: str = None,
             progress: bool = True) -> dict:
    n_train, n_val, n_test, size, default_epochs = PRESETS[preset]
    epochs = epochs or default_epochs
    out = broadcast(resume or os.path.join(out_root, f"{task}-{time.strftime('%Y%m%d-%H%M%S')}"))
    lead = rank() == 0  # under torchrun only rank 0 evaluates, prints and writes
    if lead:
        os.makedirs(out, exist_ok=True)
    train = SyntheticSegmentation(task, n_train, "train", seed, size).tensors()
    val = SyntheticSegmentation(task, n_val, "val", seed, size).tensors()
    test = SyntheticSegmentation(task, n_test, "test", seed, size).tensors()
    fg = train[1].mean().item()
    pos_weight = float(min(10.0, max(1.0, (1 - fg) / max(fg, 1e-6))))
    cfg = TrainConfig(epochs=epochs, seed=seed, device=device, progress=progress)
    if lead:
            print(f"== {task}: {n_train} train / {n_val} val / {n_test} test images of {size}x{size}, foreground "
              f"{100 * fg:.1f} % (pos_weight {pos_weight:.1f}), {epochs} epochs, device {device}; output {out}",
              flush=True)
    results, histories, preds = {}, {}, {}
    for kind in MODELS:
        model = build_model(kind, seed)
        loss_fn = make_loss(pos_weight)
        hist = fit(kind, model, loss_fn, train, val, cfg, os.path.join(out, f"{kind}.pt"), resume=bool(resume),
                   meta=model_meta(kind))
        if not lead:
            continue
        logits = predict_logits(model, test[0], cfg)
        preds[kind] = logits > 0
        histories[kind] = hist
        results[kind] = dict(
            parameters=sum(p.numel() for p in model.parameters()), test=evaluate(preds[kind], test[1]),
            seconds_per_epoch=sum(hist["seconds"]) / max(len(hist["seconds"]), 1), history=hist,
            loss_step_ms=time_loss_step(model, train[0][:cfg.batch_size], train[1][:cfg.batch_size], pos_weight,
                                        device))
    if not lead:
        return {}
    plot_curves(histories, os.path.join(out, "curves.png"), f"{task}: U-Net vs BRNN-U-Net")
    plot_predictions(test[0], test[1], preds, os.path.join(out, "predictions.png"), f"{task}, held-out images")
    meta = dict(task=task, preset=preset, epochs=epochs, seed=seed, device=device,
                processes=int(os.environ.get("WORLD_SIZE", "1")),
                torch=torch.__version__, images=dict(train=n_train, val=n_val, test=n_test, size=size),
                pos_weight=pos_weight, threads=torch.get_num_threads())
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(dict(meta, models=results), f, indent=1)
    print(table(results))
    d = results["brnn-unet"]["test"]["dice"] - results["unet"]["test"]["dice"]
    print(f"BRNN-U-Net - U-Net: {100 * d:+.1f} Dice points on the held-out {task} images; files in {out}", flush=True)
    return dict(meta, models=results, out=out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m brnnseg_kernels demo", description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=list(TASKS) + ["all"], default="all")
    p.add_argument("--quick", action="store_true", help="a smoke run: small data, 2 epochs (about a minute)")
    p.add_argument("--epochs", type=int, default=0, help="epochs (default: 12, or 2 with --quick)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs", help="folder for runs/<task>-<timestamp>/ (default: runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", help="a run folder to continue (its task is taken from the folder name)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.device = init_distributed(args.device)  # under torchrun: DDP, gloo on CPU, nccl on GPUs
    preset = "quick" if args.quick else "default"
    if args.resume:
        task = next((t for t in TASKS if os.path.basename(os.path.normpath(args.resume)).startswith(t)), None)
        if task is None or not os.path.isdir(args.resume):
            print(f"demo --resume: {args.resume!r} is not a run folder named <task>-<timestamp>", file=sys.stderr)
            return 2
        run_task(task, preset, args.epochs, args.device, args.out, args.seed, args.resume, not args.no_progress)
        return 0
    for task in (TASKS if args.task == "all" else (args.task,)):
        run_task(task, preset, args.epochs, args.device, args.out, args.seed, None, not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
