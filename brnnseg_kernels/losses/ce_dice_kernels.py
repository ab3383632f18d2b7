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

from typing import Optional

import torch
import triton
import triton.language as tl

from .ce_dice import _sums_dtype


@triton.jit
def _ce_tile(x_ptr, t_ptr, lab_ptr, w_ptr, cw_ptr, C, P, D, H, W, n_tiles, par_ptr, ignore_index, INDEX: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_IGNORE: tl.constexpr,
             USE_BOUNDARY: tl.constexpr, BOUNDARY_RADIUS: tl.constexpr, BOUNDARY_RADIUS_Z: tl.constexpr,
             ACC: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """The tile's softmax, targets and per-pixel terms. par_ptr: [boundary_weight, label_smoothing] in the
    accumulation dtype (a float argument would reach the kernel as float32)."""
    boundary_weight = tl.load(par_ptr).to(ACC)
    label_smoothing = tl.load(par_ptr + 1).to(ACC)
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
        y = ((cls[:, None] == lab[None, :]) & valid[None, :] & cok[:, None]).to(ACC)
        norm = tl.load(cw_ptr + tl.where(valid, lab, 0), mask=valid, other=0.0).to(ACC)
    else:
        valid = inb
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
    return n, tile, cls, cok, inb, xoff, m2, logp, p, y, vf, norm, coef, m


@triton.jit
def _ce_dice_fwd_kernel(x_ptr, t_ptr, lab_ptr, w_ptr, cw_ptr, part_ptr, C, P, D, H, W, n_tiles, par_ptr,
                        ignore_index, INDEX: tl.constexpr, HAS_WEIGHT: tl.constexpr,
                        HAS_IGNORE: tl.constexpr, USE_BOUNDARY: tl.constexpr, SQUARED: tl.constexpr,
                        BOUNDARY_RADIUS: tl.constexpr, BOUNDARY_RADIUS_Z: tl.constexpr, ACC: tl.constexpr,
                        C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    n, tile, cls, cok, inb, xoff, m2, logp, p, y, vf, norm, coef, m = _ce_tile(
        x_ptr, t_ptr, lab_ptr, w_ptr, cw_ptr, C, P, D, H, W, n_tiles, par_ptr, ignore_index, INDEX, HAS_WEIGHT, HAS_IGNORE, USE_BOUNDARY, BOUNDARY_RADIUS, BOUNDARY_RADIUS_Z, ACC, C_PAD, BLOCK)
    pv = p * vf[None, :]
    yv = y * vf[None, :]
    if SQUARED:
        ps = pv * p
        ys = yv * yv
    else:
        ps = pv
        ys = yv
    ce = tl.sum(tl.where(coef != 0.0, coef * (-logp), 0.0), axis=0)  # 0 * inf (a -inf logit) counts 0
    out = part_ptr + (n.to(tl.int64) * n_tiles + tile) * (3 * C + 2)
    tl.store(out + cls * 3 + 0, tl.sum(pv * yv, axis=1), mask=cok)
    tl.store(out + cls * 3 + 1, tl.sum(ps, axis=1), mask=cok)
    tl.store(out + cls * 3 + 2, tl.sum(ys, axis=1), mask=cok)
    tl.store(out + 3 * C, tl.sum(vf * m * ce, axis=0))
    tl.store(out + 3 * C + 1, tl.sum(vf * norm, axis=0))


@triton.jit
def _ce_dice_bwd_kernel(gd_ptr, gc_ptr, x_ptr, t_ptr, lab_ptr, w_ptr, cw_ptr, dx_ptr, C, P, D, H, W, n_tiles,
                        par_ptr, ignore_index, INDEX: tl.constexpr,
                        HAS_WEIGHT: tl.constexpr, HAS_IGNORE: tl.constexpr, USE_BOUNDARY: tl.constexpr,
                        SQUARED: tl.constexpr, BOUNDARY_RADIUS: tl.constexpr, BOUNDARY_RADIUS_Z: tl.constexpr,
                        ACC: tl.constexpr, C_PAD: tl.constexpr, BLOCK: tl.constexpr):
    n, tile, cls, cok, inb, xoff, m2, logp, p, y, vf, norm, coef, m = _ce_tile(
        x_ptr, t_ptr, lab_ptr, w_ptr, cw_ptr, C, P, D, H, W, n_tiles, par_ptr, ignore_index, INDEX, HAS_WEIGHT, HAS_IGNORE, USE_BOUNDARY, BOUNDARY_RADIUS, BOUNDARY_RADIUS_Z, ACC, C_PAD, BLOCK)
    gd = gd_ptr + n.to(tl.int64) * C * 3 + cls * 3
    g_inter = tl.load(gd + 0, mask=cok, other=0.0).to(ACC)
    g_psum = tl.load(gd + 1, mask=cok, other=0.0).to(ACC)
    g_ce = tl.load(gc_ptr + n.to(tl.int64) * 2).to(ACC)
    yv = y * vf[None, :]
    if SQUARED:
        a = g_inter[:, None] * yv + g_psum[:, None] * 2.0 * p
    else:
        a = g_inter[:, None] * yv + g_psum[:, None]
    ap = tl.sum(a * p, axis=0)
    s = tl.sum(coef, axis=0)
    dx = vf[None, :] * (g_ce * m[None, :] * (p * s[None, :] - coef) + p * (a - ap[None, :]))
    tl.store(dx_ptr + xoff, dx.to(dx_ptr.dtype.element_ty), mask=m2)


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


def _prepare(op, logits, target, weight, class_weights, boundary_weight, ignore_index):
    x = logits.contiguous()
    n, c = x.shape[:2]
    index = target.dim() == x.dim() - 1
    t = target.contiguous()
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    if index:
        bad = (t < 0) | (t >= c)
        if ignore_index is not None:
            bad &= t != ignore_index
        if bool(bad.any()):
            raise ValueError(f"{op}: target holds the label {int(t[bad].flatten()[0])}, outside [0, {c}) and not "
                             f"ignore_index ({ignore_index})")
    elif tuple(t.shape) != tuple(x.shape):
        raise ValueError(f"{op}: target must be (N, *spatial) labels or have the shape of logits {tuple(x.shape)}, "
                         f"got {tuple(t.shape)}")
    acc = _sums_dtype(x)
    cw = (class_weights.to(acc) if class_weights is not None else torch.ones(c, dtype=acc, device=x.device)).contiguous()
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


def ce_dice_sums_triton(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                        class_weights: Optional[torch.Tensor], boundary_weight: float, boundary_radius: int,
                        ignore_index: Optional[int], label_smoothing: float, squared: bool):
    """Forward launcher: (dice_sums (N, C, 3), ce_sums (N, 2)), float64 for float64 logits, else float32."""
    op = "ce_dice_sums"
    x, t, lab, w, cw, index, n, c, p, d, h, wd = _prepare(op, logits, target, weight, class_weights, boundary_weight,
                                                          ignore_index)
    flags = _flags(x, index, weight, boundary_weight, boundary_radius, ignore_index, squared, c)
    n_tiles, grid = _grid(op, n, p, flags["BLOCK"])
    acc = _sums_dtype(x)
    partial = torch.zeros((n, n_tiles, 3 * c + 2), dtype=acc, device=x.device)
    if x.numel():
        par = torch.tensor([boundary_weight, label_smoothing], dtype=acc, device=x.device)
        _ce_dice_fwd_kernel[grid](x, t, lab, w, cw, partial, c, p, d, h, wd, n_tiles, par,
                                  int(ignore_index) if ignore_index is not None else 0, **flags, num_warps=NUM_WARPS)
    sums = partial.sum(1)  # fixed order: deterministic
    return sums[:, :3 * c].reshape(n, c, 3).contiguous(), sums[:, 3 * c:].contiguous()


def ce_dice_sums_backward_triton(grad_dice: torch.Tensor, grad_ce: torch.Tensor, logits: torch.Tensor,
                                 target: torch.Tensor, weight: Optional[torch.Tensor],
                                 class_weights: Optional[torch.Tensor], boundary_weight: float, boundary_radius: int,
                                 ignore_index: Optional[int], label_smoothing: float, squared: bool) -> torch.Tensor:
    """Backward launcher: the gradient of sum(grad_dice * dice_sums) + sum(grad_ce * ce_sums)."""
    op = "ce_dice_sums_backward"
    x, t, lab, w, cw, index, n, c, p, d, h, wd = _prepare(op, logits, target, weight, class_weights, boundary_weight,
                                                          ignore_index)
    flags = _flags(x, index, weight, boundary_weight, boundary_radius, ignore_index, squared, c)
    n_tiles, grid = _grid(op, n, p, flags["BLOCK"])
    acc = _sums_dtype(x)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    if x.numel():
        par = torch.tensor([boundary_weight, label_smoothing], dtype=acc, device=x.device)
        _ce_dice_bwd_kernel[grid](grad_dice.to(acc).contiguous(), grad_ce.to(acc).contiguous(), x, t, lab, w, cw, dx,
                                  c, p, d, h, wd, n_tiles, par, int(ignore_index) if ignore_index is not None else 0,
                                  **flags, num_warps=NUM_WARPS)
    return dx
