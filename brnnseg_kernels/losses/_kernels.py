"""Triton kernels of the fused segmentation loss: the CUDA implementation of
``brnnseg::seg_loss_sums`` and its backward (the CPU implementation is C++, csrc/cpu/seg_loss_cpu.cpp).

Per pixel (p = sigmoid(x), y the target, pw the channel's pos_weight, m the pixel's multiplier):
    bce     = pw*y*softplus(-x) + (1-y)*softplus(x)          computed from exp(-|x|): no overflow
    m       = (1 + boundary_weight * [neighbourhood holds fg and bg]) * weight
    sums    = [sum m*bce, count, sum p*y, sum p (p^2), sum y (y^2)] over non-ignored pixels
Forward: one program per (slice, tile) writes its 5 partial sums; the second stage sums them in a
fixed order (deterministic, no atomics). Backward: one program per tile writes
    dx = valid * (g_bce*m*(p*(pw*y+1-y) - pw*y) + (g_inter*y + g_pred*(2p or 1)) * p*(1-p))
into a new buffer. The boundary test loads the target tile at each of the (2r+1)^d shifts (its
halo comes from the neighbouring tiles through the cache); no boundary map is stored.

Tests run these under TRITON_INTERPRET=1 on CPU tensors (tests/test_seg_loss.py)."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import triton
import triton.language as tl

NUM_SUMS = 5


@triton.jit
def _tile_coords(pw_ptr, pw_value, C, D, H, W, tiles_w, n_tiles, PW_TENSOR: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """This program's tile: program slice * n_tiles + tile, with slice = (n*C + c)*D + d (a 1-D grid:
    axis 0 allows 2^31 - 1 programs, axes 1 and 2 only 65535 on a GPU); 2D pixel coordinates, the
    in-bounds mask, offsets of the (n, c) volume and of the pixels, and the channel's pos_weight (from
    the (C,) tensor, or the one scalar every channel shares: no host-to-device copy for a float)."""
    pid = tl.program_id(0)
    tile = pid % n_tiles
    slice_id = pid // n_tiles
    d = slice_id % D
    nc = slice_id // D
    h2 = ((tile // tiles_w) * BLOCK_H + tl.arange(0, BLOCK_H))[:, None]
    w2 = ((tile % tiles_w) * BLOCK_W + tl.arange(0, BLOCK_W))[None, :]
    inb = (h2 < H) & (w2 < W)
    vol = nc.to(tl.int64) * D * H * W
    off = vol + (d * H + h2) * W + w2
    if PW_TENSOR:
        pw = tl.load(pw_ptr + nc % C).to(ACC)
    else:
        pw = tl.zeros((), ACC) + pw_value
    return tile, slice_id, d, nc, h2, w2, inb, vol, off, pw


@triton.jit
def _pixel_terms(x_ptr, y_ptr, w_ptr, off, inb, vol, d, h2, w2, D, H, W, pw, boundary_weight, ignore_index,
                 HAS_WEIGHT: tl.constexpr, HAS_IGNORE: tl.constexpr, USE_BOUNDARY: tl.constexpr,
                 BOUNDARY_RADIUS: tl.constexpr, BOUNDARY_RADIUS_Z: tl.constexpr, ACC: tl.constexpr):
    x = tl.load(x_ptr + off, mask=inb, other=0.0).to(ACC)
    y = tl.load(y_ptr + off, mask=inb, other=0).to(ACC)
    valid = inb
    if HAS_IGNORE:
        valid = valid & (y != ignore_index)
    yv = tl.where(valid, y, 0.0)
    ax = tl.abs(x)
    e = tl.exp(-ax)
    lg = tl.log(1.0 + e)
    inv = 1.0 / (1.0 + e)
    p = tl.where(x >= 0, inv, e * inv)
    sp_pos = tl.maximum(x, 0.0) + lg
    sp_neg = tl.maximum(-x, 0.0) + lg
    m = tl.full(x.shape, 1.0, ACC)
    if USE_BOUNDARY:
        any_fg = tl.zeros(x.shape, tl.int32)
        any_bg = tl.zeros(x.shape, tl.int32)
        for kz in tl.static_range(2 * BOUNDARY_RADIUS_Z + 1):
            dd = d + kz - BOUNDARY_RADIUS_Z
            for ky in tl.static_range(2 * BOUNDARY_RADIUS + 1):
                hh = h2 + ky - BOUNDARY_RADIUS
                for kx in tl.static_range(2 * BOUNDARY_RADIUS + 1):
                    ww = w2 + kx - BOUNDARY_RADIUS
                    ok = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W) & (dd >= 0) & (dd < D)
                    v = tl.load(y_ptr + vol + (dd * H + hh) * W + ww, mask=ok, other=0).to(ACC)
                    if HAS_IGNORE:
                        ok = ok & (v != ignore_index)
                    any_fg = any_fg | (ok & (v > 0.5)).to(tl.int32)
                    any_bg = any_bg | (ok & (v <= 0.5)).to(tl.int32)
        m = 1.0 + boundary_weight * (any_fg & any_bg).to(ACC)
    if HAS_WEIGHT:
        m = m * tl.load(w_ptr + off, mask=inb, other=0.0).to(ACC)
    return x, yv, valid.to(ACC), p, sp_pos, sp_neg, m


@triton.jit
def _seg_loss_fwd_kernel(x_ptr, y_ptr, w_ptr, pw_ptr, part_ptr, pw_value, C, D, H, W, tiles_w, n_tiles,
                         boundary_weight, ignore_index, PW_TENSOR: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                         HAS_IGNORE: tl.constexpr, USE_BOUNDARY: tl.constexpr, SQUARED: tl.constexpr,
                         BOUNDARY_RADIUS: tl.constexpr, BOUNDARY_RADIUS_Z: tl.constexpr, ACC: tl.constexpr,
                         BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    tile, slice_id, d, nc, h2, w2, inb, vol, off, pw = _tile_coords(pw_ptr, pw_value, C, D, H, W, tiles_w, n_tiles,
                                                                    PW_TENSOR, ACC, BLOCK_H, BLOCK_W)
    x, yv, vf, p, sp_pos, sp_neg, m = _pixel_terms(x_ptr, y_ptr, w_ptr, off, inb, vol, d, h2, w2, D, H, W, pw,
                                                   boundary_weight, ignore_index, HAS_WEIGHT, HAS_IGNORE,
                                                   USE_BOUNDARY, BOUNDARY_RADIUS, BOUNDARY_RADIUS_Z, ACC)
    bce = pw * yv * sp_neg + (1.0 - yv) * sp_pos
    pv = p * vf
    if SQUARED:
        ps = pv * pv
        ys = yv * yv
    else:
        ps = pv
        ys = yv
    out = part_ptr + (slice_id.to(tl.int64) * n_tiles + tile) * 5
    tl.store(out + 0, tl.sum(tl.sum(vf * m * bce, axis=1), axis=0))
    tl.store(out + 1, tl.sum(tl.sum(vf, axis=1), axis=0))
    tl.store(out + 2, tl.sum(tl.sum(pv * yv, axis=1), axis=0))
    tl.store(out + 3, tl.sum(tl.sum(ps, axis=1), axis=0))
    tl.store(out + 4, tl.sum(tl.sum(ys, axis=1), axis=0))


@triton.jit
def _seg_loss_bwd_kernel(go_ptr, fac_ptr, x_ptr, y_ptr, w_ptr, pw_ptr, dx_ptr, pw_value, N, C, D, H, W, tiles_w,
                         n_tiles, boundary_weight, ignore_index, GO_MODE: tl.constexpr, PW_TENSOR: tl.constexpr,
                         HAS_WEIGHT: tl.constexpr, HAS_IGNORE: tl.constexpr, USE_BOUNDARY: tl.constexpr,
                         SQUARED: tl.constexpr, BOUNDARY_RADIUS: tl.constexpr, BOUNDARY_RADIUS_Z: tl.constexpr,
                         ACC: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """dx of go * loss, the loss's derivative in its sums given per (n, c) by the forward's factors
    fac = [f_bce, f_inter, f_pred] (N*C*3) and one scale of f_bce (fac[3*N*C]). GO_MODE: 0 the loss
    is a scalar; 1 it is (N, C); 2 it is (N, C) with batch Dice (Dice of channel c is shared by every
    sample, so its gradient takes the sum of go over the batch)."""
    tile, slice_id, d, nc, h2, w2, inb, vol, off, pw = _tile_coords(pw_ptr, pw_value, C, D, H, W, tiles_w, n_tiles,
                                                                    PW_TENSOR, ACC, BLOCK_H, BLOCK_W)
    x, yv, vf, p, sp_pos, sp_neg, m = _pixel_terms(x_ptr, y_ptr, w_ptr, off, inb, vol, d, h2, w2, D, H, W, pw,
                                                   boundary_weight, ignore_index, HAS_WEIGHT, HAS_IGNORE,
                                                   USE_BOUNDARY, BOUNDARY_RADIUS, BOUNDARY_RADIUS_Z, ACC)
    f = fac_ptr + nc.to(tl.int64) * 3
    scale = tl.load(fac_ptr + N * C * 3).to(ACC)
    if GO_MODE == 0:
        go = tl.load(go_ptr).to(ACC)
        go_dice = go
    else:
        go = tl.load(go_ptr + nc).to(ACC)
        go_dice = go
        if GO_MODE == 2:
            go_dice = tl.load(go_ptr + nc % C).to(ACC)
            for i in range(1, N):
                go_dice += tl.load(go_ptr + i * C + nc % C).to(ACC)
    g_bce = go * scale * tl.load(f + 0).to(ACC)
    g_inter = go_dice * tl.load(f + 1).to(ACC)
    g_pred = go_dice * tl.load(f + 2).to(ACC)
    dsig = p * (1.0 - p)
    if SQUARED:
        dpred = 2.0 * p * dsig
    else:
        dpred = dsig
    dbce = p * (pw * yv + 1.0 - yv) - pw * yv
    dx = vf * (g_bce * m * dbce + g_inter * yv * dsig + g_pred * dpred)
    tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _bce_dice_finish_kernel(part_ptr, sel_ptr, out_ptr, fac_ptr, sums_ptr, N, C, T, dice_from, lambda_ce_hi,
                            lambda_ce_lo, lambda_dice_hi, lambda_dice_lo, smooth_nr_hi, smooth_nr_lo, smooth_dr_hi,
                            smooth_dr_lo, HAS_SEL: tl.constexpr, BATCH: tl.constexpr,
                            LOG_DICE: tl.constexpr, REDUCTION: tl.constexpr, ACC: tl.constexpr,
                            BLOCK_NC: tl.constexpr, BLOCK_T: tl.constexpr):
    """One program: the tiles' partial sums (N*C, T, 5) summed in a fixed order into sums (N, C, 5),
    the loss (REDUCTION 0 none: (N, C); 1 sum; 2 mean) into out, and the factors of its derivative in
    the sums, fac (N*C*3 + 1), that the backward kernel reads (see _seg_loss_bwd_kernel). Dice of
    channel c counts where c >= dice_from and, with HAS_SEL, sel[c] != 0. Each float option comes as
    a float32 pair (hi, lo) whose sum is the Python float to 48 bits (float arguments are float32)."""
    lambda_ce = tl.zeros((), ACC) + lambda_ce_hi + lambda_ce_lo
    lambda_dice = tl.zeros((), ACC) + lambda_dice_hi + lambda_dice_lo
    smooth_nr = tl.zeros((), ACC) + smooth_nr_hi + smooth_nr_lo
    smooth_dr = tl.zeros((), ACC) + smooth_dr_hi + smooth_dr_lo
    NC = N * C
    tot_bce = tl.zeros((), ACC)
    tot_cnt = tl.zeros((), ACC)
    tot_dice = tl.zeros((), ACC)
    # Dice terms averaged over by reduction="mean": the selected channels, times N unless batch Dice.
    n_sel = tl.zeros((), ACC)
    for c0 in range(0, C, BLOCK_NC * BLOCK_T):
        cs = c0 + tl.arange(0, BLOCK_NC * BLOCK_T)
        ok = (cs < C) & (cs >= dice_from)
        if HAS_SEL:
            ok = ok & (tl.load(sel_ptr + cs, mask=cs < C, other=0) != 0)
        n_sel += tl.sum(ok.to(ACC), axis=0)
    if not BATCH:
        n_sel = n_sel * N
    dice_scale = lambda_dice
    if REDUCTION == 2:
        dice_scale = lambda_dice / tl.maximum(n_sel, 1.0)
    for nc0 in range(0, NC, BLOCK_NC):
        ncs = nc0 + tl.arange(0, BLOCK_NC)
        row = ncs < NC
        base = ncs.to(tl.int64)[:, None] * T * 5
        a0 = tl.zeros((BLOCK_NC, BLOCK_T), ACC)
        a1 = tl.zeros((BLOCK_NC, BLOCK_T), ACC)
        a2 = tl.zeros((BLOCK_NC, BLOCK_T), ACC)
        a3 = tl.zeros((BLOCK_NC, BLOCK_T), ACC)
        a4 = tl.zeros((BLOCK_NC, BLOCK_T), ACC)
        for t0 in range(0, T, BLOCK_T):
            ts = t0 + tl.arange(0, BLOCK_T)
            msk = row[:, None] & (ts < T)[None, :]
            ptr = part_ptr + base + ts[None, :] * 5
            a0 += tl.load(ptr + 0, mask=msk, other=0.0)
            a1 += tl.load(ptr + 1, mask=msk, other=0.0)
            a2 += tl.load(ptr + 2, mask=msk, other=0.0)
            a3 += tl.load(ptr + 3, mask=msk, other=0.0)
            a4 += tl.load(ptr + 4, mask=msk, other=0.0)
        s_bce = tl.sum(a0, axis=1)
        cnt = tl.sum(a1, axis=1)
        tot_bce += tl.sum(s_bce, axis=0)
        tot_cnt += tl.sum(cnt, axis=0)
        f_bce = tl.zeros((BLOCK_NC,), ACC) + lambda_ce
        if REDUCTION == 0:
            f_bce = lambda_ce / tl.maximum(cnt, 1.0)
        tl.store(fac_ptr + ncs * 3, f_bce, mask=row)
        if BATCH:
            s_out = sums_ptr + ncs.to(tl.int64) * 5
            tl.store(s_out + 0, s_bce, mask=row)
            tl.store(s_out + 1, cnt, mask=row)
            tl.store(s_out + 2, tl.sum(a2, axis=1), mask=row)
            tl.store(s_out + 3, tl.sum(a3, axis=1), mask=row)
            tl.store(s_out + 4, tl.sum(a4, axis=1), mask=row)
        else:
            cs = ncs % C
            sel = (cs >= dice_from) & row
            if HAS_SEL:
                sel = sel & (tl.load(sel_ptr + cs, mask=row, other=0) != 0)
            dice, f_inter, f_pred = _dice_terms(tl.sum(a2, axis=1), tl.sum(a3, axis=1), tl.sum(a4, axis=1),
                                                sel.to(ACC), smooth_nr, smooth_dr, LOG_DICE)
            tot_dice += tl.sum(dice, axis=0)
            tl.store(fac_ptr + ncs * 3 + 1, dice_scale * f_inter, mask=row)
            tl.store(fac_ptr + ncs * 3 + 2, dice_scale * f_pred, mask=row)
            if REDUCTION == 0:
                tl.store(out_ptr + ncs, (f_bce * s_bce + lambda_dice * dice).to(out_ptr.dtype.element_ty),
                         mask=row)
    if BATCH:
        tl.debug_barrier()  # the sums stored above are read back below, by other threads
        for c0 in range(0, C, BLOCK_NC):
            cs = c0 + tl.arange(0, BLOCK_NC)
            col = cs < C
            inter = tl.zeros((BLOCK_NC,), ACC)
            pred = tl.zeros((BLOCK_NC,), ACC)
            ys = tl.zeros((BLOCK_NC,), ACC)
            for i in range(0, N):
                s_in = sums_ptr + (i * C + cs).to(tl.int64) * 5
                inter += tl.load(s_in + 2, mask=col, other=0.0)
                pred += tl.load(s_in + 3, mask=col, other=0.0)
                ys += tl.load(s_in + 4, mask=col, other=0.0)
            sel = (cs >= dice_from) & col
            if HAS_SEL:
                sel = sel & (tl.load(sel_ptr + cs, mask=col, other=0) != 0)
            dice, f_inter, f_pred = _dice_terms(inter, pred, ys, sel.to(ACC), smooth_nr, smooth_dr, LOG_DICE)
            tot_dice += tl.sum(dice, axis=0)
            for i in range(0, N):
                nc = i * C + cs
                tl.store(fac_ptr + nc * 3 + 1, dice_scale * f_inter, mask=col)
                tl.store(fac_ptr + nc * 3 + 2, dice_scale * f_pred, mask=col)
                if REDUCTION == 0:
                    s_in = sums_ptr + nc.to(tl.int64) * 5
                    s_bce = tl.load(s_in + 0, mask=col, other=0.0)
                    cnt = tl.load(s_in + 1, mask=col, other=0.0)
                    tl.store(out_ptr + nc, (lambda_ce * s_bce / tl.maximum(cnt, 1.0) + lambda_dice * dice).to(
                        out_ptr.dtype.element_ty), mask=col)
    if REDUCTION == 2:
        scale = 1.0 / tl.maximum(tot_cnt, 1.0)
        total = lambda_ce * tot_bce * scale + dice_scale * tot_dice
    else:
        scale = tl.full((), 1.0, ACC)
        total = lambda_ce * tot_bce + lambda_dice * tot_dice
    tl.store(fac_ptr + NC * 3, scale)
    if REDUCTION != 0:
        tl.store(out_ptr, total.to(out_ptr.dtype.element_ty))


@triton.jit
def _dice_terms(inter, pred, ys, sel, smooth_nr, smooth_dr, LOG_DICE: tl.constexpr):
    """Dice loss of each (sample or batch, channel) from its sums, times sel, and its derivatives in
    sum p*y and sum p (p^2); a 0/0 score is 1 (and constant), as in the module docstring."""
    den = pred + ys + smooth_dr
    ok = den > 0
    safe = tl.where(ok, den, 1.0)
    num = 2.0 * inter + smooth_nr
    score = tl.where(ok, num / safe, 1.0)
    ds_di = tl.where(ok, 2.0 / safe, 0.0)
    ds_dp = tl.where(ok, -num / (safe * safe), 0.0)
    if LOG_DICE:
        eps = tl.full((), 1e-7, score.dtype)  # a bare literal would be float32's 1e-7
        clamped = tl.maximum(score, eps)
        dice = -tl.log(clamped)
        dd = tl.where(score >= eps, -1.0 / clamped, 0.0)
    else:
        dice = 1.0 - score
        dd = tl.full(score.shape, -1.0, score.dtype)
    return sel * dice, sel * dd * ds_di, sel * dd * ds_dp


# Tile shapes (BLOCK_H, BLOCK_W) the launchers choose from, 1024 pixels each over 8 warps (4 pixels a
# thread): wide rows take 128-wide tiles, narrow ones (3-D slices, small maps) tall 16-wide tiles. A
# closed set, so every kernel variant the op can launch is compiled ahead of time in CI
# (brnnseg_kernels/losses/_aot.py, tests/test_seg_loss_aot.py). 2048-pixel tiles over 4 warps spilled
# up to 1.5 KB per thread in 3-D (27 neighbour loads) and in float64 on sm_90.
BLOCKS = ((8, 128), (64, 16))
NUM_WARPS = 8
# Accumulation dtype: float64 for float64 logits (the sums the op's fake kernel promises), else float32.
ACC_DTYPES = {torch.float64: torch.float64}
MAX_GRID_X = 2**31 - 1  # a GPU's limit on grid axis 0 (axes 1 and 2: 65535)


def _layout(logits: torch.Tensor):
    n, c = logits.shape[:2]
    if logits.dim() == 4:
        d, h, w = 1, logits.shape[2], logits.shape[3]
    else:
        d, h, w = logits.shape[2:]
    block_h, block_w = BLOCKS[0] if w > 16 else BLOCKS[1]
    tiles_w = triton.cdiv(w, block_w)
    n_tiles = triton.cdiv(h, block_h) * tiles_w
    return n, c, d, h, w, block_h, block_w, tiles_w, n_tiles


def launch_grid(n_tiles: int, slices: int):
    """One program per (slice, tile) on grid axis 0, so N*C*D may pass 65535 (axis 1's limit)."""
    programs = n_tiles * slices
    if programs > MAX_GRID_X:
        raise ValueError(f"seg_loss: logits need {programs} tiles of 1024 pixels, more than a GPU grid's "
                         f"{MAX_GRID_X}; split the batch")
    return (programs,)


def acc_dtype(logits_dtype: torch.dtype) -> torch.dtype:
    return ACC_DTYPES.get(logits_dtype, torch.float32)


def _prepare(logits, target, weight, pos_weight):
    """Inputs as the kernels read them (no copies for contiguous inputs; pos_weight None: a scalar)."""
    x = logits.contiguous()
    y = target.contiguous()
    if y.dtype == torch.bool:
        y = y.view(torch.uint8)
    w = weight.contiguous() if weight is not None else x  # dummy pointer when HAS_WEIGHT is False
    pw = pos_weight.to(acc_dtype(x.dtype)).contiguous() if pos_weight is not None else x  # dummy likewise
    return x, y, w, pw


def _ignore(ignore_index):
    return float(ignore_index) if ignore_index is not None else 0.0


def _flags(logits, weight, pos_weight, boundary_weight, boundary_radius, ignore_index, squared, block_h, block_w):
    """Compile-time switches of the pixel kernels."""
    acc = tl.float64 if acc_dtype(logits.dtype) == torch.float64 else tl.float32
    return dict(PW_TENSOR=pos_weight is not None, HAS_WEIGHT=weight is not None, HAS_IGNORE=ignore_index is not None,
                USE_BOUNDARY=boundary_weight != 0, SQUARED=bool(squared), BOUNDARY_RADIUS=int(boundary_radius),
                BOUNDARY_RADIUS_Z=int(boundary_radius) if logits.dim() == 5 else 0, ACC=acc, BLOCK_H=block_h,
                BLOCK_W=block_w)


def _partial_sums(x, y, w, pw, pw_value, weight, pos_weight, boundary_weight, boundary_radius, ignore_index,
                  squared):
    """The forward pixel kernel: partial sums (N*C, D*n_tiles, 5), one row of 5 per tile."""
    n, c, d, h, wd, bh, bw, tiles_w, n_tiles = _layout(x)
    partial = torch.empty((n * c, d * n_tiles, NUM_SUMS), dtype=acc_dtype(x.dtype), device=x.device)
    if partial.numel():
        _seg_loss_fwd_kernel[launch_grid(n_tiles, n * c * d)](
            x, y, w, pw, partial, float(pw_value), c, d, h, wd, tiles_w, n_tiles, float(boundary_weight),
            _ignore(ignore_index), **_flags(x, weight, pos_weight, boundary_weight, boundary_radius, ignore_index,
                                            squared, bh, bw), num_warps=NUM_WARPS)
    return partial


def _backward(go, fac, go_mode, x, y, w, pw, pw_value, weight, pos_weight, boundary_weight, boundary_radius,
              ignore_index, squared):
    n, c, d, h, wd, bh, bw, tiles_w, n_tiles = _layout(x)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if dx.numel():
        _seg_loss_bwd_kernel[launch_grid(n_tiles, n * c * d)](
            go, fac, x, y, w, pw, dx, float(pw_value), n, c, d, h, wd, tiles_w, n_tiles, float(boundary_weight),
            _ignore(ignore_index), GO_MODE=go_mode, **_flags(x, weight, pos_weight, boundary_weight, boundary_radius,
                                                             ignore_index, squared, bh, bw), num_warps=NUM_WARPS)
    return dx


def seg_loss_sums_triton(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                         pos_weight: torch.Tensor, boundary_weight: float, boundary_radius: int,
                         ignore_index: Optional[float], squared: bool) -> torch.Tensor:
    """Forward launcher of seg_loss_sums: (N, C, 5) sums (see module docstring), float64 for float64
    logits, else float32."""
    x, y, w, pw = _prepare(logits, target, weight, pos_weight)
    partial = _partial_sums(x, y, w, pw, 0.0, weight, pos_weight, boundary_weight, boundary_radius, ignore_index,
                            squared)
    # Second stage in a fixed order: deterministic.
    return partial.sum(1).view(x.shape[0], x.shape[1], NUM_SUMS)


def seg_loss_sums_backward_triton(grad_sums: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                                  weight: Optional[torch.Tensor], pos_weight: torch.Tensor, boundary_weight: float,
                                  boundary_radius: int, ignore_index: Optional[float], squared: bool) -> torch.Tensor:
    """Backward launcher of seg_loss_sums: the gradient of sum(grad_sums * sums) w.r.t. the logits, a
    new tensor (the sums' derivative in the logits does not involve the count and the target sums)."""
    x, y, w, pw = _prepare(logits, target, weight, pos_weight)
    acc = acc_dtype(x.dtype)
    one = torch.ones(1, dtype=acc, device=x.device)
    fac = torch.cat([grad_sums.to(acc)[..., [0, 2, 3]].reshape(-1), one])
    return _backward(one, fac, 0, x, y, w, pw, 0.0, weight, pos_weight, boundary_weight, boundary_radius,
                     ignore_index, squared)


REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}


