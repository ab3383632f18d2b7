// CPU kernels of the fused segmentation loss (brnnseg::seg_loss_sums and its backward).
// One pass over logits/targets: per (sample, channel) sums of the weighted BCE, the pixel count
// and the Dice terms. The boundary test runs on a block of target rows plus its halo, kept in a
// per-thread scratch (never a full-size map). Work is split into fixed (sample, channel, depth
// slice, row block) units whose partial sums are added in a fixed order, so results do not
// depend on the thread count and are bit-identical from run to run.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "brnnseg/loss/seg_loss_math.h"
#include "cpu/runtime/isa.h"
#include "cpu/runtime/loss_autograd.h"
#include "cpu/runtime/loss_dispatch.h"

namespace brnnseg::cpu {
namespace {

using at::Tensor;

#define BRNNSEG_LOSS_INLINE __attribute__((always_inline)) inline

// Rows per work unit: enough units to spread one image over the threads, few enough that the
// halo rows (2r per block) stay a small overhead.
constexpr int64_t kRowBlock = 32;

struct LossShape {
  int64_t N, C, D, H, W;
  int64_t blocks_per_slice() const { return (H + kRowBlock - 1) / kRowBlock; }
  int64_t units() const { return N * C * D * blocks_per_slice(); }
};

template <typename T>
struct LossArgs {
  LossShape s;
  const T* pos_weight;
  T boundary_weight;
  int64_t boundary_radius;
  bool has_ignore;
  double ignore_index;
  bool squared;
};

LossShape loss_shape(const char* op, const Tensor& logits) {
  TORCH_CHECK(logits.dim() == 4 || logits.dim() == 5, op,
              ": logits must be (N, C, H, W) or (N, C, D, H, W), got shape ", logits.sizes());
  if (logits.dim() == 4) return {logits.size(0), logits.size(1), 1, logits.size(2), logits.size(3)};
  return {logits.size(0), logits.size(1), logits.size(2), logits.size(3), logits.size(4)};
}

void check_loss_inputs(const char* op, const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                       const Tensor& pos_weight, int64_t boundary_radius) {
  loss_shape(op, logits);
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), op, ": logits must be floating point, got ",
              logits.scalar_type());
  TORCH_CHECK(target.sizes() == logits.sizes(), op, ": target must have the shape of logits ", logits.sizes(),
              ", got ", target.sizes());
  TORCH_CHECK(target.device() == logits.device(), op, ": target must be on the device of logits (", logits.device(),
              "), got ", target.device());
  if (weight.has_value()) {
    TORCH_CHECK(weight->sizes() == logits.sizes(), op, ": weight must have the shape of logits ", logits.sizes(),
                ", got ", weight->sizes());
    TORCH_CHECK(weight->device() == logits.device(), op, ": weight must be on the device of logits");
  }
  TORCH_CHECK(pos_weight.dim() == 1 && pos_weight.size(0) == logits.size(1), op,
              ": pos_weight must have shape (C,) = (", logits.size(1), ",), got ", pos_weight.sizes());
  TORCH_CHECK(pos_weight.device() == logits.device(), op, ": pos_weight must be on the device of logits");
  TORCH_CHECK(boundary_radius >= 0, op, ": boundary_radius must be >= 0, got ", boundary_radius);
}

