"""Plain-PyTorch references.

* ``STEPS``: one step of each kernel cell. ``sweep`` / ``gru_sweep`` / ``lstm_sweep``: the exact math
  of the fused sweep ops, written as an explicit
  loop over time (vectorised over lines). Tests compare the kernels with these in float64, and
  the layers fall back to them on devices without a kernel.
* ``sequence``: one GRU/LSTM layer over a batch of sequences with initial states and per-sequence
  lengths -- the math of the sequence ops behind the drop-in ``nn.GRU``/``nn.LSTM``.
* ``ReNetBaseline``: the block users would otherwise write -- permutes plus
  ``nn.GRU``/``nn.LSTM(bidirectional=True)`` (cuDNN on a GPU). Benchmarks race against it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["gru_sweep", "lstm_sweep", "sweep", "sequence", "renet", "ReNetBaseline"]


def _lines(x: Tensor, axis: int) -> Tensor:
    """(N, C, H, W) -> (lines, T, C): one sequence per row (axis 3) or column (axis 2)."""
    n, c, h, w = x.shape
    if axis == 3:
        return x.permute(0, 2, 3, 1).reshape(n * h, w, c)
    return x.permute(0, 3, 2, 1).reshape(n * w, h, c)


def _unlines(seq: Tensor, shape, axis: int) -> Tensor:
    """(lines, T, F) -> (N, F, H, W), the inverse of _lines."""
    n, _, h, w = shape
    f = seq.shape[-1]
    if axis == 3:
        return seq.reshape(n, h, w, f).permute(0, 3, 1, 2)
    return seq.reshape(n, w, h, f).permute(0, 3, 2, 1)


# The math of one step of each kernel cell (PyTorch's gate orders), on (lines, G*hid) pre-activations:
# gx = W_ih x_t + b_ih, gh = W_hh h + b_hh; returns (h, c) (c None for cells without a cell state).
def _gru_step(gx: Tensor, gh: Tensor, h: Tensor, c: Optional[Tensor]):
    xr, xz, xn = gx.chunk(3, dim=1)
    hr, hz, hn = gh.chunk(3, dim=1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return (1 - z) * n + z * h, None


def _lstm_step(gx: Tensor, gh: Tensor, h: Tensor, c: Optional[Tensor]):
    i, f, g, o = (gx + gh).chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _rnn_tanh_step(gx: Tensor, gh: Tensor, h: Tensor, c: Optional[Tensor]):
    return torch.tanh(gx + gh), None


def _rnn_relu_step(gx: Tensor, gh: Tensor, h: Tensor, c: Optional[Tensor]):
    return torch.relu(gx + gh), None


# One entry per kernel cell (brnnseg_kernels.cells): the reference the tests hold the kernels to.
STEPS = {"gru": _gru_step, "lstm": _lstm_step, "rnn_tanh": _rnn_tanh_step, "rnn_relu": _rnn_relu_step}


def _has_cell_state(cell: str) -> bool:
    from .cells import spec

    return spec(cell).has_cell_state


def _cell_step(cell: str, gx_t: Tensor, h: Tensor, c: Optional[Tensor], w_hh: Tensor, b_hh: Optional[Tensor]):
    """One step of the cell: gx_t = W_ih x_t + b_ih; returns (h, c)."""
    gh = h @ w_hh.t()
    if b_hh is not None:
        gh = gh + b_hh
    return STEPS[cell](gx_t, gh, h, c)


def _direction(cell: str, seq: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
               reverse: bool, h0: Optional[Tensor] = None, c0: Optional[Tensor] = None,
               lengths: Optional[Tensor] = None):
    """One direction over seq (lines, T, C). Line l runs over t < lengths[l] only (the reverse
    direction starts at lengths[l] - 1); its output is 0 beyond. Returns (out (lines, T, hid), h_n, c_n)."""
    lines, steps, _ = seq.shape
    hid = w_hh.shape[1]
    gx = seq @ w_ih.t()
    if b_ih is not None:
        gx = gx + b_ih
    h = h0 if h0 is not None else seq.new_zeros(lines, hid)
    c = (c0 if c0 is not None else seq.new_zeros(lines, hid)) if _has_cell_state(cell) else None
    out = [None] * steps
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        h_new, c_new = _cell_step(cell, gx[:, t], h, c, w_hh, b_hh)
        if lengths is None:
            h, c = h_new, c_new
            out[t] = h
        else:
            run = (t < lengths).to(seq.device).unsqueeze(1)
            h = torch.where(run, h_new, h)
            c = torch.where(run, c_new, c) if c is not None else None
            out[t] = torch.where(run, h_new, torch.zeros_like(h_new))
    return torch.stack(out, dim=1), h, c


def sweep(cell: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
          axis: int) -> Tensor:
    """Reference bidirectional sweep. Weights stacked per direction: w_ih (2, G*hid, C),
    w_hh (2, G*hid, hid), b_* (2, G*hid) or None. Returns (N, 2*hid, H, W)."""
    seq = _lines(x, axis)
    outs = [_direction(cell, seq, w_ih[d], w_hh[d], None if b_ih is None else b_ih[d],
                       None if b_hh is None else b_hh[d], reverse=bool(d))[0] for d in range(2)]
    return _unlines(torch.cat(outs, dim=-1), x.shape, axis)


def gru_sweep(x, w_ih, w_hh, b_ih=None, b_hh=None, axis=3):
    return sweep("gru", x, w_ih, w_hh, b_ih, b_hh, axis)


def lstm_sweep(x, w_ih, w_hh, b_ih=None, b_hh=None, axis=3):
    return sweep("lstm", x, w_ih, w_hh, b_ih, b_hh, axis)


def sequence(cell: str, x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor],
             h0: Optional[Tensor] = None, c0: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
             batch_first: bool = False):
    """Reference of the sequence ops (one layer, D = w_hh.shape[0] directions): x (T, B, C) or
    (B, T, C); h0/c0 (D, B, hid); lengths (B,). Returns (y, h_n, c_n) for cells with a cell state
    (LSTM), else (y, h_n)."""
    seq = x if batch_first else x.transpose(0, 1)
    res = [_direction(cell, seq, w_ih[d], w_hh[d], None if b_ih is None else b_ih[d],
                      None if b_hh is None else b_hh[d], bool(d), None if h0 is None else h0[d],
                      None if c0 is None else c0[d], lengths) for d in range(w_hh.shape[0])]
    y = torch.cat([r[0] for r in res], dim=-1)
    y = y if batch_first else y.transpose(0, 1)
    h_n = torch.stack([r[1] for r in res])
    return (y, h_n, torch.stack([r[2] for r in res])) if _has_cell_state(cell) else (y, h_n)


_AXIS = {"rows": 3, "cols": 2}


def renet(cell: str, x: Tensor, weights: dict, order: Tuple[str, str] = ("rows", "cols"),
          mode: str = "sequential") -> Tensor:
    """Reference ReNet block; ``weights[axis_name]`` = (w_ih, w_hh, b_ih, b_hh) stacked per direction."""
    if mode == "parallel":
        return torch.cat([sweep(cell, x, *weights[name], axis=_AXIS[name]) for name in order], dim=1)
    y = x
    for name in order:
        y = sweep(cell, y, *weights[name], axis=_AXIS[name])
    return y


class ReNetBaseline(nn.Module):
    """The ReNet block in plain PyTorch, as users write it today: permute + reshape to sequences,
    ``nn.GRU``/``nn.LSTM(bidirectional=True, batch_first=True)`` along the rows, then along the
    columns of the result. Parameter names match ``BiGRU2d``/``BiLSTM2d`` (``rows.*``, ``cols.*``)."""

    def __init__(self, in_channels: int, hidden_size: int, cell: str = "gru", bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        from .cells import family_of_cell

        fam = family_of_cell(cell)
        rnn = fam.torch_module
        kw = dict(batch_first=True, bidirectional=True, bias=bias, device=device, dtype=dtype)
        nl = fam.nonlinearity_of(cell)
        if nl is not None:
            kw["nonlinearity"] = nl
        self.rows = rnn(in_channels, hidden_size, **kw)
        self.cols = rnn(2 * hidden_size, hidden_size, **kw)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        seq = x.permute(0, 2, 3, 1).reshape(n * h, w, c)
        y, _ = self.rows(seq)                                   # (N*H, W, 2hid)
        f = y.shape[-1]
        y = y.reshape(n, h, w, f).permute(0, 2, 1, 3).reshape(n * w, h, f)
        y, _ = self.cols(y)                                     # (N*W, H, 2hid)
        return y.reshape(n, w, h, f).permute(0, 3, 2, 1)        # (N, 2hid, H, W)


# ----------------------------------------------------------------------------------------------
# Segmentation loss (weighted BCE + boundary weighting + Dice), the exact formula of
# brnnseg_kernels.losses, written with plain PyTorch ops.

def boundary_map(target: Tensor, radius: int, ignore_index=None, dtype: torch.dtype = torch.float64) -> Tensor:
    """1.0 where the clipped (2r+1)^d neighbourhood holds foreground (target > 0.5) and background
    (ignored pixels count as neither), else 0.0. target: (N, C, H, W) or (N, C, D, H, W)."""
    import torch.nn.functional as F

    t = target.to(dtype)
    valid = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != float(ignore_index)
    fg = ((t > 0.5) & valid).to(dtype)
    bg = ((t <= 0.5) & valid).to(dtype)
    pool = F.max_pool2d if t.dim() == 4 else F.max_pool3d
    k = 2 * radius + 1
    # max_pool pads with -inf, so windows are clipped at the border.
    return pool(fg, k, 1, radius) * pool(bg, k, 1, radius)


def seg_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, pos_weight=1.0,
             boundary_weight: float = 0.0, boundary_radius: int = 1, dice_weight: float = 1.0,
             bce_weight: float = 1.0, smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch_dice: bool = False,
             squared: bool = False, log_dice: bool = False, include_background: bool = True, channels=None,
             ignore_index=None, reduction: str = "mean", compute_dtype: torch.dtype = torch.float64) -> Tensor:
    """Reference of :func:`brnnseg_kernels.functional.bce_dice_loss` (see its docstring for the math),
    computed in ``compute_dtype`` (float64 for the tests; float32 where it serves as the unfused CUDA
    path, ``losses.unfused``). Nothing in it waits for a GPU unless ``channels`` is given."""
    import torch.nn.functional as F

    cd = compute_dtype
    n, c = logits.shape[:2]
    spatial = (1,) * (logits.dim() - 2)
    x = logits.to(cd)
    y = target.to(cd)
    valid = torch.ones_like(y, dtype=torch.bool) if ignore_index is None else y != float(ignore_index)
    y = torch.where(valid, y, torch.zeros_like(y))
    if isinstance(pos_weight, Tensor):
        pw = pos_weight.to(device=x.device, dtype=cd).expand(c).reshape(c, *spatial)
    else:  # a float: no host-to-device copy
        pw = x.new_full((c,) + spatial, float(pos_weight))
    m = 1.0 + boundary_weight * boundary_map(target, boundary_radius, ignore_index, cd) if boundary_weight else 1.0
    if weight is not None:
        m = m * weight.to(cd)
    bce = F.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction="none") * m
    vf = valid.to(cd)
    dims = tuple(range(2, x.dim()))
    s_bce = (bce * vf).sum(dims)
    count = vf.sum(dims)
    p = torch.sigmoid(x) * vf
    inter = (p * y).sum(dims)
    psum = (p * p if squared else p).sum(dims)
    ysum = (y * y if squared else y).sum(dims)
    if batch_dice:
        inter, psum, ysum = inter.sum(0), psum.sum(0), ysum.sum(0)
    den = psum + ysum + smooth_dr
    score = torch.where(den > 0, (2 * inter + smooth_nr) / torch.where(den > 0, den, torch.ones_like(den)),
                        torch.ones_like(den))
    dice = -torch.log(score.clamp_min(1e-7)) if log_dice else 1 - score
    sel = torch.ones(c, dtype=cd, device=x.device)
    if channels is not None:
        sel = torch.zeros_like(sel)
        sel[list(channels)] = 1.0
    elif not include_background and c > 1:
        sel = (torch.arange(c, device=x.device) >= 1).to(cd)
    if reduction == "none":
        dice_nc = (dice * sel).expand(n, c)
        return (bce_weight * s_bce / count.clamp_min(1) + dice_weight * dice_nc).to(logits.dtype)
    if reduction == "sum":
        total = bce_weight * s_bce.sum() + dice_weight * (dice * sel).sum()
    else:
        n_sel = (sel.sum() * (1 if batch_dice else n)).clamp_min(1)
        total = bce_weight * s_bce.sum() / count.sum().clamp_min(1) + dice_weight * (dice * sel).sum() / n_sel
    return total.to(logits.dtype)


def unfused_bce_dice(logits: Tensor, target: Tensor, pos_weight: float = 10.0, boundary_weight: float = 2.0,
                     radius: int = 1, smooth: float = 1e-5) -> Tensor:
    """The unfused composition users write today (the loss benchmark's baseline): the boundary map
    from two max_pool2d calls, ``binary_cross_entropy_with_logits(weight=..., pos_weight=...)``,
    plus soft Dice from ``sigmoid`` and sums."""
    import torch.nn.functional as F

    k = 2 * radius + 1
    y = target.to(logits.dtype)
    fg = F.max_pool2d(y, k, 1, radius)
    bg = F.max_pool2d(1 - y, k, 1, radius)
    bmap = 1 + boundary_weight * fg * bg
    pw = torch.full((logits.shape[1], 1, 1), pos_weight, dtype=logits.dtype, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, y, weight=bmap, pos_weight=pw)
    p = torch.sigmoid(logits)
    inter = (p * y).sum((2, 3))
    dice = 1 - (2 * inter + smooth) / (p.sum((2, 3)) + y.sum((2, 3)) + smooth)
    return bce + dice.mean()


# ----------------------------------------------------------------------------------------------
# Multi-class loss (softmax cross-entropy + boundary weighting + softmax Dice), the exact formula of
# brnnseg_kernels.losses.ce_dice, written with plain PyTorch ops.

def label_boundary_map(labels: Tensor, radius: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """1.0 where the clipped (2r+1)^d neighbourhood of a pixel holds more than one label, else 0.0.
    labels: (N, H, W) or (N, D, H, W) integers, -1 for ignored pixels (which count as no label)."""
    import torch.nn.functional as F

    lab = labels.to(dtype).unsqueeze(1)
    pool = F.max_pool2d if lab.dim() == 4 else F.max_pool3d
    k = 2 * radius + 1
    big = float(2 ** 31)
    hi = pool(lab, k, 1, radius)                                         # ignored are -1: never the max
    lo = -pool(-torch.where(lab < 0, torch.full_like(lab, big), lab), k, 1, radius)
    return ((hi >= 0) & (hi != lo)).to(dtype).squeeze(1)


def ce_dice_targets(logits: Tensor, target: Tensor, ignore_index: int = -100):
    """(y one-hot or soft (N, C, ...) in logits' dtype with ignored pixels zeroed, labels (N, ...) long
    with -1 where ignored, valid (N, ...) bool, is_index, bad (N, ...) bool: labels outside [0, C) that
    are not ignore_index, or None). No one_hot and no gather: nothing waits for a GPU, and a bad label
    cannot index out of bounds (the loss is NaN where one is, as the fused CUDA op's)."""
    c = logits.shape[1]
    if target.dim() == logits.dim() and target.shape[1] == 1 and not target.is_floating_point():
        target = target[:, 0]
    if target.dim() == logits.dim() - 1:
        valid = target != ignore_index
        bad = valid & ((target < 0) | (target >= c))
        valid = valid & ~bad
        lab = torch.where(valid, target.long(), torch.full_like(target, -1, dtype=torch.long))
        classes = torch.arange(c, device=target.device).view((1, c) + (1,) * (target.dim() - 1))
        y = (lab.unsqueeze(1) == classes).to(logits.dtype)
        return y, lab, valid, True, bad
    y = target.to(logits.dtype)
    return y, y.argmax(1), torch.ones_like(y[:, 0], dtype=torch.bool), False, None


def ce_dice_loss(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None, class_weights=None,
                 ignore_index: int = -100, label_smoothing: float = 0.0, boundary_weight: float = 0.0,
                 boundary_radius: int = 1, lambda_ce: float = 1.0, lambda_dice: float = 1.0, smooth_nr: float = 1e-5,
                 smooth_dr: float = 1e-5, batch: bool = False, squared: bool = False, log_dice: bool = False,
                 include_background: bool = True, average: str = "present", reduction: str = "mean",
                 compute_dtype: torch.dtype = torch.float64) -> Tensor:
    """Reference of :func:`brnnseg_kernels.functional.ce_dice_loss` (see its docstring for the math),
    computed in ``compute_dtype`` (float64 for the tests; float32 where it serves as the unfused CUDA
    path, ``losses.unfused``)."""
    cd = compute_dtype
    x = logits.to(cd)
    n, c = x.shape[:2]
    y, lab, valid, is_index, bad = ce_dice_targets(x, target, ignore_index)
    logp = torch.log_softmax(x, 1)
    p = logp.exp()
    view = (1, c) + (1,) * (x.dim() - 2)
    w = (torch.ones(c, dtype=cd, device=x.device) if class_weights is None
         else torch.as_tensor(class_weights, dtype=cd, device=x.device))
    eps = float(label_smoothing)
    if is_index:
        lab0 = lab.clamp_min(0)
        wy = w[lab0]
        nll = -logp.gather(1, lab0.unsqueeze(1)).squeeze(1)
        ce = (1 - eps) * wy * nll
        if eps:  # (without smoothing, a -inf logit of another class must not turn 0 * inf into NaN)
            ce = ce - eps / c * (logp * w.view(view)).sum(1)
        ce = torch.where(bad, torch.full_like(ce, float("nan")), ce)  # NaN * 0 below stays NaN
        norm = wy
    else:
        t = y * (1 - eps) + eps / c
        ce = -(w.view(view) * t * logp).sum(1)
        norm = torch.ones_like(ce)
    m = torch.ones_like(ce)
    if boundary_weight:
        m = m + boundary_weight * label_boundary_map(lab, boundary_radius, cd)
    if weight is not None:
        m = m * weight.to(cd)
    vf = valid.to(cd)
    sp = tuple(range(1, ce.dim()))
    ce_num = (ce * m * vf).sum(sp)
    ce_den = (norm * vf).sum(sp)
    dims = tuple(range(2, x.dim()))
    pv = p * vf.unsqueeze(1)
    inter = (pv * y).sum(dims)
    psum = (pv * pv if squared else pv).sum(dims)
    ysum = (y * y if squared else y).sum(dims)
    if batch:
        inter, psum, ysum = inter.sum(0, keepdim=True), psum.sum(0, keepdim=True), ysum.sum(0, keepdim=True)
    den = psum + ysum + smooth_dr
    score = torch.where(den > 0, (2 * inter + smooth_nr) / torch.where(den > 0, den, torch.ones_like(den)),
                        torch.ones_like(den))
    dice = -torch.log(score.clamp_min(1e-7)) if log_dice else 1 - score
    sel = torch.ones_like(dice)
    if not include_background and c > 1:
        sel[:, 0] = 0
    if average == "present":
        sel = sel * ((y.sum(dims).sum(0, keepdim=True) if batch else y.sum(dims)) > 0)
    if reduction == "none":
        per = (dice * sel).sum(1) / sel.sum(1).clamp_min(1)
        return (lambda_ce * ce_num / ce_den.clamp_min(1e-12) + lambda_dice * per.expand(n)).to(logits.dtype)
    if reduction == "sum":
        return (lambda_ce * ce_num.sum() + lambda_dice * (dice * sel).sum()).to(logits.dtype)
    total = lambda_ce * ce_num.sum() / ce_den.sum().clamp_min(1e-12) + \
        lambda_dice * (dice * sel).sum() / sel.sum().clamp_min(1)
    return total.to(logits.dtype)


def _boundary_weighted_ce(logits: Tensor, target: Tensor, boundary_weight: float, radius: int) -> Tensor:
    """mean of cross_entropy(reduction="none") x (1 + boundary_weight x [the max-pooled label map differs
    from the min-pooled one]): the CE term of both unfused multi-class compositions."""
    import torch.nn.functional as F

    k = 2 * radius + 1
    lab = target.unsqueeze(1).to(logits.dtype)
    hi = F.max_pool2d(lab, k, 1, radius)
    lo = -F.max_pool2d(-lab, k, 1, radius)
    bmap = 1 + boundary_weight * (hi != lo).squeeze(1).to(logits.dtype)
    return (F.cross_entropy(logits, target, reduction="none") * bmap).mean()


def unfused_ce_dice(logits: Tensor, target: Tensor, boundary_weight: float = 2.0, radius: int = 1,
                    smooth: float = 1e-5) -> Tensor:
    """The unfused composition users write today for an integer label map (the multi-class loss
    benchmark's baseline): a boundary map from max-pooled labels, ``cross_entropy(reduction="none")``
    weighted by it, plus softmax Dice from one_hot and sums."""
    import torch.nn.functional as F

    c = logits.shape[1]
    ce = _boundary_weighted_ce(logits, target, boundary_weight, radius)
    p = torch.softmax(logits, 1)
    y = F.one_hot(target, c).movedim(-1, 1).to(logits.dtype)
    inter = (p * y).sum((2, 3))
    dice = 1 - (2 * inter + smooth) / (p.sum((2, 3)) + y.sum((2, 3)) + smooth)
    return ce + dice.mean()


def unfused_ce_monai_dice(logits: Tensor, target: Tensor, boundary_weight: float = 2.0, radius: int = 1) -> Tensor:
    """The same composition with MONAI's Dice, as MONAI users write it: ``cross_entropy`` weighted by the
    max-pooled label boundary map, plus ``monai.losses.DiceLoss(softmax=True, to_onehot_y=True)`` (Dice
    averaged over every class and sample, smooth 1e-5). Needs MONAI installed."""
    from monai.losses import DiceLoss

    ce = _boundary_weighted_ce(logits, target, boundary_weight, radius)
    return ce + DiceLoss(softmax=True, to_onehot_y=True)(logits, target.unsqueeze(1))
