// CPU kernels of the fused multi-class loss (brnnseg::ce_dice_sums and its backward): softmax
// cross-entropy (class weights, label smoothing, ignore_index) with boundary weighting, and the softmax
// Dice sums, from one pass over the logits.
//
// Per pixel (p = softmax(x) over the C classes, y the one-hot of an integer label or a soft target,
// w the class weights, eps the label smoothing, v = 0 for ignored pixels):
//   coef_c  = w_c * ((1 - eps) * y_c + eps / C)          (integer labels: torch's cross_entropy terms)
//   ce      = sum_c coef_c * (-log p_c),   norm = w_label (integer labels) or 1 (soft targets)
//   m       = (1 + boundary_weight * [the (2r+1)^d neighbourhood holds more than one label]) * weight
// Sums: ce_sums (N, 2) = [sum v*m*ce, sum v*norm]; dice_sums (N, C, 3) = [sum v*p_c*y_c,
// sum v*p_c (p_c^2), sum v*y_c (y_c^2)]. Backward, per pixel and class j:
//   dx_j = v * (g_ce * m * (p_j * sum_c coef_c - coef_j) + p_j * (a_j - sum_c a_c p_c)),
//   a_c  = g_inter_c * y_c + g_psum_c * (2 p_c if squared else 1).
// Work units are (sample, depth slice, block of rows); their partial sums are added in a fixed order,
// so results do not depend on the thread count. Labels for the boundary test (the integer target, or
// the argmax of a soft one; -1 where ignored) are computed for a block plus its halo in per-thread
// scratch; the test is separable (min and max label over depth, then W, then H).
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "brnnseg/cell/activations.h"
#include "brnnseg/loss/seg_loss_math.h"
#include "cpu/runtime/isa.h"
#include "cpu/runtime/loss_dispatch.h"

namespace brnnseg::cpu {
namespace {

using at::Tensor;

constexpr int64_t kCeRowBlock = 16;

// log(x) for x >= 1 (the softmax denominator), branch-free so the row loop vectorises: x = 2^e * m with
// m in [1, 2), log x = e*ln2 + log1p(m - 1) (seg_loss_math.h: |error| < 2e-8). double: std::log.
__attribute__((always_inline)) inline float log_ge1(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  const int32_t e = int32_t(b >> 23) - 127;
  b = (b & 0x007fffffu) | 0x3f800000u;
  float m;
  std::memcpy(&m, &b, 4);
  return float(e) * 0.693147180559945309f + log1p_unit(m - 1.0f);
}
__attribute__((always_inline)) inline double log_ge1(double x) { return std::log(x); }

// Everything a unit calls is inlined into it, so the per-ISA copies below (AVX2, AVX-512) cover it all.
#define BRNNSEG_CE_INLINE __attribute__((always_inline)) inline

struct CeShape {
  int64_t N, C, D, H, W;
  bool index;  // integer label map (N, *spatial), else soft targets (N, C, *spatial)
  int64_t blocks() const { return (H + kCeRowBlock - 1) / kCeRowBlock; }
  int64_t units() const { return N * D * blocks(); }
  int64_t plane() const { return D * H * W; }
};

template <typename T>
struct CeArgs {
  CeShape s;
  const T* class_weights;  // (C,)
  T boundary_weight;
  int64_t boundary_radius;
  int64_t ignore_index;
  bool has_ignore;
  T label_smoothing;
  bool squared;
};

CeShape ce_shape(const char* op, const Tensor& logits, const Tensor& target) {
  TORCH_CHECK(logits.dim() == 4 || logits.dim() == 5, op,
              ": logits must be (N, C, H, W) or (N, C, D, H, W), got shape ", logits.sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), op, ": logits must be floating point, got ",
              logits.scalar_type());
  TORCH_CHECK(logits.size(1) >= 1, op, ": logits need at least one class");
  CeShape s;
  s.N = logits.size(0);
  s.C = logits.size(1);
  s.D = logits.dim() == 5 ? logits.size(2) : 1;
  s.H = logits.size(-2);
  s.W = logits.size(-1);
  if (target.dim() == logits.dim() - 1) {
    std::vector<int64_t> want{logits.size(0)};
    for (int64_t i = 2; i < logits.dim(); ++i) want.push_back(logits.size(i));
    TORCH_CHECK(target.sizes() == at::IntArrayRef(want), op, ": an integer target must have shape ", want, ", got ",
                target.sizes());
    TORCH_CHECK(!at::isFloatingType(target.scalar_type()), op,
                ": a target without the class dimension must be an integer label map, got ", target.scalar_type());
    s.index = true;
  } else {
    TORCH_CHECK(target.sizes() == logits.sizes(), op, ": target must be (N, *spatial) labels or have the shape of ",
                "logits ", logits.sizes(), ", got ", target.sizes());
    TORCH_CHECK(at::isFloatingType(target.scalar_type()), op,
                ": a target with the class dimension must be one-hot or soft (floating point), got ",
                target.scalar_type());
    s.index = false;
  }
  TORCH_CHECK(target.device() == logits.device(), op, ": target must be on the device of logits");
  return s;
}

// Labels of rows [hlo, hhi) of depth slice dd: -1 where ignored; soft targets: argmax over classes.
template <typename T, typename Y>
BRNNSEG_CE_INLINE void label_rows(const Y* y, const CeShape& s, const CeArgs<T>& a, int64_t n, int64_t dd, int64_t hlo, int64_t hhi,
                int32_t* out) {
  const int64_t W = s.W, plane = s.plane();
  for (int64_t h = hlo; h < hhi; ++h) {
    int32_t* o = out + (h - hlo) * W;
    if (s.index) {
      const Y* __restrict r = y + n * plane + (dd * s.H + h) * W;
      const bool has_ignore = a.has_ignore;
      const int64_t ign = a.ignore_index, C = s.C;
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) {
        const int64_t v = static_cast<int64_t>(r[w]);
        o[w] = ((has_ignore & (v == ign)) | (v < 0) | (v >= C)) ? -1 : static_cast<int32_t>(v);
      }
    } else {
      for (int64_t w = 0; w < W; ++w) {
        int32_t best = 0;
        double bv = -INFINITY;
        for (int64_t c = 0; c < s.C; ++c) {
          const double v = static_cast<double>(y[(n * s.C + c) * plane + (dd * s.H + h) * W + w]);
          if (v > bv) bv = v, best = static_cast<int32_t>(c);
        }
        o[w] = best;
      }
    }
  }
}