// Boundary flags of rows [h0, h1) of depth slice d of one (n, c) volume: flag = the clipped
// (2r+1)^dims neighbourhood holds a foreground (> 0.5) and a background pixel, ignored pixels
// being neither. The test is separable: OR over depth, then along W, then along H; every loop
// runs along W over bytes so it vectorises.
template <typename Y>
BRNNSEG_LOSS_INLINE void boundary_rows(const Y* vol, const LossShape& s, int64_t d, int64_t h0, int64_t h1,
                                       int64_t r, bool has_ignore, float ignore, uint8_t* scratch, uint8_t* flags) {
  const int64_t W = s.W, hlo = std::max<int64_t>(0, h0 - r), hhi = std::min(s.H, h1 + r);
  const int64_t rows = hhi - hlo;
  uint8_t* a_fg = scratch;
  uint8_t* a_bg = a_fg + rows * W;
  uint8_t* b_fg = a_bg + rows * W;
  uint8_t* b_bg = b_fg + rows * W;
  std::fill(scratch, scratch + 4 * rows * W, uint8_t(0));
  const int64_t dlo = std::max<int64_t>(0, d - r), dhi = std::min(s.D, d + r + 1);
  for (int64_t dd = dlo; dd < dhi; ++dd) {
    for (int64_t i = 0; i < rows; ++i) {
      const Y* row = vol + (dd * s.H + hlo + i) * W;
      uint8_t* af = a_fg + i * W;
      uint8_t* ab = a_bg + i * W;
      for (int64_t w = 0; w < W; ++w) {
        const float v = static_cast<float>(row[w]);
        const uint8_t valid = !(has_ignore && v == ignore);
        af[w] |= valid & (v > 0.5f);
        ab[w] |= valid & (v <= 0.5f);
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t sh = -r; sh <= r; ++sh) {
      const int64_t lo = std::max<int64_t>(0, -sh), hi = std::min(W, W - sh);
      uint8_t* bf = b_fg + i * W;
      uint8_t* bb = b_bg + i * W;
      const uint8_t* af = a_fg + i * W + sh;
      const uint8_t* ab = a_bg + i * W + sh;
      for (int64_t w = lo; w < hi; ++w) {
        bf[w] |= af[w];
        bb[w] |= ab[w];
      }
    }
  }
  for (int64_t h = h0; h < h1; ++h) {
    uint8_t* out = flags + (h - h0) * W;
    uint8_t* tmp = out + (h1 - h0) * W;  // second half of flags: background row accumulator
    std::fill(out, out + W, uint8_t(0));
    std::fill(tmp, tmp + W, uint8_t(0));
    for (int64_t hh = std::max(hlo, h - r); hh < std::min(hhi, h + r + 1); ++hh) {
      const uint8_t* bf = b_fg + (hh - hlo) * W;
      const uint8_t* bb = b_bg + (hh - hlo) * W;
      for (int64_t w = 0; w < W; ++w) {
        out[w] |= bf[w];
        tmp[w] |= bb[w];
      }
    }
    for (int64_t w = 0; w < W; ++w) out[w] &= tmp[w];
  }
}

// Everything one work unit needs; multipliers default to buffers of ones/zeros so the pixel loops
// have no branches.
template <typename T, typename Y>
struct UnitArgs {
  const LossArgs<T>* a;
  const T* x;
  const Y* y;
  const T* weight;      // nullptr: no per-pixel weight
  const T* grad;        // backward: (N, C, 5) gradient of the sums
  T* out;               // forward: (units, 5) partial sums (as T); backward: dx
};

// The per-pixel terms both passes need: valid (0/1, branch-free so loops vectorise), the masked
// target, p and the softplus terms, and the BCE multiplier m (outputs by reference, see
// seg_loss_math.h).
template <typename T, typename Y>
BRNNSEG_LOSS_INLINE void pixel_terms(T x, Y y, uint8_t boundary, T weight, T ig, T ign, T bw, T& valid, T& yv,
                                     T& p, T& sp_pos, T& sp_neg, T& m) {
  const T yv_raw = static_cast<T>(y);
  valid = T(1) - ig * T(yv_raw == ign);
  yv = valid * yv_raw;
  logit_terms(x, p, sp_pos, sp_neg);
  m = (T(1) + bw * T(boundary)) * weight;
}

template <typename T, typename Y, bool kBackward>
BRNNSEG_LOSS_INLINE void process_unit(const UnitArgs<T, Y>& u, int64_t n, int64_t c, int64_t d, int64_t h0,
                                      int64_t h1, int64_t unit) {
  const LossArgs<T>& a = *u.a;
  const LossShape& s = a.s;
  const int64_t W = s.W, plane = s.D * s.H * W, rows = h1 - h0;
  const int64_t base = (n * s.C + c) * plane;
  const bool use_boundary = a.boundary_weight != T(0);
  thread_local std::vector<uint8_t> scratch, flags;
  thread_local std::vector<T> ones;
  if (use_boundary) {
    scratch.resize(4 * (rows + 2 * a.boundary_radius) * W);
    flags.resize(2 * rows * W);
    boundary_rows(u.y + base, s, d, h0, h1, a.boundary_radius, a.has_ignore, static_cast<float>(a.ignore_index),
                  scratch.data(), flags.data());
  } else if (flags.size() < static_cast<size_t>(W)) {
    flags.assign(W, 0);
  }
  if (ones.size() < static_cast<size_t>(W)) ones.assign(W, T(1));
  const T pw = a.pos_weight[c], bw = a.boundary_weight;
  const T ign = static_cast<T>(a.ignore_index);
  const T ig = a.has_ignore ? T(1) : T(0);
  const T sq = a.squared ? T(1) : T(0);
  T g_bce = 0, g_inter = 0, g_pred = 0;
  if (kBackward) {
    const T* g = u.grad + (n * s.C + c) * kNumSums;
    g_bce = g[kBceSum];
    g_inter = g[kInter];
    g_pred = g[kPredSum];
  }
  T acc[kNumSums] = {0, 0, 0, 0, 0};
  for (int64_t h = h0; h < h1; ++h) {
    const int64_t off = base + (d * s.H + h) * W;
    const T* __restrict xr = u.x + off;
    const Y* __restrict yr = u.y + off;
    const T* __restrict wr = u.weight ? u.weight + off : ones.data();
    const uint8_t* __restrict fr = use_boundary ? flags.data() + (h - h0) * W : flags.data();
    if (kBackward) {
      T* __restrict dr = u.out + off;
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) {
        T valid, yv, p, sp_pos, sp_neg, m;
        pixel_terms(xr[w], yr[w], fr[w], wr[w], ig, ign, bw, valid, yv, p, sp_pos, sp_neg, m);
        const T dsig = p * (T(1) - p);
        const T dpred = (sq * (T(2) * p - T(1)) + T(1)) * dsig;  // 2p*dsig if squared, else dsig
        dr[w] = valid * (g_bce * m * bce_grad(p, yv, pw) + g_inter * yv * dsig + g_pred * dpred);
      }
    } else {
      T sb = 0, sk = 0, si = 0, sp = 0, sy = 0;
#pragma omp simd reduction(+ : sb, sk, si, sp, sy)
      for (int64_t w = 0; w < W; ++w) {
        T valid, yv, p, sp_pos, sp_neg, m;
        pixel_terms(xr[w], yr[w], fr[w], wr[w], ig, ign, bw, valid, yv, p, sp_pos, sp_neg, m);
        const T pv = valid * p;
        sb += valid * m * bce_value(sp_pos, sp_neg, yv, pw);
        sk += valid;
        si += pv * yv;
        sp += pv * (sq * p + (T(1) - sq));
        sy += yv * (sq * yv + (T(1) - sq));
      }
      acc[kBceSum] += sb;
      acc[kCount] += sk;
      acc[kInter] += si;
      acc[kPredSum] += sp;
      acc[kTargetSum] += sy;
    }
  }
  if (!kBackward)
    for (int k = 0; k < kNumSums; ++k) u.out[unit * kNumSums + k] = acc[k];
}

