"""The trainer behind ``python -m brnnseg_kernels demo``: augmentation, AdamW with cosine annealing,
gradient clipping, mixed precision on CUDA, a progress bar, atomic checkpoints and resume.

Under ``torchrun --nproc_per_node=K`` (after ``init_distributed``) the model is wrapped in
DistributedDataParallel (gloo on CPU, nccl on GPU): every rank draws the same epoch permutation and
trains on its own shard of it, losses are averaged across ranks, and only rank 0 shows progress and
writes files.

A checkpoint (``<name>.pt``) holds plain tensors, numbers and strings only, so it loads with
``torch.load(weights_only=True)``: the model and optimizer state, the scheduler's epoch, the history
so far and the random state, written to a temporary file and renamed over the last one (a run killed
mid-write leaves the previous checkpoint intact).
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class TrainConfig:
    epochs: int = 12
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "cpu"
    amp: bool = True          # mixed precision where the device supports it (CUDA: bfloat16 autocast)
    augment: bool = True
    progress: bool = True


def augment(x: Tensor, y: Tensor, g: torch.Generator) -> tuple:
    """Per batch: random flips, a 90-degree rotation, and a small affine (rotation +-10 deg, scale
    0.9-1.1, shift +-4 %) with bilinear images and nearest-neighbour masks."""
    if torch.rand((), generator=g) < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if torch.rand((), generator=g) < 0.5:
        x, y = x.flip(-2), y.flip(-2)
    k = int(torch.randint(0, 4, (), generator=g))
    x, y = torch.rot90(x, k, (-2, -1)), torch.rot90(y, k, (-2, -1))
    n = x.shape[0]
    ang = (torch.rand(n, generator=g) - 0.5) * math.radians(20)
    scale = 0.9 + 0.2 * torch.rand(n, generator=g)
    shift = (torch.rand(n, 2, generator=g) - 0.5) * 0.08
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(ang) / scale, -torch.sin(ang) / scale
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(ang) / scale, torch.cos(ang) / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    y = F.grid_sample(y, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return x, y


def save_atomic(obj, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename it over `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pt")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def rank() -> int:
    d = _dist()
    return d.get_rank() if d else 0


def init_distributed(device: str) -> str:
    """Joins the process group torchrun describes (WORLD_SIZE > 1): nccl with one GPU per rank, else
    gloo. Returns the device this rank uses."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device


def broadcast(obj):
    """rank 0's value of a picklable object on every rank (itself without a process group)."""
    d = _dist()
    if d is None:
        return obj
    box = [obj]
    d.broadcast_object_list(box, src=0)
    return box[0]


def _soft_dice(logits: Tensor, y: Tensor) -> float:
    p = (logits.detach().float() > 0).float()
    inter = (p * y).sum().item()
    return 2 * inter / max(p.sum().item() + y.sum().item(), 1e-6)


def fit(name: str, model: nn.Module, loss_fn: Callable, train: tuple, val: tuple, cfg: TrainConfig,
        ckpt_path: Optional[str] = None, resume: bool = False,
        on_epoch: Optional[Callable[[int, Dict], None]] = None, meta: Optional[dict] = None) -> Dict[str, List[float]]:
    """Trains `model` on train = (images, masks); returns the history: per epoch train loss, val loss,
    val Dice (threshold 0), seconds. With resume and an existing checkpoint, continues from it. `meta`
    (plain values: how to rebuild the model) is stored in the checkpoint for `predict`."""
    device = torch.device(cfg.device)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    history: Dict[str, List[float]] = {"loss": [], "val_loss": [], "val_dice": [], "seconds": []}
    g = torch.Generator().manual_seed(cfg.seed)
    start = 0
    if resume and ckpt_path and os.path.exists(ckpt_path):
        ck = load_checkpoint(ckpt_path)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        history = {k: list(v) for k, v in ck["history"].items()}
        g.set_state(ck["rng"])
        start = int(ck["epoch"])
    amp = cfg.amp and device.type == "cuda"
    xs, ys = train
    dist = _dist()
    world, me = (dist.get_world_size(), dist.get_rank()) if dist else (1, 0)
    net = model
    if dist:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    n = xs.shape[0] // world  # samples per rank and epoch (equal, so every rank takes as many steps)
    steps = math.ceil(n / cfg.batch_size)
    bar = None
    if cfg.progress and me == 0:
        try:
            from tqdm.auto import tqdm
        except ImportError as e:
            raise ImportError("the demo trainer's progress bar needs tqdm: pip install 'brnnseg_kernels[demo]' "
                              "(or pass progress=False / --no-progress)") from e

        bar = tqdm(total=(cfg.epochs - start) * steps, desc=name, unit="step", dynamic_ncols=True, leave=True)
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(xs.shape[0], generator=g)[:n * world][me::world]  # this rank's shard
        total = 0.0
        for s in range(steps):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            x, y = xs[idx], ys[idx]
            if cfg.augment:
                x, y = augment(x, y, g)
            x, y = x.to(device), y.to(device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            total += loss.item() * len(idx)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{loss.item():.3f}",
                                dice=f"{_soft_dice(logits, y):.3f}")
        sched.step()
        if dist:
            t = torch.tensor([total], dtype=torch.float64)
            dist.all_reduce(t)
            total = t.item() / world
            for buf in model.buffers():  # BatchNorm statistics: rank 0's, so every rank holds one model
                dist.broadcast(buf, 0)
        seconds = time.perf_counter() - t0
        val_loss, val_dice = evaluate_loss(model, loss_fn, val, cfg)
        history["loss"].append(total / n)
        history["val_loss"].append(val_loss)
        history["val_dice"].append(val_dice)
        history["seconds"].append(seconds)
        if bar is not None:
            bar.set_postfix(epoch=f"{epoch + 1}/{cfg.epochs}", loss=f"{total / n:.3f}", val_dice=f"{val_dice:.3f}")
        if ckpt_path and me == 0:
            save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                         "history": history, "rng": g.get_state(), "epoch": epoch + 1, "name": name,
                         "config": asdict(cfg), "meta": meta or {}}, ckpt_path)
        if on_epoch is not None:
            on_epoch(epoch, history)
    if bar is not None:
        bar.close()
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, x: Tensor, cfg: TrainConfig) -> Tensor:
    model.eval()
    device = torch.device(cfg.device)
    outs = [model(x[i:i + cfg.batch_size].to(device)).float().cpu() for i in range(0, x.shape[0], cfg.batch_size)]
    return torch.cat(outs)


@torch.no_grad()
def evaluate_loss(model: nn.Module, loss_fn: Callable, data: tuple, cfg: TrainConfig):
    x, y = data
    logits = predict_logits(model, x, cfg)
    return loss_fn(logits, y).item(), _soft_dice(logits, y)