// Boundary flags of rows [h0, h1) of slice d of sample n (see the file comment).
template <typename T, typename Y>
BRNNSEG_CE_INLINE void boundary_flags(const Y* y, const CeShape& s, const CeArgs<T>& a, int64_t n, int64_t d, int64_t h0, int64_t h1,
                    std::vector<int32_t>& lab, std::vector<int32_t>& lo, std::vector<int32_t>& hi,
                    std::vector<uint8_t>& flags) {
  const int64_t r = a.boundary_radius, W = s.W;
  const int64_t hlo = std::max<int64_t>(0, h0 - r), hhi = std::min(s.H, h1 + r), rows = hhi - hlo;
  lab.resize(rows * W);
  lo.assign(rows * W, INT_MAX);
  hi.assign(rows * W, -1);
  for (int64_t dd = std::max<int64_t>(0, d - r); dd < std::min(s.D, d + r + 1); ++dd) {
    label_rows(y, s, a, n, dd, hlo, hhi, lab.data());
    int32_t* __restrict hp = hi.data();
    int32_t* __restrict lp = lo.data();
    const int32_t* __restrict lb = lab.data();
#pragma omp simd
    for (int64_t i = 0; i < rows * W; ++i) {
      const int32_t v = lb[i];
      hp[i] = std::max(hp[i], v);
      lp[i] = std::min(lp[i], v < 0 ? INT_MAX : v);
    }
  }
  // Along W, then along H for the output rows (loops along W: they vectorise).
  struct Rows {
    std::vector<int32_t> lo2, hi2, rlo, rhi;
  };
  thread_local Rows tls;
  Rows& rr = tls;
  auto &lo2 = rr.lo2, &hi2 = rr.hi2, &rlo = rr.rlo, &rhi = rr.rhi;
  lo2.assign(rows * W, INT_MAX);
  hi2.assign(rows * W, -1);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t sh = -r; sh <= r; ++sh) {
      const int64_t wlo = std::max<int64_t>(0, -sh), whi = std::min(W, W - sh);
      int32_t* __restrict h2 = hi2.data() + i * W;
      int32_t* __restrict l2 = lo2.data() + i * W;
      const int32_t* __restrict h1p = hi.data() + i * W + sh;
      const int32_t* __restrict l1p = lo.data() + i * W + sh;
      for (int64_t w = wlo; w < whi; ++w) {
        h2[w] = std::max(h2[w], h1p[w]);
        l2[w] = std::min(l2[w], l1p[w]);
      }
    }
  flags.assign((h1 - h0) * W, 0);
  rlo.resize(W);
  rhi.resize(W);
  for (int64_t h = h0; h < h1; ++h) {
    std::fill(rhi.begin(), rhi.end(), -1);
    std::fill(rlo.begin(), rlo.end(), INT_MAX);
    for (int64_t hh = std::max(hlo, h - r); hh < std::min(hhi, h + r + 1); ++hh) {
      const int32_t* __restrict h2 = hi2.data() + (hh - hlo) * W;
      const int32_t* __restrict l2 = lo2.data() + (hh - hlo) * W;
      int32_t* __restrict a = rhi.data();
      int32_t* __restrict b = rlo.data();
      for (int64_t w = 0; w < W; ++w) {
        a[w] = std::max(a[w], h2[w]);
        b[w] = std::min(b[w], l2[w]);
      }
    }
    uint8_t* f = flags.data() + (h - h0) * W;
    const int32_t* __restrict a = rhi.data();
    const int32_t* __restrict b = rlo.data();
    for (int64_t w = 0; w < W; ++w) f[w] = uint8_t((a[w] >= 0) & (b[w] != a[w]));
  }
}