// One copy of the unit loop per ISA; the widest the CPU supports is chosen at run time. The rest of
// the extension is built for baseline x86-64.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BRNNSEG_LOSS_ISAS 1
template <typename T, typename Y, bool kB>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) void unit_avx512(
    const UnitArgs<T, Y>& u, int64_t n, int64_t c, int64_t d, int64_t h0, int64_t h1, int64_t unit) {
  process_unit<T, Y, kB>(u, n, c, d, h0, h1, unit);
}
template <typename T, typename Y, bool kB>
__attribute__((target("avx2,fma"))) void unit_avx2(const UnitArgs<T, Y>& u, int64_t n, int64_t c, int64_t d,
                                                    int64_t h0, int64_t h1, int64_t unit) {
  process_unit<T, Y, kB>(u, n, c, d, h0, h1, unit);
}
int loss_isa() { return static_cast<int>(cpu_isa()); }  // cpu/runtime/isa.h: 2 AVX-512, 1 AVX2, 0 baseline
#endif

template <typename T, typename Y, bool kB>
void run_units(const UnitArgs<T, Y>& u) {
  const LossShape& s = u.a->s;
  const int64_t bps = s.blocks_per_slice();
  at::parallel_for(0, s.units(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t blk = unit % bps, slice = unit / bps;  // slice = (n*C + c)*D + d
      const int64_t d = slice % s.D, nc = slice / s.D;
      const int64_t h0 = blk * kRowBlock, h1 = std::min(s.H, h0 + kRowBlock);
      const int64_t n = nc / s.C, c = nc % s.C;
#ifdef BRNNSEG_LOSS_ISAS
      switch (loss_isa()) {
        case 2: unit_avx512<T, Y, kB>(u, n, c, d, h0, h1, unit); continue;
        case 1: unit_avx2<T, Y, kB>(u, n, c, d, h0, h1, unit); continue;
        default: break;
      }
#endif
      process_unit<T, Y, kB>(u, n, c, d, h0, h1, unit);
    }
  });
}

