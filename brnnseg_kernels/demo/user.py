"""``python -m brnnseg_kernels train --data DIR`` and ``predict --checkpoint CKPT --input DIR --out DIR``:
the demo's trainer, metrics and outputs on users' own images (see folder.py for the data layout).

Training runs on random crops (``--crop``, padded up for smaller images); validation metrics are
computed on the whole held-out images, padded to the model's stride and cropped back. ``predict``
writes one 0/255 PNG mask per input, the input's size, optionally through a sliding window
(``--sliding-window ROI``: MONAI's ``sliding_window_inference`` when installed)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from ..models.inference import predict_padded, sliding_window
from .folder import list_inputs, load_folder, random_crops, read_array, to_image, write_mask_png
from .metrics import evaluate_list
from .run import MODELS, build_model, make_loss, model_meta, plot_curves, plot_predictions
from .train import TrainConfig, broadcast, fit, init_distributed, load_checkpoint, rank


def train_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m brnnseg_kernels train", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder with images/ and masks/ (same file stems)")
    p.add_argument("--model", choices=MODELS, default="brnn-unet")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--crop", type=int, default=64, help="training crop size (a multiple of 2**depth)")
    p.add_argument("--crops-per-epoch", type=int, default=0, help="default: 8 per training image, at least 64")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", help="a train-<timestamp> run folder to continue")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.device = init_distributed(args.device)  # under torchrun: DDP, gloo on CPU, nccl on GPUs
    stride = 2 ** args.depth
    if args.crop % stride:
        p.error(f"--crop must be a multiple of 2**depth = {stride}, got {args.crop}")
    try:
        xs, ys, stems = load_folder(args.data)
    except ValueError as e:
        print(str(e), file=sys.stderr)
        return 2
    g = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(len(xs), generator=g).tolist()
    n_val = min(len(xs) - 1, max(1, round(len(xs) * args.val_fraction))) if len(xs) > 1 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    if not val_idx:
        val_idx = train_idx  # one image: validate on it (reported as such)
    tx, ty = [xs[i] for i in train_idx], [ys[i] for i in train_idx]
    n_crops = args.crops_per_epoch or max(64, 8 * len(tx))
    train = random_crops(tx, ty, args.crop, n_crops, g)
    val_crops = random_crops([xs[i] for i in val_idx], [ys[i] for i in val_idx], args.crop, 16, g)
    fg = train[1].mean().item()
    pos_weight = float(min(10.0, max(1.0, (1 - fg) / max(fg, 1e-6))))
    out = broadcast(args.resume or os.path.join(args.out, f"train-{time.strftime('%Y%m%d-%H%M%S')}"))
    lead = rank() == 0
    if lead:
        os.makedirs(out, exist_ok=True)
    channels = xs[0].shape[0]
    if lead:
            print(f"== train: {len(train_idx)} training / {len(val_idx)} validation images from {args.data} "
              f"({channels} channel(s)); {n_crops} crops of {args.crop} per epoch, {args.epochs} epochs, "
              f"pos_weight {pos_weight:.1f}; output {out}", flush=True)
    model = build_model(args.model, args.seed, args.base_channels, args.depth, in_channels=channels)
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed, device=args.device, progress=not args.no_progress)
    meta = model_meta(args.model, channels, args.base_channels, args.depth)
    hist = fit(args.model, model, make_loss(pos_weight), train, val_crops, cfg, os.path.join(out, f"{args.model}.pt"),
               resume=bool(args.resume), meta=meta)
    if not lead:
        return 0
    model.eval()
    device = torch.device(args.device)
    preds = [predict_padded(model, xs[i][None].to(device), stride)[0].cpu() > 0 for i in val_idx]
    result = evaluate_list(preds, [ys[i] for i in val_idx])
    plot_curves({args.model: hist}, os.path.join(out, "curves.png"), f"train on {args.data}")
    with torch.no_grad():
        crop_pred = torch.cat([model(val_crops[0][i:i + 8].to(device)).cpu() for i in range(0, 16, 8)]) > 0
    plot_predictions(val_crops[0][:, :1], val_crops[1], {args.model: crop_pred}, os.path.join(out, "predictions.png"),
                     "validation crops")
    with open(os.path.join(out, "metrics.json"), "w") as f:
        json.dump(dict(data=os.path.abspath(args.data), model=meta, seed=args.seed, device=args.device,
                       validation_images=[stems[i] for i in val_idx], validation=result, history=hist,
                       parameters=sum(q.numel() for q in model.parameters()),
                       seconds_per_epoch=sum(hist["seconds"]) / max(len(hist["seconds"]), 1)), f, indent=1)
    print("validation (whole images): " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
    print(f"checkpoint {os.path.join(out, args.model + '.pt')}")
    return 0


def load_model(checkpoint: str):
    ck = load_checkpoint(checkpoint)
    meta = ck.get("meta") or {}
    if "kind" not in meta:
        raise ValueError(f"predict: {checkpoint} does not say which model it holds (not a brnnseg_kernels "
                         "train/demo checkpoint)")
    model = build_model(meta["kind"], 0, meta["base_channels"], meta["depth"], meta["in_channels"])
    model.load_state_dict(ck["model"])
    return model.eval(), meta


def predict_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m brnnseg_kernels predict",
                                description="write predicted masks (PNG, 0/255) for a folder of images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--input", required=True, help="folder of images (PNG, TIFF, .npy)")
    p.add_argument("--out", required=True, help="folder for <stem>.png masks")
    p.add_argument("--sliding-window", type=int, default=0, metavar="ROI",
                   help="window size (a multiple of 2**depth) for images too large to run whole")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    try:
        model, meta = load_model(args.checkpoint)
        files = list_inputs(args.input)
    except (ValueError, OSError) as e:
        print(str(e), file=sys.stderr)
        return 2
    stride = 2 ** meta["depth"]
    if args.sliding_window and args.sliding_window % stride:
        p.error(f"--sliding-window must be a multiple of 2**depth = {stride}")
    device = torch.device(args.device)
    model.to(device)
    os.makedirs(args.out, exist_ok=True)
    written = 0
    for path in files:
        try:
            x = to_image(read_array(path))[None].to(device)
        except Exception as e:  # noqa: BLE001
            print(f"skipping {path}: unreadable image ({e})", file=sys.stderr)
            continue
        if x.shape[1] != meta["in_channels"]:
            print(f"skipping {path}: {x.shape[1]} channels, the model takes {meta['in_channels']}", file=sys.stderr)
            continue
        with torch.no_grad():
            if args.sliding_window:
                from ..models.inference import pad_to_multiple

                padded, crop = pad_to_multiple(x, stride)
                logits = sliding_window(model, padded, (args.sliding_window,) * 2, args.overlap)[crop]
            else:
                logits = predict_padded(model, x, stride)
        stem = os.path.splitext(os.path.basename(path))[0]
        write_mask_png(logits[0, 0] > 0, os.path.join(args.out, f"{stem}.png"))
        written += 1
    print(f"wrote {written} mask(s) to {args.out}")
    return 0 if written else 1