template <typename T, typename Y>
struct CeUnit {
  const CeArgs<T>* a;
  const T* x;
  const Y* y;
  const T* weight;       // (N, *spatial) or nullptr
  const T* g_dice;       // backward: (N, C, 3)
  const T* g_ce;         // backward: (N, 2)
  T* out;                // forward: (units, 3C + 2) partial sums; backward: dx
  int64_t* bad;          // (units,): the first label outside [0, C) a unit met (INT64_MIN: none)
};

// One work unit: rows [h0, h1) of depth slice d of sample n. Every loop runs along a row of W pixels
// over plain arrays, so it vectorises (exp: the branch-free float polynomial of activations.h; double
// keeps std::exp for gradcheck).
template <typename T, typename Y, bool kBackward>
BRNNSEG_CE_INLINE void ce_unit(const CeUnit<T, Y>& u, int64_t unit) {
  constexpr bool kSoft = std::is_floating_point_v<Y>;
  const CeArgs<T>& a = *u.a;
  const CeShape& s = a.s;
  const int64_t bps = s.blocks(), blk = unit % bps, nd = unit / bps, d = nd % s.D, n = nd / s.D;
  const int64_t h0 = blk * kCeRowBlock, h1 = std::min(s.H, h0 + kCeRowBlock), W = s.W, C = s.C, plane = s.plane();
  // Per-thread scratch, reached through references taken once (a thread_local named inside a loop
  // costs a __tls_get_addr call per use in a shared library).
  struct Scratch {
    std::vector<int32_t> lab, lo, hi, labels;
    std::vector<uint8_t> flags;
    std::vector<T> E, mx, inv, lse, coef_sum, ap_sum, m, norm, vld;
  };
  thread_local Scratch tls;
  Scratch& sc = tls;
  auto &lab = sc.lab, &lo = sc.lo, &hi = sc.hi, &labels = sc.labels;
  auto& flags = sc.flags;
  auto &E = sc.E, &mx = sc.mx, &inv = sc.inv, &lse = sc.lse, &coef_sum = sc.coef_sum, &ap_sum = sc.ap_sum, &m = sc.m,
       &norm = sc.norm, &vld = sc.vld;
  const bool use_boundary = a.boundary_weight != T(0);
  if (use_boundary) boundary_flags(u.y, s, a, n, d, h0, h1, lab, lo, hi, flags);
  labels.assign(W, 0);
  E.resize(C * W);
  for (auto* v : {&mx, &inv, &lse, &coef_sum, &ap_sum, &m, &norm, &vld}) v->resize(W);
  const T eps = a.label_smoothing, eps_c = eps / T(C), keep = T(1) - eps;
  const T sq = a.squared ? T(1) : T(0);
  T cw_total = 0;
  for (int64_t c = 0; c < C; ++c) cw_total += a.class_weights[c];
  std::vector<T> acc(kBackward ? 0 : 3 * C + 2, T(0));
  const T g_ce = kBackward ? u.g_ce[n * 2] : T(0);
  int64_t bad = INT64_MIN;
  for (int64_t h = h0; h < h1; ++h) {
    const int64_t pix0 = (d * s.H + h) * W;
    const T* xn = u.x + n * C * plane + pix0;  // class c of pixel w: xn[c * plane + w]
    const T* yn = nullptr;                     // soft targets, laid out like xn
    if constexpr (kSoft) {
      yn = reinterpret_cast<const T*>(u.y) + n * C * plane + pix0;
    } else {
      // Labels (-1: ignored; a label outside [0, C) is recorded and ignored, never used as an index).
      const Y* __restrict yr = u.y + n * plane + pix0;
      int32_t* __restrict lr = labels.data();
      const bool has_ignore = a.has_ignore;
      const int64_t ign = a.ignore_index;
      int any_bad = 0;
#pragma omp simd reduction(| : any_bad)
      for (int64_t w = 0; w < W; ++w) {
        const int64_t v = static_cast<int64_t>(yr[w]);
        const int ignored = has_ignore & (v == ign);
        const int out = (v < 0) | (v >= C);
        any_bad |= out & !ignored;
        lr[w] = (ignored | out) ? -1 : static_cast<int32_t>(v);
      }
      if (any_bad && bad == INT64_MIN)
        for (int64_t w = 0; w < W; ++w) {
          const int64_t v = static_cast<int64_t>(yr[w]);
          if (!(has_ignore && v == ign) && (v < 0 || v >= C)) {
            bad = v;
            break;
          }
        }
    }
    const uint8_t* fr = use_boundary ? flags.data() + (h - h0) * W : nullptr;
    for (int64_t w = 0; w < W; ++w) {
      const T valid = kSoft ? T(1) : T(labels[w] >= 0);
      T mm = valid * (T(1) + (fr ? a.boundary_weight * T(fr[w]) : T(0)));
      if (u.weight) mm *= u.weight[n * plane + pix0 + w];
      m[w] = mm;
      vld[w] = valid;
      norm[w] = kSoft ? T(1) : (labels[w] >= 0 ? a.class_weights[labels[w]] : T(0));
    }
    // Softmax over classes: max, exp (kept for the class passes), sum.
    std::copy(xn, xn + W, mx.data());
    for (int64_t c = 1; c < C; ++c) {
      const T* __restrict xc = xn + c * plane;
      T* __restrict mr = mx.data();
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) mr[w] = std::max(mr[w], xc[w]);
    }
    std::fill(inv.begin(), inv.end(), T(0));
    for (int64_t c = 0; c < C; ++c) {
      const T* __restrict xc = xn + c * plane;
      const T* __restrict mr = mx.data();
      T* __restrict er = E.data() + c * W;
      T* __restrict sr = inv.data();
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) {
        const T e = fast_exp(xc[w] - mr[w]);
        er[w] = e;
        sr[w] += e;
      }
    }
    {
      T* __restrict lr = lse.data();
      T* __restrict ir = inv.data();
      const T* __restrict mr = mx.data();
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) {
        lr[w] = mr[w] + log_ge1(ir[w]);
        ir[w] = T(1) / ir[w];
      }
    }
    if constexpr (!kBackward) {
      T ce = 0, nsum = 0;
      for (int64_t w = 0; w < W; ++w) nsum += vld[w] * norm[w];
      for (int64_t c = 0; c < C; ++c) {
        const T* __restrict xc = xn + c * plane;
        const T* __restrict er = E.data() + c * W;
        const T* __restrict yc = kSoft ? yn + c * plane : nullptr;
        const int32_t* __restrict lr = labels.data();
        const T* __restrict ir = inv.data();
        const T* __restrict lr2 = lse.data();
        const T* __restrict vr = vld.data();
        const T* __restrict mr = m.data();
        const T wc = a.class_weights[c];
        T si = 0, sp = 0, sy = 0, sc = 0;
#pragma omp simd reduction(+ : si, sp, sy, sc)
        for (int64_t w = 0; w < W; ++w) {
          const T p = er[w] * ir[w], nlogp = lr2[w] - xc[w];
          T y;
          if constexpr (kSoft) y = yc[w];
          else y = T(lr[w] == c);
          const T pv = vr[w] * p;
          si += pv * y;
          sp += pv * (sq * p + (T(1) - sq));
          sy += y * (sq * y + (T(1) - sq));
          const T coef = keep * y + eps_c;
          sc += coef != T(0) ? mr[w] * coef * nlogp : T(0);  // a -inf logit of a class with no weight: 0, not NaN
        }
        acc[3 * c] += si;
        acc[3 * c + 1] += sp;
        acc[3 * c + 2] += sy;
        ce += wc * sc;
      }
      acc[3 * C] += ce;
      acc[3 * C + 1] += nsum;
    } else {
      // sum_c coef_c (closed form for labels) and sum_c a_c p_c per pixel; then dx.
      for (int64_t w = 0; w < W; ++w)
        coef_sum[w] = kSoft ? T(0) : keep * (labels[w] >= 0 ? a.class_weights[labels[w]] : T(0)) + eps_c * cw_total;
      std::fill(ap_sum.begin(), ap_sum.end(), T(0));
      for (int64_t c = 0; c < C; ++c) {
        const T* __restrict er = E.data() + c * W;
        const T* __restrict yc = kSoft ? yn + c * plane : nullptr;
        const int32_t* __restrict lr = labels.data();
        const T* __restrict ir = inv.data();
        T* __restrict cs = coef_sum.data();
        T* __restrict as = ap_sum.data();
        const T wc = a.class_weights[c];
        const T gi = u.g_dice[(n * C + c) * 3], gp = u.g_dice[(n * C + c) * 3 + 1];
#pragma omp simd
        for (int64_t w = 0; w < W; ++w) {
          const T p = er[w] * ir[w];
          T y;
          if constexpr (kSoft) {
            y = yc[w];
            cs[w] += wc * (keep * y + eps_c);
          } else {
            y = T(lr[w] == c);
          }
          as[w] += (gi * y + gp * (sq * T(2) * p + (T(1) - sq))) * p;
        }
      }
      for (int64_t c = 0; c < C; ++c) {
        const T* __restrict er = E.data() + c * W;
        const T* __restrict yc = kSoft ? yn + c * plane : nullptr;
        const int32_t* __restrict lr = labels.data();
        const T* __restrict ir = inv.data();
        const T* __restrict cs = coef_sum.data();
        const T* __restrict as = ap_sum.data();
        const T* __restrict vr = vld.data();
        const T* __restrict mr = m.data();
        T* __restrict dc = u.out + n * C * plane + c * plane + pix0;
        const T wc = a.class_weights[c];
        const T gi = u.g_dice[(n * C + c) * 3], gp = u.g_dice[(n * C + c) * 3 + 1];
#pragma omp simd
        for (int64_t w = 0; w < W; ++w) {
          const T p = er[w] * ir[w];
          T y;
          if constexpr (kSoft) y = yc[w];
          else y = T(lr[w] == c);
          const T coef = wc * (keep * y + eps_c);
          const T ac = gi * y + gp * (sq * T(2) * p + (T(1) - sq));
          dc[w] = vr[w] * (g_ce * mr[w] * (p * cs[w] - coef) + p * (ac - as[w]));
        }
      }
    }
  }
  if constexpr (!kBackward)
    for (int64_t k = 0; k < 3 * C + 2; ++k) u.out[unit * (3 * C + 2) + k] = acc[k];
  u.bad[unit] = bad;
}