template <typename T, typename Y>
Tensor seg_loss_sums_impl(const Tensor& x, const Tensor& y, const std::optional<Tensor>& weight,
                          const LossArgs<T>& a) {
  const LossShape& s = a.s;
  Tensor partial = at::zeros({std::max<int64_t>(s.units(), 1), kNumSums}, x.options());
  UnitArgs<T, Y> u{&a, x.data_ptr<T>(), y.data_ptr<Y>(), weight.has_value() ? weight->data_ptr<T>() : nullptr,
                   nullptr, partial.data_ptr<T>()};
  run_units<T, Y, false>(u);
  if (s.units() == 0) return at::zeros({s.N, s.C, kNumSums}, x.options());  // an empty batch or map
  // Second stage, in a fixed order (units of one (n, c) are consecutive), in double.
  return partial.narrow(0, 0, s.units()).to(at::kDouble).view({s.N, s.C, -1, kNumSums}).sum(2).to(x.scalar_type());
}

template <typename T, typename Y>
Tensor seg_loss_backward_impl(const Tensor& g, const Tensor& x, const Tensor& y, const std::optional<Tensor>& weight,
                              const LossArgs<T>& a) {
  Tensor dx = at::empty_like(x);
  const Tensor gc = g.to(x.scalar_type()).contiguous();
  UnitArgs<T, Y> u{&a, x.data_ptr<T>(), y.data_ptr<Y>(), weight.has_value() ? weight->data_ptr<T>() : nullptr,
                   gc.data_ptr<T>(), dx.data_ptr<T>()};
  run_units<T, Y, true>(u);
  return dx;
}

template <typename F>
void dispatch_loss(const char* op, const Tensor& logits, const Tensor& target, F&& f) {
  dispatch_logits_target<false>(op, logits, target, "bool, uint8, int32, int64, float32, float64", f);
}

template <typename T>
LossArgs<T> make_args(const LossShape& s, const Tensor& pos_weight, double boundary_weight, int64_t boundary_radius,
                      std::optional<double> ignore_index, bool squared) {
  return {s, pos_weight.data_ptr<T>(), static_cast<T>(boundary_weight), boundary_radius, ignore_index.has_value(),
          ignore_index.value_or(0.0), squared};
}

// Contiguous inputs, pos_weight and weight in the logits' dtype, for both entry points.
struct LossInputs {
  Tensor x, y, pw;
  std::optional<Tensor> w;
};

LossInputs prepare_loss_inputs(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                               const Tensor& pos_weight) {
  LossInputs in{logits.contiguous(), target.contiguous(), pos_weight.to(logits.scalar_type()).contiguous(), {}};
  if (weight.has_value()) in.w = weight->to(logits.scalar_type()).contiguous();
  return in;
}