def _split(v: float):
    """v as two float32 values whose sum is v to about 48 bits (Triton passes a float as float32)."""
    hi = float(np.float32(v))
    return hi, float(np.float32(float(v) - hi))
FINISH_BLOCK = (16, 64)  # (BLOCK_NC, BLOCK_T) of the finish kernel: 1024 partial sums per load


def bce_dice_loss_triton(logits, target, weight, pos_weight, pos_weight_value, dice_mask, dice_from,
                         boundary_weight, boundary_radius, ignore_index, squared, lambda_ce, lambda_dice, smooth_nr,
                         smooth_dr, batch, log_dice, reduction):
    """The whole loss in two launches (the pixel kernel, then the one-program finish kernel), no host
    synchronisation: returns the loss (logits' dtype; () or (N, C)) and the factors its backward needs."""
    x, y, w, pw = _prepare(logits, target, weight, pos_weight)
    n, c = x.shape[:2]
    acc = acc_dtype(x.dtype)
    partial = _partial_sums(x, y, w, pw, pos_weight_value, weight, pos_weight, boundary_weight, boundary_radius,
                            ignore_index, squared)
    out = torch.empty((n, c) if reduction == "none" else (), dtype=logits.dtype, device=x.device)
    fac = torch.empty(n * c * 3 + 1, dtype=acc, device=x.device)
    sums = torch.empty((n, c, NUM_SUMS) if batch else (1,), dtype=acc, device=x.device)
    sel = dice_mask if dice_mask is not None else fac  # dummy pointer when HAS_SEL is False
    _bce_dice_finish_kernel[(1,)](
        partial, sel, out, fac, sums, n, c, partial.shape[1], int(dice_from), *_split(lambda_ce), *_split(lambda_dice),
        *_split(smooth_nr), *_split(smooth_dr), HAS_SEL=dice_mask is not None, BATCH=bool(batch),
        LOG_DICE=bool(log_dice), REDUCTION=REDUCTIONS[reduction], ACC=tl.float64 if acc == torch.float64 else tl.float32,
        BLOCK_NC=FINISH_BLOCK[0], BLOCK_T=FINISH_BLOCK[1], num_warps=4)
    return out, fac


def bce_dice_loss_backward_triton(grad, fac, logits, target, weight, pos_weight, pos_weight_value, boundary_weight,
                                  boundary_radius, ignore_index, squared, batch, reduction):
    """The logits' gradient in one launch."""
    x, y, w, pw = _prepare(logits, target, weight, pos_weight)
    go = grad.contiguous()
    go_mode = 0 if reduction != "none" else (2 if batch else 1)
    return _backward(go, fac, go_mode, x, y, w, pw, pos_weight_value, weight, pos_weight, boundary_weight,
                     boundary_radius, ignore_index, squared)
