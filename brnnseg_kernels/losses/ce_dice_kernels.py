"""Triton kernels of the fused multi-class loss: the CUDA implementation of ``brnnseg::ce_dice_sums`` and
its backward (the CPU implementation is C++, csrc/cpu/ce_dice_cpu.cpp; the math is in ce_dice.py and the
C++ file's comment).

One program per (sample, tile of BLOCK pixels) loads the tile's logits as a [C_PAD, BLOCK] block (C_PAD:
the class count rounded up to a power of two, padded classes masked to -inf), takes the softmax over the
class axis, and
  * forward: writes its partial sums -- per class [sum p*y, sum p (p^2), sum y (y^2)], and [sum m*ce,
    sum norm] -- which the launcher adds in a fixed order (deterministic, no atomics);
  * backward: writes dx = v * (g_ce * m * (p * sum_c coef_c - coef) + p * (a - sum_c a_c p_c)).
The boundary test loads the label map at each of the (2r+1)^d shifts (integer targets: the target itself;
soft targets: its argmax, computed by the launcher) and compares the smallest and largest label seen.

Tests run these under TRITON_INTERPRET=1 on CPU tensors (tests/test_ce_dice_loss.py); every variant
family compiles ahead of time for sm_80/sm_90 (brnnseg_kernels/losses/_aot.py)."""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from ._kernels import _split  # float options as float32 (hi, lo) pairs
from .ce_dice import _sums_dtype