Tensor seg_loss_sums_cpu(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                         const Tensor& pos_weight, double boundary_weight, int64_t boundary_radius,
                         std::optional<double> ignore_index, bool squared) {
  const char* op = "seg_loss_sums";
  check_loss_inputs(op, logits, target, weight, pos_weight, boundary_radius);
  const LossShape s = loss_shape(op, logits);
  const LossInputs in = prepare_loss_inputs(logits, target, weight, pos_weight);
  Tensor out;
  dispatch_loss(op, in.x, in.y, [&](auto tv, auto yv) {
    using T = decltype(tv);
    using Y = decltype(yv);
    out = seg_loss_sums_impl<T, Y>(in.x, in.y, in.w,
                                   make_args<T>(s, in.pw, boundary_weight, boundary_radius, ignore_index, squared));
  });
  return out;
}

Tensor seg_loss_sums_backward_cpu(const Tensor& grad_sums, const Tensor& logits, const Tensor& target,
                                  const std::optional<Tensor>& weight, const Tensor& pos_weight, double boundary_weight,
                                  int64_t boundary_radius, std::optional<double> ignore_index, bool squared) {
  const char* op = "seg_loss_sums_backward";
  check_loss_inputs(op, logits, target, weight, pos_weight, boundary_radius);
  const LossShape s = loss_shape(op, logits);
  TORCH_CHECK(grad_sums.dim() == 3 && grad_sums.size(0) == s.N && grad_sums.size(1) == s.C &&
                  grad_sums.size(2) == kNumSums,
              op, ": grad_sums must have shape (N, C, 5) = (", s.N, ", ", s.C, ", 5), got ", grad_sums.sizes());
  const LossInputs in = prepare_loss_inputs(logits, target, weight, pos_weight);
  Tensor out;
  dispatch_loss(op, in.x, in.y, [&](auto tv, auto yv) {
    using T = decltype(tv);
    using Y = decltype(yv);
    out = seg_loss_backward_impl<T, Y>(grad_sums, in.x, in.y, in.w,
                                       make_args<T>(s, in.pw, boundary_weight, boundary_radius, ignore_index, squared));
  });
  return out;
}

// ---- the whole loss (brnnseg::bce_dice_loss and its backward) on the CPU ----------------------------------
// finish_from_sums of brnnseg_kernels/losses/seg_loss.py written out over the (N, C, 5) sums in double: the
// loss and the factors of its derivative in the sums, per (n, c) [f_bce, f_inter, f_pred], then the scale of
// every f_bce. That function stays the specification (and the Triton finish kernel's);
// tests/test_seg_loss.py holds the two together.

int bce_reduction(const char* op, c10::string_view reduction) {
  if (reduction == "mean") return 0;
  if (reduction == "sum") return 1;
  if (reduction == "none") return 2;
  TORCH_CHECK_VALUE(false, op, ": reduction must be 'mean', 'sum' or 'none', got '", std::string(reduction), "'");
}

// Logits the kernels compute in (half types: float32), and the per-channel pos_weight (given, or every
// channel's pos_weight_value).
std::pair<Tensor, Tensor> bce_compute_inputs(const Tensor& logits, const std::optional<Tensor>& pos_weight,
                                             double pos_weight_value) {
  const bool reduced = logits.scalar_type() == at::kHalf || logits.scalar_type() == at::kBFloat16;
  Tensor x = reduced ? logits.to(at::kFloat) : logits;
  TORCH_CHECK(x.dim() >= 2, "bce_dice_loss: logits must be (N, C, H, W) or (N, C, D, H, W), got shape ",
              x.sizes());
  Tensor pw = pos_weight.has_value() ? *pos_weight
                                     : at::full({x.size(1)}, pos_weight_value, x.options().dtype(at::kFloat));
  return {x, pw};
}

struct BceFinish {
  std::vector<double> loss;  // (N, C) for reduction "none", else one value
  std::vector<double> factors;
};