// One copy of the unit per ISA; the widest the CPU supports is chosen at run time (cpu/runtime/isa.h).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define BRNNSEG_CE_ISAS 1
template <typename T, typename Y, bool kB>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma"))) void ce_unit_avx512(const CeUnit<T, Y>& u,
                                                                                          int64_t unit) {
  ce_unit<T, Y, kB>(u, unit);
}
template <typename T, typename Y, bool kB>
__attribute__((target("avx2,fma"))) void ce_unit_avx2(const CeUnit<T, Y>& u, int64_t unit) {
  ce_unit<T, Y, kB>(u, unit);
}
#endif

template <typename T, typename Y, bool kB>
void run_ce_units(const char* op, const CeUnit<T, Y>& u) {
  at::parallel_for(0, u.a->s.units(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t unit = begin; unit < end; ++unit) {
#ifdef BRNNSEG_CE_ISAS
      switch (static_cast<int>(cpu_isa())) {
        case 2: ce_unit_avx512<T, Y, kB>(u, unit); continue;
        case 1: ce_unit_avx2<T, Y, kB>(u, unit); continue;
        default: break;
      }
#endif
      ce_unit<T, Y, kB>(u, unit);
    }
  });
  for (int64_t i = 0; i < u.a->s.units(); ++i)
    if (u.bad[i] != INT64_MIN)
      TORCH_CHECK_VALUE(false, op, ": target holds the label ", u.bad[i], ", outside [0, ", u.a->s.C,
                        ") and not ignore_index (",
                        u.a->has_ignore ? std::to_string(u.a->ignore_index) : std::string("None"), ")");
}