@triton.jit
def _ce_tile(x_ptr, t_ptr, lab_ptr, w_ptr, cw_ptr, C, P, D, H, W, n_tiles, bw_hi, bw_lo, ls_hi, ls_lo, ignore_index,
             INDEX: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_IGNORE: tl.constexpr,
             USE_BOUNDARY: tl.constexpr, BOUNDARY_RADIUS: tl.constexpr, BOUNDARY_RADIUS_Z: tl.constexpr,
             ACC: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """The tile's softmax, targets and per-pixel terms. boundary_weight and label_smoothing each come as a
    float32 pair (hi, lo) whose sum is the Python float (a float argument reaches a kernel as float32; a
    tensor of them would be a host-to-device copy, which waits). Labels outside [0, C) that are not
    ignore_index are counted in `bad` and count nowhere else (never read through)."""
    boundary_weight = tl.zeros((), ACC) + bw_hi + bw_lo
    label_smoothing = tl.zeros((), ACC) + ls_hi + ls_lo
    pid = tl.program_id(0)
    n = pid // n_tiles
    tile = pid % n_tiles
    pix = tile * BLOCK + tl.arange(0, BLOCK)
    cls = tl.arange(0, C_PAD)
    inb = pix < P
    cok = cls < C
    m2 = cok[:, None] & inb[None, :]
    base = n.to(tl.int64) * C * P
    xoff = base + cls[:, None].to(tl.int64) * P + pix[None, :]
    x = tl.load(x_ptr + xoff, mask=m2, other=float("-inf")).to(ACC)
    mx = tl.max(x, axis=0)
    mx = tl.where(inb, mx, 0.0)
    e = tl.where(m2, tl.exp(x - mx[None, :]), 0.0)
    se = tl.sum(e, axis=0)
    se = tl.where(inb, se, 1.0)
    lse = mx + tl.log(se)
    logp = tl.where(m2, x - lse[None, :], 0.0)
    p = tl.where(m2, e / se[None, :], 0.0)
    if INDEX:
        lab = tl.load(t_ptr + n.to(tl.int64) * P + pix, mask=inb, other=0).to(tl.int32)
        valid = inb
        if HAS_IGNORE:
            valid = valid & (lab != ignore_index)
        bad = valid & ((lab < 0) | (lab >= C))
        valid = valid & ~bad
        y = ((cls[:, None] == lab[None, :]) & valid[None, :] & cok[:, None]).to(ACC)
        norm = tl.load(cw_ptr + tl.where(valid, lab, 0), mask=valid, other=0.0).to(ACC)
    else:
        valid = inb
        bad = inb & False
        y = tl.load(t_ptr + xoff, mask=m2, other=0.0).to(ACC)
        norm = valid.to(ACC)
    vf = valid.to(ACC)
    cw = tl.load(cw_ptr + cls, mask=cok, other=0.0).to(ACC)
    coef = cw[:, None] * ((1.0 - label_smoothing) * y + label_smoothing / C) * m2.to(ACC)
    m = tl.full((BLOCK,), 1.0, ACC)
    if USE_BOUNDARY:
        hw = H * W
        d = pix // hw
        h = (pix // W) % H
        w = pix % W
        lo = tl.full((BLOCK,), 2147483647, tl.int32)
        hi = tl.full((BLOCK,), -1, tl.int32)
        lbase = n.to(tl.int64) * P
        for kz in tl.static_range(2 * BOUNDARY_RADIUS_Z + 1):
            dd = d + kz - BOUNDARY_RADIUS_Z
            for ky in tl.static_range(2 * BOUNDARY_RADIUS + 1):
                hh = h + ky - BOUNDARY_RADIUS
                for kx in tl.static_range(2 * BOUNDARY_RADIUS + 1):
                    ww = w + kx - BOUNDARY_RADIUS
                    ok = inb & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W) & (dd >= 0) & (dd < D)
                    v = tl.load(lab_ptr + lbase + (dd * H + hh) * W + ww, mask=ok, other=0).to(tl.int32)
                    if HAS_IGNORE:
                        ok = ok & (v != ignore_index)
                    hi = tl.where(ok, tl.maximum(hi, v), hi)
                    lo = tl.where(ok, tl.minimum(lo, v), lo)
        m = 1.0 + boundary_weight * ((hi >= 0) & (lo != hi)).to(ACC)
    if HAS_WEIGHT:
        m = m * tl.load(w_ptr + n.to(tl.int64) * P + pix, mask=inb, other=0.0).to(ACC)
    return n, tile, cls, cok, inb, xoff, m2, logp, p, y, vf, norm, coef, m, bad


@triton.jit
def _ce_dice_fwd_kernel(x_ptr, t_ptr, lab_ptr, w_ptr, cw_ptr, part_ptr, C, P, D, H, W, n_tiles, bw_hi, bw_lo,
                        ls_hi, ls_lo, ignore_index, INDEX: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                        HAS_IGNORE: tl.constexpr, USE_BOUNDARY: tl.constexpr, SQUARED: tl.constexpr,
                        BOUNDARY_RADIUS: tl.constexpr, BOUNDARY_RADIUS_Z: tl.constexpr, ACC: tl.constexpr,
                        C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    n, tile, cls, cok, inb, xoff, m2, logp, p, y, vf, norm, coef, m, bad = _ce_tile(
        x_ptr, t_ptr, lab_ptr, w_ptr, cw_ptr, C, P, D, H, W, n_tiles, bw_hi, bw_lo, ls_hi, ls_lo, ignore_index, INDEX,
        HAS_WEIGHT, HAS_IGNORE, USE_BOUNDARY, BOUNDARY_RADIUS, BOUNDARY_RADIUS_Z, ACC, C_PAD, BLOCK)
    pv = p * vf[None, :]
    yv = y * vf[None, :]
    if SQUARED:
        ps = pv * p
        ys = yv * yv
    else:
        ps = pv
        ys = yv
    ce = tl.sum(tl.where(coef != 0.0, coef * (-logp), 0.0), axis=0)  # 0 * inf (a -inf logit) counts 0
    out = part_ptr + (n.to(tl.int64) * n_tiles + tile) * (3 * C + 3)
    tl.store(out + cls * 3 + 0, tl.sum(pv * yv, axis=1), mask=cok)
    tl.store(out + cls * 3 + 1, tl.sum(ps, axis=1), mask=cok)
    tl.store(out + cls * 3 + 2, tl.sum(ys, axis=1), mask=cok)
    tl.store(out + 3 * C, tl.sum(vf * m * ce, axis=0))
    tl.store(out + 3 * C + 1, tl.sum(vf * norm, axis=0))
    tl.store(out + 3 * C + 2, tl.sum(bad.to(ACC), axis=0))


@triton.jit
def _ce_dice_bwd_kernel(go_ptr, fac_ptr, x_ptr, t_ptr, lab_ptr, w_ptr, cw_ptr, dx_ptr, N, C, P, D, H, W, n_tiles,
                        bw_hi, bw_lo, ls_hi, ls_lo, ignore_index, GO_MODE: tl.constexpr, INDEX: tl.constexpr,
                        HAS_WEIGHT: tl.constexpr, HAS_IGNORE: tl.constexpr, USE_BOUNDARY: tl.constexpr,
                        SQUARED: tl.constexpr, BOUNDARY_RADIUS: tl.constexpr, BOUNDARY_RADIUS_Z: tl.constexpr,
                        ACC: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """dx of go * loss, the loss's derivative in its sums given by the forward's factors: fac =
    [f_inter, f_psum] per (n, c) (2*N*C), f_ce per n (N), then the scale of every f_ce. GO_MODE: 0 the loss
    is a scalar; 1 it is (N,); 2 it is (N,) with batch Dice (go summed over the batch for Dice)."""
    n, tile, cls, cok, inb, xoff, m2, logp, p, y, vf, norm, coef, m, bad = _ce_tile(
        x_ptr, t_ptr, lab_ptr, w_ptr, cw_ptr, C, P, D, H, W, n_tiles, bw_hi, bw_lo, ls_hi, ls_lo, ignore_index, INDEX,
        HAS_WEIGHT, HAS_IGNORE, USE_BOUNDARY, BOUNDARY_RADIUS, BOUNDARY_RADIUS_Z, ACC, C_PAD, BLOCK)
    if GO_MODE == 0:
        go = tl.load(go_ptr).to(ACC)
        go_dice = go
    else:
        go = tl.load(go_ptr + n).to(ACC)
        go_dice = go
        if GO_MODE == 2:
            go_dice = tl.load(go_ptr).to(ACC)
            for i in range(1, N):
                go_dice += tl.load(go_ptr + i).to(ACC)
    nc2 = N * C * 2
    f = fac_ptr + n.to(tl.int64) * C * 2 + cls * 2
    g_inter = go_dice * tl.load(f + 0, mask=cok, other=0.0).to(ACC)
    g_psum = go_dice * tl.load(f + 1, mask=cok, other=0.0).to(ACC)
    g_ce = go * tl.load(fac_ptr + nc2 + n).to(ACC) * tl.load(fac_ptr + nc2 + N).to(ACC)
    yv = y * vf[None, :]
    if SQUARED:
        a = g_inter[:, None] * yv + g_psum[:, None] * 2.0 * p
    else:
        a = g_inter[:, None] * yv + g_psum[:, None]
    ap = tl.sum(a * p, axis=0)
    s = tl.sum(coef, axis=0)
    dx = vf[None, :] * (g_ce * m[None, :] * (p * s[None, :] - coef) + p * (a - ap[None, :]))
    tl.store(dx_ptr + xoff, dx.to(dx_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _ce_row(sums_ptr, r, cs, cok, N, K, BATCH: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr):
    """Dice sums (inter, psum, ysum) of row r (a sample; the whole batch with BATCH) for classes cs. (sums
    holds N * (3C+3) values: int32 offsets.)"""
    if BATCH:
        inter = tl.zeros((BLOCK_C,), ACC)
        psum = tl.zeros((BLOCK_C,), ACC)
        ysum = tl.zeros((BLOCK_C,), ACC)
        for i in range(0, N):
            row = sums_ptr + i * K + cs * 3
            inter += tl.load(row + 0, mask=cok, other=0.0)
            psum += tl.load(row + 1, mask=cok, other=0.0)
            ysum += tl.load(row + 2, mask=cok, other=0.0)
    else:
        row = sums_ptr + r * K + cs * 3
        inter = tl.load(row + 0, mask=cok, other=0.0)
        psum = tl.load(row + 1, mask=cok, other=0.0)
        ysum = tl.load(row + 2, mask=cok, other=0.0)
    return inter, psum, ysum


@triton.jit
def _ce_sel(ysum, cs, cok, PRESENT: tl.constexpr, NO_BACKGROUND: tl.constexpr):
    sel = cok
    if PRESENT:
        sel = sel & (ysum > 0)
    if NO_BACKGROUND:
        sel = sel & (cs > 0)
    return sel


@triton.jit
def _ce_dice_finish_kernel(part_ptr, sums_ptr, out_ptr, fac_ptr, N, C, T, lce_hi, lce_lo, ldice_hi, ldice_lo,
                           snr_hi, snr_lo, sdr_hi, sdr_lo, BATCH: tl.constexpr, LOG_DICE: tl.constexpr,
                           PRESENT: tl.constexpr, NO_BACKGROUND: tl.constexpr, REDUCTION: tl.constexpr,
                           ACC: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    """One program: the tiles' partial sums (N, T, 3C+3) summed in a fixed order into sums (N, 3C+3); the
    loss (REDUCTION 0 none: (N,); 1 sum; 2 mean) into out; the factors of its derivative (see
    _ce_dice_bwd_kernel) into fac. A label outside [0, C) anywhere makes the loss NaN (its gradient too)."""
    lambda_ce = tl.zeros((), ACC) + lce_hi + lce_lo
    lambda_dice = tl.zeros((), ACC) + ldice_hi + ldice_lo
    smooth_nr = tl.zeros((), ACC) + snr_hi + snr_lo
    smooth_dr = tl.zeros((), ACC) + sdr_hi + sdr_lo
    K = 3 * C + 3
    # 1. sums over tiles, fixed order
    for n in range(0, N):
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            acc = tl.zeros((BLOCK_T, BLOCK_K), ACC)
            for t0 in range(0, T, BLOCK_T):
                ts = t0 + tl.arange(0, BLOCK_T)
                msk = (ts < T)[:, None] & (ks < K)[None, :]
                acc += tl.load(part_ptr + (ts[:, None].to(tl.int64) + n * T) * K + ks[None, :], mask=msk, other=0.0)
            tl.store(sums_ptr + n * K + ks, tl.sum(acc, axis=0), mask=ks < K)
    tl.debug_barrier()  # the sums stored above are read below, by other threads
    # 2. cross-entropy: totals, and f_ce
    tot_num = tl.zeros((), ACC)
    tot_den = tl.zeros((), ACC)
    tot_bad = tl.zeros((), ACC)
    for n0 in range(0, N, BLOCK_C):
        ns = n0 + tl.arange(0, BLOCK_C)
        nok = ns < N
        row = sums_ptr + ns.to(tl.int64) * K + 3 * C
        num = tl.load(row + 0, mask=nok, other=0.0)
        den = tl.load(row + 1, mask=nok, other=0.0)
        tot_num += tl.sum(num, axis=0)
        tot_den += tl.sum(den, axis=0)
        tot_bad += tl.sum(tl.load(row + 2, mask=nok, other=0.0), axis=0)
        if REDUCTION == 0:
            tl.store(fac_ptr + 2 * N * C + ns, lambda_ce / tl.maximum(den, 1e-12), mask=nok)
        else:
            tl.store(fac_ptr + 2 * N * C + ns, tl.zeros((BLOCK_C,), ACC) + lambda_ce, mask=nok)
    # 3. Dice: the pairs averaged over (selected), then each row's Dice and factors
    ROWS = N
    if BATCH:
        ROWS = 1
    tot_sel = tl.zeros((), ACC)
    for r in range(0, ROWS):
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            cok = cs < C
            inter, psum, ysum = _ce_row(sums_ptr, r, cs, cok, N, K, BATCH, ACC, BLOCK_C)
            tot_sel += tl.sum(_ce_sel(ysum, cs, cok, PRESENT, NO_BACKGROUND).to(ACC), axis=0)
    tot_dice = tl.zeros((), ACC)
    for r in range(0, ROWS):
        row_sel = tl.zeros((), ACC)
        if REDUCTION == 0:
            for c0 in range(0, C, BLOCK_C):
                cs = c0 + tl.arange(0, BLOCK_C)
                cok = cs < C
                inter, psum, ysum = _ce_row(sums_ptr, r, cs, cok, N, K, BATCH, ACC, BLOCK_C)
                row_sel += tl.sum(_ce_sel(ysum, cs, cok, PRESENT, NO_BACKGROUND).to(ACC), axis=0)
            w = lambda_dice / tl.maximum(row_sel, 1.0)
        elif REDUCTION == 1:
            w = lambda_dice
        else:
            w = lambda_dice / tl.maximum(tot_sel, 1.0)
        row_dice = tl.zeros((), ACC)
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            cok = cs < C
            inter, psum, ysum = _ce_row(sums_ptr, r, cs, cok, N, K, BATCH, ACC, BLOCK_C)
            sel = _ce_sel(ysum, cs, cok, PRESENT, NO_BACKGROUND).to(ACC)
            den = psum + ysum + smooth_dr
            z = (den == 0).to(ACC)  # 0/0 scores 1
            safe = den + z
            num = 2.0 * inter + smooth_nr + z
            score = num / safe
            if LOG_DICE:
                eps = tl.full((), 1e-7, ACC)  # a bare literal would be float32's 1e-7
                clamped = tl.maximum(score, eps)
                dice = -tl.log(clamped)
                dd = tl.where(score >= eps, -1.0 / clamped, 0.0)
            else:
                dice = 1.0 - score
                dd = tl.full((BLOCK_C,), -1.0, ACC)
            row_dice += tl.sum(sel * dice, axis=0)
            f_inter = w * sel * dd * 2.0 / safe
            f_psum = -w * sel * dd * num / (safe * safe)
            if BATCH:
                for i in range(0, N):
                    tl.store(fac_ptr + (i * C + cs) * 2, f_inter, mask=cok)
                    tl.store(fac_ptr + (i * C + cs) * 2 + 1, f_psum, mask=cok)
            else:
                tl.store(fac_ptr + (r * C + cs) * 2, f_inter, mask=cok)
                tl.store(fac_ptr + (r * C + cs) * 2 + 1, f_psum, mask=cok)
        tot_dice += row_dice
        if REDUCTION == 0:
            r0 = r
            r1 = r + 1
            if BATCH:  # one Dice row shared by every sample
                r0 = 0
                r1 = N
            for n in range(r0, r1):
                row = sums_ptr + n * K + 3 * C
                val = lambda_ce * tl.load(row) / tl.maximum(tl.load(row + 1), 1e-12) + w * row_dice
                val = tl.where(tot_bad > 0, float("nan"), val)
                tl.store(out_ptr + n, val.to(out_ptr.dtype.element_ty))
    if REDUCTION == 2:
        scale = 1.0 / tl.maximum(tot_den, 1e-12)
        total = lambda_ce * tot_num * scale + lambda_dice * tot_dice / tl.maximum(tot_sel, 1.0)
    else:
        scale = tl.full((), 1.0, ACC)
        total = lambda_ce * tot_num + lambda_dice * tot_dice
    tl.store(fac_ptr + 2 * N * C + N, tl.where(tot_bad > 0, float("nan"), scale))
    if REDUCTION != 0:
        tl.store(out_ptr, tl.where(tot_bad > 0, float("nan"), total).to(out_ptr.dtype.element_ty))


MAX_GRID_X = 2**31 - 1
NUM_WARPS = 4


def tile_shape(c: int, dtype: torch.dtype = torch.float32):
    """(C_PAD, BLOCK): classes rounded up to a power of two, and pixels per program so that a tile holds
    about 1024 logits (512 in float64) over 4 warps -- 8 per thread in each of the few [C_PAD, BLOCK]
    arrays the kernels keep, which compiles without spills (brnnseg_kernels/losses/_aot.py)."""
    c_pad = max(2, triton.next_power_of_2(c))
    logits = 512 if dtype == torch.float64 else 1024
    return c_pad, max(4, logits // c_pad)


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


@functools.lru_cache(maxsize=32)
def _ones(c: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Unit class weights, made once per (C, dtype, device) (read only)."""
    return torch.ones(c, dtype=dtype, device=device)


def check_labels(op: str, t: torch.Tensor, c: int, ignore_index) -> None:
    """Raises a ValueError naming the first label outside [0, C) that is not ignore_index. Reading the
    answer waits for the device: the loss op runs it on CPU tensors, or on CUDA where
    BRNNSEG_CHECK_LABELS=1; elsewhere the kernels count such labels and the loss comes out NaN."""
    bad = (t < 0) | (t >= c)
    if ignore_index is not None:
        bad &= t != ignore_index
    if bool(bad.any()):
        raise ValueError(f"{op}: target holds the label {int(t[bad].flatten()[0])}, outside [0, {c}) and not "
                         f"ignore_index ({ignore_index})")


def host_checks_labels(device: torch.device) -> bool:
    """Whether the loss op checks the labels on the host: for CPU tensors (no wait there), and on CUDA only
    with BRNNSEG_CHECK_LABELS=1."""
    return device.type == "cpu" or os.environ.get("BRNNSEG_CHECK_LABELS", "0") == "1"


def _prepare(op, logits, target, weight, class_weights, boundary_weight, ignore_index, check=True):
    x = logits.contiguous()
    n, c = x.shape[:2]
    index = target.dim() == x.dim() - 1
    t = target.contiguous()
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    if index:
        if check:
            check_labels(op, t, c, ignore_index)
    elif tuple(t.shape) != tuple(x.shape):
        raise ValueError(f"{op}: target must be (N, *spatial) labels or have the shape of logits {tuple(x.shape)}, "
                         f"got {tuple(t.shape)}")
    acc = _sums_dtype(x)
    cw = (class_weights.to(acc) if class_weights is not None else _ones(c, acc, x.device)).contiguous()
    w = weight.to(acc).contiguous() if weight is not None else x
    lab = t if index else (t.argmax(1).to(torch.int32).contiguous() if boundary_weight != 0 else t)
    p = 1
    for s in x.shape[2:]:
        p *= s
    d, h, wd = (1,) + tuple(x.shape[2:]) if x.dim() == 4 else tuple(x.shape[2:])
    return x, t, lab, w, cw, index, n, c, p, d, h, wd


def _flags(x, index, weight, boundary_weight, boundary_radius, ignore_index, squared, c):
    c_pad, block = tile_shape(c, x.dtype)
    return dict(INDEX=index, HAS_WEIGHT=weight is not None, HAS_IGNORE=index and ignore_index is not None,
                USE_BOUNDARY=boundary_weight != 0, SQUARED=bool(squared), BOUNDARY_RADIUS=int(boundary_radius),
                BOUNDARY_RADIUS_Z=int(boundary_radius) if x.dim() == 5 else 0, ACC=_acc(x.dtype), C_PAD=c_pad,
                BLOCK=block)


def _grid(op, n, p, block):
    n_tiles = triton.cdiv(p, block)
    if n * n_tiles > MAX_GRID_X:
        raise ValueError(f"{op}: the logits need {n * n_tiles} tiles, more than a GPU grid's {MAX_GRID_X}")
    return n_tiles, (max(1, n * n_tiles),)


def _partial_sums(op, prepared, weight, boundary_weight, boundary_radius, ignore_index, label_smoothing, squared):
    """The forward pixel kernel: partial sums (N, n_tiles, 3C+3), one row per tile."""
    x, t, lab, w, cw, index, n, c, p, d, h, wd = prepared
    flags = _flags(x, index, weight, boundary_weight, boundary_radius, ignore_index, squared, c)
    n_tiles, grid = _grid(op, n, p, flags["BLOCK"])
    partial = torch.empty((n, n_tiles, 3 * c + 3), dtype=_sums_dtype(x), device=x.device)
    if x.numel():
        _ce_dice_fwd_kernel[grid](x, t, lab, w, cw, partial, c, p, d, h, wd, n_tiles, *_split(boundary_weight),
                                  *_split(label_smoothing), int(ignore_index) if ignore_index is not None else 0,
                                  **flags, num_warps=NUM_WARPS)
    return partial


def _backward(op, go, fac, go_mode, prepared, weight, boundary_weight, boundary_radius, ignore_index, label_smoothing,
              squared):
    x, t, lab, w, cw, index, n, c, p, d, h, wd = prepared
    flags = _flags(x, index, weight, boundary_weight, boundary_radius, ignore_index, squared, c)
    n_tiles, grid = _grid(op, n, p, flags["BLOCK"])
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel():
        _ce_dice_bwd_kernel[grid](go, fac, x, t, lab, w, cw, dx, n, c, p, d, h, wd, n_tiles, *_split(boundary_weight),
                                  *_split(label_smoothing), int(ignore_index) if ignore_index is not None else 0,
                                  GO_MODE=go_mode, **flags, num_warps=NUM_WARPS)
    return dx


def ce_dice_sums_triton(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                        class_weights: Optional[torch.Tensor], boundary_weight: float, boundary_radius: int,
                        ignore_index: Optional[int], label_smoothing: float, squared: bool):
    """Forward launcher of ce_dice_sums: (dice_sums (N, C, 3), ce_sums (N, 2)), float64 for float64
    logits, else float32."""
    op = "ce_dice_sums"
    prepared = _prepare(op, logits, target, weight, class_weights, boundary_weight, ignore_index)
    n, c = prepared[6], prepared[7]
    sums = _partial_sums(op, prepared, weight, boundary_weight, boundary_radius, ignore_index, label_smoothing,
                         squared).sum(1)  # fixed order: deterministic
    return sums[:, :3 * c].reshape(n, c, 3).contiguous(), sums[:, 3 * c:3 * c + 2].contiguous()


def ce_dice_sums_backward_triton(grad_dice: torch.Tensor, grad_ce: torch.Tensor, logits: torch.Tensor,
                                 target: torch.Tensor, weight: Optional[torch.Tensor],
                                 class_weights: Optional[torch.Tensor], boundary_weight: float, boundary_radius: int,
                                 ignore_index: Optional[int], label_smoothing: float, squared: bool) -> torch.Tensor:
    """Backward launcher of ce_dice_sums: the gradient of sum(grad_dice * dice_sums) + sum(grad_ce * ce_sums)
    (the sums of y and of the class weights do not depend on the logits)."""
    op = "ce_dice_sums_backward"
    prepared = _prepare(op, logits, target, weight, class_weights, boundary_weight, ignore_index)
    acc = _sums_dtype(prepared[0])
    one = torch.ones(1, dtype=acc, device=logits.device)
    fac = torch.cat([grad_dice.to(acc)[..., :2].reshape(-1), grad_ce.to(acc)[:, 0], one])
    return _backward(op, one, fac, 0, prepared, weight, boundary_weight, boundary_radius, ignore_index,
                     label_smoothing, squared)


REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}
FINISH_BLOCK = (32, 32, 128)  # (BLOCK_T, BLOCK_K, BLOCK_C) of the finish kernel


def ce_dice_loss_triton(logits, target, weight, class_weights, boundary_weight, boundary_radius, ignore_index,
                        label_smoothing, squared, lambda_ce, lambda_dice, smooth_nr, smooth_dr, batch, log_dice,
                        include_background, average, reduction):
    """The whole loss in two launches (pixel kernel, one-program finish kernel) and no host synchronisation
    (labels are checked on the host only for CPU tensors or with BRNNSEG_CHECK_LABELS=1): the loss in the
    logits' dtype (() or (N,)) and the factors its backward reads."""
    op = "ce_dice_loss"
    prepared = _prepare(op, logits, target, weight, class_weights, boundary_weight, ignore_index,
                        check=host_checks_labels(logits.device))
    x, n, c = prepared[0], prepared[6], prepared[7]
    acc = _sums_dtype(x)
    partial = _partial_sums(op, prepared, weight, boundary_weight, boundary_radius, ignore_index, label_smoothing,
                            squared)
    sums = torch.empty((n, 3 * c + 3), dtype=acc, device=x.device)
    out = torch.empty((n,) if reduction == "none" else (), dtype=logits.dtype, device=x.device)
    fac = torch.empty(2 * n * c + n + 1, dtype=acc, device=x.device)
    bt, bk, bc = FINISH_BLOCK
    _ce_dice_finish_kernel[(1,)](
        partial, sums, out, fac, n, c, partial.shape[1], *_split(lambda_ce), *_split(lambda_dice), *_split(smooth_nr),
        *_split(smooth_dr), BATCH=bool(batch), LOG_DICE=bool(log_dice), PRESENT=average == "present",
        NO_BACKGROUND=not include_background and c > 1, REDUCTION=REDUCTIONS[reduction], ACC=_acc(x.dtype),
        BLOCK_T=bt, BLOCK_K=bk, BLOCK_C=bc, num_warps=4)
    return out, fac


def ce_dice_loss_backward_triton(grad, fac, logits, target, weight, class_weights, boundary_weight, boundary_radius,
                                 ignore_index, label_smoothing, squared, batch, reduction):
    """The logits' gradient in one launch."""
    prepared = _prepare("ce_dice_loss_backward", logits, target, weight, class_weights, boundary_weight, ignore_index,
                        check=False)
    go_mode = 0 if reduction != "none" else (2 if batch else 1)
    return _backward("ce_dice_loss_backward", grad.contiguous(), fac, go_mode, prepared, weight, boundary_weight,
                     boundary_radius, ignore_index, label_smoothing, squared)