BceFinish bce_finish(const Tensor& sums_t, const std::optional<Tensor>& dice_mask, int64_t dice_from, double lambda_ce,
                     double lambda_dice, double smooth_nr, double smooth_dr, bool batch, bool log_dice, int reduction) {
  const Tensor st = sums_t.to(at::kDouble).contiguous();
  const double* sums = st.data_ptr<double>();
  const int64_t N = st.size(0), C = st.size(1), B = batch ? 1 : N;
  std::vector<double> sel(C);
  Tensor mask;
  if (dice_mask.has_value()) {
    TORCH_CHECK(dice_mask->numel() == C, "bce_dice_loss: dice_mask must have C = ", C, " elements, got ",
                dice_mask->numel());
    mask = dice_mask->to(at::kDouble).contiguous();
  }
  for (int64_t c = 0; c < C; ++c)
    sel[c] = (c >= dice_from ? 1.0 : 0.0) * (mask.defined() ? (mask.data_ptr<double>()[c] != 0 ? 1.0 : 0.0) : 1.0);
  // Dice per (b, c) times sel, and its derivatives in sum p*y and sum p (p^2), times sel (_dice_terms).
  std::vector<double> dice(B * C), f_inter(B * C), f_pred(B * C);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      double inter = 0, pred = 0, ysum = 0;
      for (int64_t n = batch ? 0 : b; n < (batch ? N : b + 1); ++n) {
        const double* q = sums + (n * C + c) * kNumSums;
        inter += q[kInter];
        pred += q[kPredSum];
        ysum += q[kTargetSum];
      }
      const double den = pred + ysum + smooth_dr;
      const bool ok = den > 0;
      const double safe = ok ? den : 1.0, num = 2 * inter + smooth_nr;
      const double score = ok ? num / safe : 1.0, ds_di = ok ? 2 / safe : 0.0, ds_dp = ok ? -num / (safe * safe) : 0.0;
      double d, dd;
      if (log_dice) {
        const double clamped = std::max(score, 1e-7);
        d = -std::log(clamped);
        dd = score >= 1e-7 ? -1 / clamped : 0.0;
      } else {
        d = 1 - score;
        dd = -1;
      }
      const int64_t i = b * C + c;
      dice[i] = sel[c] * d;
      f_inter[i] = sel[c] * dd * ds_di;
      f_pred[i] = sel[c] * dd * ds_dp;
    }
  BceFinish f;
  double scale = 1, dice_scale = lambda_dice;
  std::vector<double> f_bce(N * C, lambda_ce);
  if (reduction == 2) {
    f.loss.resize(N * C);
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) {
        const double* q = sums + (n * C + c) * kNumSums;
        f_bce[n * C + c] = lambda_ce / std::max(q[kCount], 1.0);
        f.loss[n * C + c] = f_bce[n * C + c] * q[kBceSum] + lambda_dice * dice[(batch ? 0 : n) * C + c];
      }
  } else {
    double s_bce = 0, cnt = 0, dsum = 0, nsel = 0;
    for (int64_t i = 0; i < N * C; ++i) s_bce += sums[i * kNumSums + kBceSum], cnt += sums[i * kNumSums + kCount];
    for (int64_t i = 0; i < B * C; ++i) dsum += dice[i];
    for (int64_t c = 0; c < C; ++c) nsel += sel[c];
    if (reduction == 1) {
      f.loss.assign(1, lambda_ce * s_bce + lambda_dice * dsum);
    } else {
      dice_scale = lambda_dice / std::max(nsel * double(batch ? 1 : N), 1.0);
      scale = 1 / std::max(cnt, 1.0);
      f.loss.assign(1, lambda_ce * s_bce * scale + dice_scale * dsum);
    }
  }
  f.factors.resize(N * C * 3 + 1);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = n * C + c, b = (batch ? 0 : n) * C + c;
      f.factors[3 * i] = f_bce[i];
      f.factors[3 * i + 1] = dice_scale * f_inter[b];
      f.factors[3 * i + 2] = dice_scale * f_pred[b];
    }
  f.factors[N * C * 3] = scale;
  return f;
}