template <typename F>
void dispatch_ce(const char* op, const Tensor& logits, const Tensor& target, F&& f) {
  dispatch_logits_target<true>(op, logits, target, "integer labels, or float32/float64 soft targets", f);
}

struct CeInputs {
  Tensor x, y, cw;
  std::optional<Tensor> w;
};

CeInputs prepare_ce(const char* op, const CeShape& s, const Tensor& logits, const Tensor& target,
                    const std::optional<Tensor>& weight, const std::optional<Tensor>& class_weights,
                    int64_t boundary_radius, double label_smoothing) {
  TORCH_CHECK(boundary_radius >= 0, op, ": boundary_radius must be >= 0, got ", boundary_radius);
  TORCH_CHECK(label_smoothing >= 0 && label_smoothing <= 1, op, ": label_smoothing must be in [0, 1], got ",
              label_smoothing);
  CeInputs in{logits.contiguous(), target.contiguous(), {}, {}};
  if (class_weights.has_value()) {
    TORCH_CHECK(class_weights->dim() == 1 && class_weights->size(0) == s.C, op,
                ": class_weights must have shape (C,) = (", s.C, ",), got ", class_weights->sizes());
    in.cw = class_weights->to(logits.scalar_type()).contiguous();
  } else {
    in.cw = at::ones({s.C}, logits.options());
  }
  if (weight.has_value()) {
    std::vector<int64_t> want{s.N};
    for (int64_t i = 2; i < logits.dim(); ++i) want.push_back(logits.size(i));
    TORCH_CHECK(weight->sizes() == at::IntArrayRef(want), op, ": weight must have shape ", want, ", got ",
                weight->sizes());
    in.w = weight->to(logits.scalar_type()).contiguous();
  }
  return in;
}

