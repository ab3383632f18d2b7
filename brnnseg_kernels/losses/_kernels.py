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

import torch
import triton
import triton.language as tl

NUM_SUMS = 5


@triton.jit
def _tile_coords(pw_ptr, C, D, H, W, tiles_w, n_tiles, ACC: tl.constexpr, BLOCK_H: tl.constexpr,
                 BLOCK_W: tl.constexpr):
    """This program's tile: program slice * n_tiles + tile, with slice = (n*C + c)*D + d (a 1-D grid:
    axis 0 allows 2^31 - 1 programs, axes 1 and 2 only 65535 on a GPU); 2D pixel coordinates, the
    in-bounds mask, offsets of the (n, c) volume and of the pixels, and the channel's pos_weight."""
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
    pw = tl.load(pw_ptr + nc % C).to(ACC)
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
def _seg_loss_fwd_kernel(x_ptr, y_ptr, w_ptr, pw_ptr, part_ptr, C, D, H, W, tiles_w, n_tiles, boundary_weight,
                         ignore_index, HAS_WEIGHT: tl.constexpr, HAS_IGNORE: tl.constexpr,
                         USE_BOUNDARY: tl.constexpr, SQUARED: tl.constexpr, BOUNDARY_RADIUS: tl.constexpr, BOUNDARY_RADIUS_Z: tl.constexpr,
                         ACC: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    tile, slice_id, d, nc, h2, w2, inb, vol, off, pw = _tile_coords(pw_ptr, C, D, H, W, tiles_w, n_tiles, ACC,
                                                                    BLOCK_H, BLOCK_W)
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
def _seg_loss_bwd_kernel(g_ptr, x_ptr, y_ptr, w_ptr, pw_ptr, dx_ptr, C, D, H, W, tiles_w, n_tiles, boundary_weight,
                         ignore_index, HAS_WEIGHT: tl.constexpr, HAS_IGNORE: tl.constexpr,
                         USE_BOUNDARY: tl.constexpr, SQUARED: tl.constexpr, BOUNDARY_RADIUS: tl.constexpr, BOUNDARY_RADIUS_Z: tl.constexpr,
                         ACC: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    tile, slice_id, d, nc, h2, w2, inb, vol, off, pw = _tile_coords(pw_ptr, C, D, H, W, tiles_w, n_tiles, ACC,
                                                                    BLOCK_H, BLOCK_W)
    x, yv, vf, p, sp_pos, sp_neg, m = _pixel_terms(x_ptr, y_ptr, w_ptr, off, inb, vol, d, h2, w2, D, H, W, pw,
                                                   boundary_weight, ignore_index, HAS_WEIGHT, HAS_IGNORE,
                                                   USE_BOUNDARY, BOUNDARY_RADIUS, BOUNDARY_RADIUS_Z, ACC)
    g = g_ptr + nc.to(tl.int64) * 5
    g_bce = tl.load(g + 0).to(ACC)
    g_inter = tl.load(g + 2).to(ACC)
    g_pred = tl.load(g + 3).to(ACC)
    dsig = p * (1.0 - p)
    if SQUARED:
        dpred = 2.0 * p * dsig
    else:
        dpred = dsig
    dbce = p * (pw * yv + 1.0 - yv) - pw * yv
    dx = vf * (g_bce * m * dbce + g_inter * yv * dsig + g_pred * dpred)
    tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=inb)


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
    x = logits.contiguous()
    y = target.contiguous()
    if y.dtype == torch.bool:
        y = y.view(torch.uint8)
    w = weight.contiguous() if weight is not None else x  # dummy pointer when HAS_WEIGHT is False
    pw = pos_weight.to(acc_dtype(x.dtype)).contiguous()
    return x, y, w, pw


def _ignore(ignore_index):
    return float(ignore_index) if ignore_index is not None else 0.0


def _flags(logits, weight, boundary_weight, boundary_radius, ignore_index, squared, block_h, block_w):
    """Compile-time switches of both kernels."""
    acc = tl.float64 if acc_dtype(logits.dtype) == torch.float64 else tl.float32
    return dict(HAS_WEIGHT=weight is not None, HAS_IGNORE=ignore_index is not None, USE_BOUNDARY=boundary_weight != 0,
                SQUARED=bool(squared), BOUNDARY_RADIUS=int(boundary_radius), BOUNDARY_RADIUS_Z=int(boundary_radius) if logits.dim() == 5 else 0,
                ACC=acc, BLOCK_H=block_h, BLOCK_W=block_w)


def seg_loss_sums_triton(logits: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor],
                         pos_weight: torch.Tensor, boundary_weight: float, boundary_radius: int,
                         ignore_index: Optional[float], squared: bool) -> torch.Tensor:
    """Forward launcher: (N, C, 5) sums (see module docstring), float64 for float64 logits, else float32."""
    x, y, w, pw = _prepare(logits, target, weight, pos_weight)
    n, c, d, h, wd, bh, bw, tiles_w, n_tiles = _layout(x)
    partial = torch.empty((n * c * d, n_tiles, NUM_SUMS), dtype=acc_dtype(x.dtype), device=x.device)
    if partial.numel():
        _seg_loss_fwd_kernel[launch_grid(n_tiles, n * c * d)](
            x, y, w, pw, partial, c, d, h, wd, tiles_w, n_tiles, float(boundary_weight),
            _ignore(ignore_index), **_flags(logits, weight, boundary_weight, boundary_radius, ignore_index, squared,
                                            bh, bw), num_warps=NUM_WARPS)
    # Second stage in a fixed order: deterministic.
    return partial.view(n, c, d * n_tiles, NUM_SUMS).sum(2)


def seg_loss_sums_backward_triton(grad_sums: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                                  weight: Optional[torch.Tensor], pos_weight: torch.Tensor, boundary_weight: float,
                                  boundary_radius: int, ignore_index: Optional[float], squared: bool) -> torch.Tensor:
    """Backward launcher: the gradient of sum(grad_sums * sums) w.r.t. the logits, a new tensor."""
    x, y, w, pw = _prepare(logits, target, weight, pos_weight)
    n, c, d, h, wd, bh, bw, tiles_w, n_tiles = _layout(x)
    dx = torch.empty_like(x, memory_format=torch.contiguous_format)
    g = grad_sums.to(acc_dtype(x.dtype)).contiguous()
    if dx.numel():
        _seg_loss_bwd_kernel[launch_grid(n_tiles, n * c * d)](
            g, x, y, w, pw, dx, c, d, h, wd, tiles_w, n_tiles, float(boundary_weight),
            _ignore(ignore_index), **_flags(logits, weight, boundary_weight, boundary_radius, ignore_index, squared,
                                            bh, bw), num_warps=NUM_WARPS)
    return dx