std::tuple<Tensor, Tensor> bce_dice_loss_cpu(const Tensor& logits, const Tensor& target,
                                             const std::optional<Tensor>& weight,
                                             const std::optional<Tensor>& pos_weight, double pos_weight_value,
                                             const std::optional<Tensor>& dice_mask, int64_t dice_from,
                                             double boundary_weight, int64_t boundary_radius,
                                             std::optional<double> ignore_index, bool squared, double lambda_ce,
                                             double lambda_dice, double smooth_nr, double smooth_dr, bool batch,
                                             bool log_dice, c10::string_view reduction) {
  const int red = bce_reduction("bce_dice_loss", reduction);
  const auto [x, pw] = bce_compute_inputs(logits, pos_weight, pos_weight_value);
  const Tensor sums =
      seg_loss_sums_cpu(x, target, weight, pw, boundary_weight, boundary_radius, ignore_index, squared);
  const BceFinish f =
      bce_finish(sums, dice_mask, dice_from, lambda_ce, lambda_dice, smooth_nr, smooth_dr, batch, log_dice, red);
  const auto dt = at::TensorOptions().dtype(at::kDouble);
  Tensor loss = at::from_blob(const_cast<double*>(f.loss.data()), {int64_t(f.loss.size())}, dt);
  loss = (red == 2 ? loss.view({x.size(0), x.size(1)}) : loss.reshape({})).to(logits.scalar_type()).clone();
  Tensor factors = at::from_blob(const_cast<double*>(f.factors.data()), {int64_t(f.factors.size())}, dt)
                       .to(sums.scalar_type())
                       .clone();
  return {loss, factors};
}

Tensor bce_dice_loss_backward_cpu(const Tensor& grad, const Tensor& factors, const Tensor& logits,
                                  const Tensor& target, const std::optional<Tensor>& weight,
                                  const std::optional<Tensor>& pos_weight, double pos_weight_value,
                                  double boundary_weight, int64_t boundary_radius, std::optional<double> ignore_index,
                                  bool squared, bool batch, c10::string_view reduction) {
  const char* op = "bce_dice_loss_backward";
  const int red = bce_reduction(op, reduction);
  const auto [x, pw] = bce_compute_inputs(logits, pos_weight, pos_weight_value);
  const int64_t N = x.size(0), C = x.size(1);
  TORCH_CHECK(factors.dim() == 1 && factors.numel() == N * C * 3 + 1, op, ": factors must have shape (",
              N * C * 3 + 1, ",), got ", factors.sizes());
  TORCH_CHECK(red == 2 ? grad.numel() == N * C : grad.numel() == 1, op, ": grad must have ", red == 2 ? N * C : 1,
              " elements, got shape ", grad.sizes());
  const Tensor g = grad.to(at::kDouble).contiguous().reshape({-1});
  const Tensor fd = factors.to(at::kDouble).contiguous();
  const double* go = g.data_ptr<double>();
  const double* f = fd.data_ptr<double>();
  const double scale = f[N * C * 3];
  std::vector<double> go_batch(C, 0.0);  // batch Dice with reduction "none": go summed over the batch
  if (red == 2 && batch)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t c = 0; c < C; ++c) go_batch[c] += go[n * C + c];
  Tensor gs = at::zeros({N, C, kNumSums}, at::kDouble);
  double* q = gs.data_ptr<double>();
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t i = n * C + c;
      const double go_i = red == 2 ? go[i] : go[0];
      const double go_dice = red == 2 && batch ? go_batch[c] : go_i;
      q[i * kNumSums + kBceSum] = go_i * scale * f[3 * i];
      q[i * kNumSums + kInter] = go_dice * f[3 * i + 1];
      q[i * kNumSums + kPredSum] = go_dice * f[3 * i + 2];
    }
  Tensor dx = seg_loss_sums_backward_cpu(gs.to(x.scalar_type()), x, target, weight, pw, boundary_weight,
                                         boundary_radius, ignore_index, squared);
  return dx.scalar_type() == logits.scalar_type() ? dx : dx.to(logits.scalar_type());
}