template <typename T>
CeArgs<T> ce_args(const CeShape& s, const Tensor& cw, double boundary_weight, int64_t boundary_radius,
                  std::optional<int64_t> ignore_index, double label_smoothing, bool squared) {
  return {s,           cw.data_ptr<T>(),          static_cast<T>(boundary_weight), boundary_radius,
          ignore_index.value_or(0), ignore_index.has_value(), static_cast<T>(label_smoothing), squared};
}

std::tuple<Tensor, Tensor> ce_dice_sums_cpu(const Tensor& logits, const Tensor& target,
                                            const std::optional<Tensor>& weight,
                                            const std::optional<Tensor>& class_weights, double boundary_weight,
                                            int64_t boundary_radius, std::optional<int64_t> ignore_index,
                                            double label_smoothing, bool squared) {
  const char* op = "ce_dice_sums";
  const CeShape s = ce_shape(op, logits, target);
  const CeInputs in = prepare_ce(op, s, logits, target, weight, class_weights, boundary_radius, label_smoothing);
  Tensor dice, ce;
  dispatch_ce(op, in.x, in.y, [&](auto tv, auto yv) {
    using T = decltype(tv);
    using Y = decltype(yv);
    const CeArgs<T> a = ce_args<T>(s, in.cw, boundary_weight, boundary_radius, s.index ? ignore_index : std::nullopt,
                                   label_smoothing, squared);
    const int64_t k = 3 * s.C + 2;
    Tensor partial = at::zeros({std::max<int64_t>(s.units(), 1), k}, in.x.options());
    std::vector<int64_t> bad(std::max<int64_t>(s.units(), 1), INT64_MIN);
    CeUnit<T, Y> u{&a, in.x.data_ptr<T>(), in.y.data_ptr<Y>(), in.w ? in.w->data_ptr<T>() : nullptr, nullptr,
                   nullptr, partial.data_ptr<T>(), bad.data()};
    run_ce_units<T, Y, false>(op, u);
    // Second stage in a fixed order (a sample's units are consecutive), in double.
    const Tensor per_n = s.units() == 0 ? at::zeros({s.N, k}, in.x.options().dtype(at::kDouble))
                                        : partial.narrow(0, 0, s.units()).to(at::kDouble).view({s.N, -1, k}).sum(1);
    dice = per_n.narrow(1, 0, 3 * s.C).reshape({s.N, s.C, 3}).contiguous().to(in.x.scalar_type());
    ce = per_n.narrow(1, 3 * s.C, 2).contiguous().to(in.x.scalar_type());
  });
  return {dice, ce};
}