// Autograd of bce_dice_loss for CPU tensors, in C++, registered directly to AutogradCPU, which takes
// precedence over torch.library's Python autograd.Function (brnnseg_kernels/losses/seg_loss.py, the
// formula for every other device; tests/test_seg_loss.py holds the two together). The Python one cost
// ~0.1-0.3 ms a step on the CPU. Both call the ops through the dispatcher.
class BceDiceLossCpuFunction : public torch::autograd::Function<BceDiceLossCpuFunction> {
 public:
  static torch::autograd::variable_list forward(
      torch::autograd::AutogradContext* ctx, const Tensor& logits, const Tensor& target,
      const std::optional<Tensor>& weight, const std::optional<Tensor>& pos_weight, double pos_weight_value,
      const std::optional<Tensor>& dice_mask, int64_t dice_from, double boundary_weight, int64_t boundary_radius,
      std::optional<double> ignore_index, bool squared, double lambda_ce, double lambda_dice, double smooth_nr,
      double smooth_dr, bool batch, bool log_dice, std::string reduction) {
    static const auto op = loss_op<decltype(bce_dice_loss_cpu)>("brnnseg::bce_dice_loss");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, factors] = op.call(logits, target, weight, pos_weight, pos_weight_value, dice_mask, dice_from,
                                   boundary_weight, boundary_radius, ignore_index, squared, lambda_ce, lambda_dice,
                                   smooth_nr, smooth_dr, batch, log_dice, reduction);
    ctx->mark_non_differentiable({factors});
    ctx->set_materialize_grads(false);  // no zeros for the factors' gradient
    ctx->save_for_backward({factors, logits, target, weight.value_or(Tensor()), pos_weight.value_or(Tensor())});
    auto& sd = ctx->saved_data;
    sd["pos_weight_value"] = pos_weight_value;
    sd["boundary_weight"] = boundary_weight;
    sd["boundary_radius"] = boundary_radius;
    sd["ignore_index"] = ignore_index.has_value() ? c10::IValue(*ignore_index) : c10::IValue();
    sd["squared"] = squared;
    sd["batch"] = batch;
    sd["reduction"] = reduction;
    return {loss, factors};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    refuse_double_backward("brnnseg::bce_dice_loss");
    torch::autograd::variable_list out(18);
    if (!grads[0].defined()) return out;
    static const auto op = loss_op<decltype(bce_dice_loss_backward_cpu)>("brnnseg::bce_dice_loss_backward");
    const auto saved = ctx->get_saved_variables();
    const auto& sd = ctx->saved_data;
    const c10::IValue& ign = sd.at("ignore_index");
    out[0] = op.call(grads[0], saved[0], saved[1], saved[2], saved_optional(saved[3]), saved_optional(saved[4]),
                     sd.at("pos_weight_value").toDouble(), sd.at("boundary_weight").toDouble(),
                     sd.at("boundary_radius").toInt(),
                     ign.isNone() ? std::nullopt : std::optional<double>(ign.toDouble()), sd.at("squared").toBool(),
                     sd.at("batch").toBool(), sd.at("reduction").toStringRef());
    return out;
  }
};

std::tuple<Tensor, Tensor> bce_dice_loss_autograd_cpu(
    const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& pos_weight, double pos_weight_value, const std::optional<Tensor>& dice_mask,
    int64_t dice_from, double boundary_weight, int64_t boundary_radius, std::optional<double> ignore_index,
    bool squared, double lambda_ce, double lambda_dice, double smooth_nr, double smooth_dr, bool batch, bool log_dice,
    c10::string_view reduction) {
  auto out = BceDiceLossCpuFunction::apply(logits, target, weight, pos_weight, pos_weight_value, dice_mask, dice_from,
                                           boundary_weight, boundary_radius, ignore_index, squared, lambda_ce,
                                           lambda_dice, smooth_nr, smooth_dr, batch, log_dice, std::string(reduction));
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(brnnseg, CPU, m) {
  m.impl("seg_loss_sums", &seg_loss_sums_cpu);
  m.impl("seg_loss_sums_backward", &seg_loss_sums_backward_cpu);
  m.impl("bce_dice_loss", &bce_dice_loss_cpu);
  m.impl("bce_dice_loss_backward", &bce_dice_loss_backward_cpu);
}

TORCH_LIBRARY_IMPL(brnnseg, AutogradCPU, m) { m.impl("bce_dice_loss", &bce_dice_loss_autograd_cpu); }

}  // namespace brnnseg::cpu