Tensor ce_dice_sums_backward_cpu(const Tensor& grad_dice, const Tensor& grad_ce, const Tensor& logits,
                                 const Tensor& target, const std::optional<Tensor>& weight,
                                 const std::optional<Tensor>& class_weights, double boundary_weight,
                                 int64_t boundary_radius, std::optional<int64_t> ignore_index, double label_smoothing,
                                 bool squared) {
  const char* op = "ce_dice_sums_backward";
  const CeShape s = ce_shape(op, logits, target);
  TORCH_CHECK(grad_dice.dim() == 3 && grad_dice.size(0) == s.N && grad_dice.size(1) == s.C && grad_dice.size(2) == 3,
              op, ": grad_dice must have shape (N, C, 3), got ", grad_dice.sizes());
  TORCH_CHECK(grad_ce.dim() == 2 && grad_ce.size(0) == s.N && grad_ce.size(1) == 2, op,
              ": grad_ce must have shape (N, 2), got ", grad_ce.sizes());
  const CeInputs in = prepare_ce(op, s, logits, target, weight, class_weights, boundary_radius, label_smoothing);
  Tensor dx = at::empty_like(in.x);
  dispatch_ce(op, in.x, in.y, [&](auto tv, auto yv) {
    using T = decltype(tv);
    using Y = decltype(yv);
    const CeArgs<T> a = ce_args<T>(s, in.cw, boundary_weight, boundary_radius, s.index ? ignore_index : std::nullopt,
                                   label_smoothing, squared);
    const Tensor gd = grad_dice.to(in.x.scalar_type()).contiguous();
    const Tensor gc = grad_ce.to(in.x.scalar_type()).contiguous();
    std::vector<int64_t> bad(std::max<int64_t>(s.units(), 1), INT64_MIN);
    CeUnit<T, Y> u{&a, in.x.data_ptr<T>(), in.y.data_ptr<Y>(), in.w ? in.w->data_ptr<T>() : nullptr,
                   gd.data_ptr<T>(), gc.data_ptr<T>(), dx.data_ptr<T>(), bad.data()};
    run_ce_units<T, Y, true>(op, u);
  });
  return dx;
}

}  // namespace

TORCH_LIBRARY_IMPL(brnnseg, CPU, m) {
  m.impl("ce_dice_sums", &ce_dice_sums_cpu);
  m.impl("ce_dice_sums_backward", &ce_dice_sums_backward_cpu);
}

}  // namespace brnnseg::cpu
