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
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "brnnseg/cell/activations.h"
#include "brnnseg/loss/seg_loss_math.h"
#include "cpu/runtime/isa.h"
#include "cpu/runtime/loss_autograd.h"
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

// max / min by value for the boundary passes: std::max / std::min return references, and over a
// conditional they compiled to scalar loops with a branch; these vectorise.
BRNNSEG_CE_INLINE int32_t max_i32(int32_t a, int32_t b) { return a > b ? a : b; }
BRNNSEG_CE_INLINE int32_t min_i32(int32_t a, int32_t b) { return a < b ? a : b; }

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
      hp[i] = max_i32(hp[i], v);
      lp[i] = min_i32(lp[i], v < 0 ? INT_MAX : v);
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
#pragma omp simd
      for (int64_t w = wlo; w < whi; ++w) {
        h2[w] = max_i32(h2[w], h1p[w]);
        l2[w] = min_i32(l2[w], l1p[w]);
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
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) {
        a[w] = max_i32(a[w], h2[w]);
        b[w] = min_i32(b[w], l2[w]);
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

// One work unit: rows [h0, h1) of depth slice d of sample n, in chunks of kCeLanes pixels of a row. A
// chunk's loops have a fixed trip count, so each is a few vector instructions over registers (exp: the
// branch-free float polynomial of activations.h; double keeps std::exp for gradcheck). The forward keeps
// its sums per lane and per class over the whole unit and reduces them across lanes once, at its end.
// The last chunk of a row, if short, runs on copies padded with pixels that count nowhere.
constexpr int64_t kCeLanes = 16;

template <typename T, typename Y, bool kBackward>
BRNNSEG_CE_INLINE void ce_unit(const CeUnit<T, Y>& u, int64_t unit) {
  constexpr bool kSoft = std::is_floating_point_v<Y>;
  constexpr int64_t V = kCeLanes;
  const CeArgs<T>& a = *u.a;
  const CeShape& s = a.s;
  const int64_t bps = s.blocks(), blk = unit % bps, nd = unit / bps, d = nd % s.D, n = nd / s.D;
  const int64_t h0 = blk * kCeRowBlock, h1 = std::min(s.H, h0 + kCeRowBlock), W = s.W, C = s.C, plane = s.plane();
  // Per-thread scratch, reached through references taken once (a thread_local named inside a loop
  // costs a __tls_get_addr call per use in a shared library).
  struct Scratch {
    std::vector<int32_t> lab, lo, hi, labels;
    std::vector<uint8_t> flags;
    std::vector<int32_t> lpad;
    std::vector<uint8_t> fpad;
    std::vector<T> E, acc, xpad, ypad, wpad;
  };
  thread_local Scratch tls;
  Scratch& sc = tls;
  auto& flags = sc.flags;
  auto& labels = sc.labels;
  const bool use_boundary = a.boundary_weight != T(0);
  if (use_boundary) boundary_flags(u.y, s, a, n, d, h0, h1, sc.lab, sc.lo, sc.hi, flags);
  labels.assign(W, kSoft ? 0 : -1);
  sc.E.resize(C * V);
  // Pads of a short last chunk: pixels that count nowhere (label -1, flag 0, weight 0, logits 0).
  sc.xpad.assign(C * V, T(0));
  if (kSoft) sc.ypad.assign(C * V, T(0));
  sc.lpad.assign(V, -1);
  sc.fpad.assign(V, 0);
  sc.wpad.assign(V, T(1));

  // Forward sums per (class, lane): [inter | psum | ysum] blocks of C*V, then ce and norm (V each).
  if (!kBackward) sc.acc.assign((3 * C + 2) * V, T(0));
  T* __restrict E = sc.E.data();
  T* __restrict acc = sc.acc.data();
  const T eps = a.label_smoothing, eps_c = eps / T(C), keep = T(1) - eps;
  const T sq = a.squared ? T(1) : T(0);
  const T bw = a.boundary_weight;
  const T* cw = a.class_weights;
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
    const T* wr = u.weight ? u.weight + n * plane + pix0 : nullptr;
    for (int64_t w0 = 0; w0 < W; w0 += V) {
      const int64_t nv = std::min(V, W - w0);
      // The chunk's logits (and soft targets): class c at xs[c * xstride + k]; its labels (soft targets: 0,
      // -1 on padding), boundary flags and pixel weights. No flags: zeros; no weights: ones.
      const T* xs = xn + w0;
      const T* ys = kSoft ? yn + w0 : nullptr;
      int64_t xstride = plane;
      const int32_t* lb = labels.data() + w0;
      const uint8_t* fb = fr ? fr + w0 : sc.fpad.data();
      const T* wb = wr ? wr + w0 : sc.wpad.data();
      if (nv < V) {  // the short last chunk of a row: padded copies (the pads were set once, above)
        for (int64_t c = 0; c < C; ++c) {
          std::copy(xn + c * plane + w0, xn + c * plane + W, sc.xpad.data() + c * V);
          if (kSoft) std::copy(yn + c * plane + w0, yn + c * plane + W, sc.ypad.data() + c * V);
        }
        std::copy(lb, lb + nv, sc.lpad.data());
        if (fr) std::copy(fb, fb + nv, sc.fpad.data());
        if (wr) std::copy(wb, wb + nv, sc.wpad.data());
        xs = sc.xpad.data();
        ys = kSoft ? sc.ypad.data() : nullptr;
        xstride = V;
        lb = sc.lpad.data();
        fb = sc.fpad.data();
        wb = sc.wpad.data();
      }
      int32_t lab[V];
      T vld[V], m[V], mx[V], ssum[V], lse[V], inv[V];
#pragma omp simd
      for (int64_t k = 0; k < V; ++k) {
        lab[k] = lb[k];
        vld[k] = lab[k] >= 0 ? T(1) : T(0);
        m[k] = vld[k] * (T(1) + bw * T(fb[k])) * wb[k];
        mx[k] = xs[k];
        ssum[k] = T(0);
      }
      // Softmax over classes: max, exp (kept for the class passes), sum.
      for (int64_t c = 1; c < C; ++c) {
        const T* __restrict xc = xs + c * xstride;
#pragma omp simd
        for (int64_t k = 0; k < V; ++k) mx[k] = std::max(mx[k], xc[k]);
      }
      for (int64_t c = 0; c < C; ++c) {
        const T* __restrict xc = xs + c * xstride;
        T* __restrict er = E + c * V;
#pragma omp simd
        for (int64_t k = 0; k < V; ++k) {
          const T e = fast_exp(xc[k] - mx[k]);
          er[k] = e;
          ssum[k] += e;
        }
      }
#pragma omp simd
      for (int64_t k = 0; k < V; ++k) {
        lse[k] = mx[k] + log_ge1(ssum[k]);
        inv[k] = T(1) / ssum[k];
      }
      if constexpr (!kBackward) {
        T* __restrict ai = acc;
        T* __restrict ap = acc + C * V;
        T* __restrict ay = acc + 2 * C * V;
        T ce[V], nrm[V];  // this chunk's, in registers (through memory, each class would wait on the last)
#pragma omp simd
        for (int64_t k = 0; k < V; ++k) ce[k] = nrm[k] = T(0);
        for (int64_t c = 0; c < C; ++c) {
          const T* __restrict xc = xs + c * xstride;
          const T* __restrict er = E + c * V;
          const T* __restrict yc = kSoft ? ys + c * xstride : nullptr;
          const T wc = cw[c];
          const int32_t ci = static_cast<int32_t>(c);
#pragma omp simd
          for (int64_t k = 0; k < V; ++k) {
            const T p = er[k] * inv[k], nlogp = lse[k] - xc[k];
            T y;
            if constexpr (kSoft) y = yc[k];
            else y = T(lab[k] == ci);
            const T pv = vld[k] * p;
            ai[c * V + k] += pv * y;
            ap[c * V + k] += pv * (sq * p + (T(1) - sq));
            ay[c * V + k] += y * (sq * y + (T(1) - sq));
            const T coef = keep * y + eps_c;
            // a -inf logit of a class with no weight: 0, not NaN
            ce[k] += coef != T(0) ? wc * m[k] * coef * nlogp : T(0);
            if constexpr (!kSoft) nrm[k] += wc * y;  // the label's class weight (0 where ignored)
          }
        }
        T* __restrict ace = acc + 3 * C * V;
#pragma omp simd
        for (int64_t k = 0; k < V; ++k) {
          ace[k] += ce[k];
          ace[V + k] += kSoft ? vld[k] : nrm[k];
        }
      } else {
        // sum_c coef_c and sum_c a_c p_c per pixel; then dx.
        T cs[V], as[V];
#pragma omp simd
        for (int64_t k = 0; k < V; ++k) cs[k] = as[k] = T(0);
        // Class c's p and y at lane k, and its gradient constants: the same in both class passes.
        struct ClassRow {
          const T* er;
          const T* yc;
          T wc, gi, gp;
          int32_t ci;
          T p(const T* iv, int64_t k) const { return er[k] * iv[k]; }
          T y(const int32_t* lb, int64_t k) const {
            if constexpr (kSoft) return yc[k];
            else return T(lb[k] == ci);
          }
        };
        const auto class_row = [&](int64_t c) {
          return ClassRow{E + c * V, kSoft ? ys + c * xstride : nullptr, cw[c], u.g_dice[(n * C + c) * 3],
                          u.g_dice[(n * C + c) * 3 + 1], static_cast<int32_t>(c)};
        };
        for (int64_t c = 0; c < C; ++c) {
          const ClassRow r = class_row(c);
#pragma omp simd
          for (int64_t k = 0; k < V; ++k) {
            const T p = r.p(inv, k), y = r.y(lab, k);
            cs[k] += r.wc * (keep * y + eps_c);
            as[k] += (r.gi * y + r.gp * (sq * T(2) * p + (T(1) - sq))) * p;
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          const ClassRow r = class_row(c);
          T dv[V];
#pragma omp simd
          for (int64_t k = 0; k < V; ++k) {
            const T p = r.p(inv, k), y = r.y(lab, k);
            const T coef = r.wc * (keep * y + eps_c);
            const T ac = r.gi * y + r.gp * (sq * T(2) * p + (T(1) - sq));
            dv[k] = vld[k] * (g_ce * m[k] * (p * cs[k] - coef) + p * (ac - as[k]));
          }
          T* dc = u.out + n * C * plane + c * plane + pix0 + w0;
          if (nv == V) std::copy(dv, dv + V, dc);
          else std::copy(dv, dv + nv, dc);
        }
      }
    }
  }
  if constexpr (!kBackward) {
    // Across lanes, in a fixed order: [inter, psum, ysum] per class, then ce, norm.
    T* o = u.out + unit * (3 * C + 2);
    for (int64_t c = 0; c < C; ++c)
      for (int64_t j = 0; j < 3; ++j) {
        T v = 0;
        for (int64_t k = 0; k < V; ++k) v += acc[(j * C + c) * V + k];
        o[3 * c + j] = v;
      }
    for (int64_t j = 0; j < 2; ++j) {
      T v = 0;
      for (int64_t k = 0; k < V; ++k) v += acc[(3 * C + j) * V + k];
      o[3 * C + j] = v;
    }
  }
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

struct CeParams {
  double boundary_weight;
  int64_t boundary_radius;
  std::optional<int64_t> ignore_index;
  double label_smoothing;
  bool squared;
};

// Per-sample sums over counted pixels, in double: (N, 3C + 2) row-major, [inter, psum, ysum] per class, then
// [ce_num, ce_den]. The units' partial sums are added in a fixed order (a sample's units are consecutive).
std::vector<double> ce_sample_sums(const char* op, const CeShape& s, const CeInputs& in, const CeParams& p) {
  const int64_t k = 3 * s.C + 2;
  std::vector<double> per_n(s.N * k, 0.0);
  dispatch_ce(op, in.x, in.y, [&](auto tv, auto yv) {
    using T = decltype(tv);
    using Y = decltype(yv);
    const CeArgs<T> a = ce_args<T>(s, in.cw, p.boundary_weight, p.boundary_radius,
                                   s.index ? p.ignore_index : std::nullopt, p.label_smoothing, p.squared);
    const int64_t units = s.units();
    std::vector<T> partial(std::max<int64_t>(units, 1) * k, T(0));
    std::vector<int64_t> bad(std::max<int64_t>(units, 1), INT64_MIN);
    CeUnit<T, Y> u{&a, in.x.data_ptr<T>(), in.y.data_ptr<Y>(), in.w ? in.w->data_ptr<T>() : nullptr, nullptr,
                   nullptr, partial.data(), bad.data()};
    run_ce_units<T, Y, false>(op, u);
    const int64_t per_sample = s.N ? units / s.N : 0;
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t i = 0; i < per_sample; ++i)
        for (int64_t j = 0; j < k; ++j) per_n[n * k + j] += static_cast<double>(partial[(n * per_sample + i) * k + j]);
  });
  return per_n;
}

// dx from the gradients of the sums: gd (N, C, 3) and gc (N, 2), in the dtype of in.x.
void ce_sums_backward_into(const char* op, const CeShape& s, const CeInputs& in, const CeParams& p, const Tensor& gd,
                           const Tensor& gc, Tensor& dx) {
  dispatch_ce(op, in.x, in.y, [&](auto tv, auto yv) {
    using T = decltype(tv);
    using Y = decltype(yv);
    const CeArgs<T> a = ce_args<T>(s, in.cw, p.boundary_weight, p.boundary_radius,
                                   s.index ? p.ignore_index : std::nullopt, p.label_smoothing, p.squared);
    std::vector<int64_t> bad(std::max<int64_t>(s.units(), 1), INT64_MIN);
    CeUnit<T, Y> u{&a, in.x.data_ptr<T>(), in.y.data_ptr<Y>(), in.w ? in.w->data_ptr<T>() : nullptr,
                   gd.data_ptr<T>(), gc.data_ptr<T>(), dx.data_ptr<T>(), bad.data()};
    run_ce_units<T, Y, true>(op, u);
  });
}

std::tuple<Tensor, Tensor> ce_dice_sums_cpu(const Tensor& logits, const Tensor& target,
                                            const std::optional<Tensor>& weight,
                                            const std::optional<Tensor>& class_weights, double boundary_weight,
                                            int64_t boundary_radius, std::optional<int64_t> ignore_index,
                                            double label_smoothing, bool squared) {
  const char* op = "ce_dice_sums";
  const CeShape s = ce_shape(op, logits, target);
  const CeInputs in = prepare_ce(op, s, logits, target, weight, class_weights, boundary_radius, label_smoothing);
  const std::vector<double> per_n =
      ce_sample_sums(op, s, in, {boundary_weight, boundary_radius, ignore_index, label_smoothing, squared});
  const int64_t k = 3 * s.C + 2;
  // (from_blob views per_n, which dies with this frame: copy before anything can be a view of it)
  const Tensor all = at::from_blob(const_cast<double*>(per_n.data()), {s.N, k}, at::kDouble).clone();
  Tensor dice = all.narrow(1, 0, 3 * s.C).reshape({s.N, s.C, 3}).to(in.x.scalar_type()).contiguous();
  Tensor ce = all.narrow(1, 3 * s.C, 2).to(in.x.scalar_type()).contiguous();
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
  ce_sums_backward_into(op, s, in, {boundary_weight, boundary_radius, ignore_index, label_smoothing, squared},
                        grad_dice.to(in.x.scalar_type()).contiguous(), grad_ce.to(in.x.scalar_type()).contiguous(),
                        dx);
  return dx;
}

// The whole loss on the CPU: logits in float32 / float64 (half types are computed in float32, as the sums op
// takes them), soft targets in the logits' compute dtype.
std::pair<Tensor, Tensor> ce_compute_inputs(const Tensor& logits, const Tensor& target) {
  const bool reduced = logits.scalar_type() == at::kHalf || logits.scalar_type() == at::kBFloat16;
  Tensor x = reduced ? logits.to(at::kFloat) : logits;
  Tensor t = target.is_floating_point() && target.scalar_type() != x.scalar_type() ? target.to(x.scalar_type())
                                                                                   : target;
  return {x, t};
}

// finish_from_sums of brnnseg_kernels/losses/ce_dice.py, written out over the (N, C) sums in double: the loss
// and the factors of its derivative [f_inter, f_psum per (n, c); f_ce per n; the scale of every f_ce].
struct CeFinish {
  std::vector<double> loss;  // (N,) for reduction "none", else one value
  std::vector<double> factors;
};

CeFinish ce_finish(const std::vector<double>& per_n, int64_t N, int64_t C, double lambda_ce, double lambda_dice,
                   double smooth_nr, double smooth_dr, bool batch, bool log_dice, bool include_background,
                   bool present, int reduction /* 0 mean, 1 sum, 2 none */) {
  const int64_t k = 3 * C + 2, B = batch ? 1 : N;
  // Per (b, c): the Dice sums (summed over the batch when batch), then score, dice, its derivative, selection.
  std::vector<double> dice(B * C), dd(B * C), safe(B * C), num(B * C), sel(B * C);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c) {
      double inter = 0, psum = 0, ysum = 0;
      for (int64_t n = batch ? 0 : b; n < (batch ? N : b + 1); ++n) {
        inter += per_n[n * k + 3 * c];
        psum += per_n[n * k + 3 * c + 1];
        ysum += per_n[n * k + 3 * c + 2];
      }
      const double den = psum + ysum + smooth_dr, z = den == 0 ? 1.0 : 0.0;  // 0/0 scores 1: finite
      const int64_t i = b * C + c;
      safe[i] = den + z;
      num[i] = 2 * inter + smooth_nr + z;
      const double score = num[i] / safe[i];
      if (log_dice) {
        const double clamped = std::max(score, 1e-7);
        dice[i] = -std::log(clamped);
        dd[i] = score >= 1e-7 ? -1 / clamped : 0.0;
      } else {
        dice[i] = 1 - score;
        dd[i] = -1;
      }
      sel[i] = (!present || ysum > 0) && (include_background || C == 1 || c != 0) ? 1.0 : 0.0;
    }
  CeFinish f;
  std::vector<double> w(B), f_ce(N);
  double scale = 1;
  if (reduction == 2) {
    f.loss.assign(N, 0.0);
    for (int64_t b = 0; b < B; ++b) {
      double cnt = 0, d = 0;
      for (int64_t c = 0; c < C; ++c) cnt += sel[b * C + c];
      w[b] = lambda_dice / std::max(cnt, 1.0);
      for (int64_t c = 0; c < C; ++c) d += w[b] * sel[b * C + c] * dice[b * C + c];
      for (int64_t n = batch ? 0 : b; n < (batch ? N : b + 1); ++n) f.loss[n] += d;
    }
    for (int64_t n = 0; n < N; ++n) {
      f_ce[n] = lambda_ce / std::max(per_n[n * k + 3 * C + 1], 1e-12);
      f.loss[n] += f_ce[n] * per_n[n * k + 3 * C];
    }
  } else {
    double ce_num = 0, ce_den = 0, cnt = 0, d = 0;
    for (int64_t n = 0; n < N; ++n) ce_num += per_n[n * k + 3 * C], ce_den += per_n[n * k + 3 * C + 1];
    for (int64_t i = 0; i < B * C; ++i) cnt += sel[i], d += sel[i] * dice[i];
    const double wv = reduction == 1 ? lambda_dice : lambda_dice / std::max(cnt, 1.0);
    std::fill(w.begin(), w.end(), wv);
    std::fill(f_ce.begin(), f_ce.end(), lambda_ce);
    if (reduction == 0) scale = 1 / std::max(ce_den, 1e-12);
    f.loss.assign(1, lambda_ce * ce_num * scale + wv * d);
  }
  f.factors.assign(2 * N * C + N + 1, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t b = batch ? 0 : n, i = b * C + c;
      f.factors[2 * (n * C + c)] = w[b] * sel[i] * dd[i] * 2 / safe[i];
      f.factors[2 * (n * C + c) + 1] = -w[b] * sel[i] * dd[i] * num[i] / (safe[i] * safe[i]);
    }
  for (int64_t n = 0; n < N; ++n) f.factors[2 * N * C + n] = f_ce[n];
  f.factors[2 * N * C + N] = scale;
  return f;
}

int ce_reduction(const char* op, c10::string_view reduction) {
  if (reduction == "mean") return 0;
  if (reduction == "sum") return 1;
  if (reduction == "none") return 2;
  TORCH_CHECK_VALUE(false, op, ": reduction must be 'mean', 'sum' or 'none', got '", std::string(reduction), "'");
}

std::tuple<Tensor, Tensor> ce_dice_loss_cpu(const Tensor& logits, const Tensor& target,
                                            const std::optional<Tensor>& weight,
                                            const std::optional<Tensor>& class_weights, double boundary_weight,
                                            int64_t boundary_radius, std::optional<int64_t> ignore_index,
                                            double label_smoothing, bool squared, double lambda_ce, double lambda_dice,
                                            double smooth_nr, double smooth_dr, bool batch, bool log_dice,
                                            bool include_background, c10::string_view average,
                                            c10::string_view reduction) {
  const char* op = "ce_dice_loss";
  const int red = ce_reduction(op, reduction);
  TORCH_CHECK_VALUE(average == "present" || average == "all", op, ": average must be 'present' or 'all', got '",
                    std::string(average), "'");
  const auto [x, t] = ce_compute_inputs(logits, target);
  const CeShape s = ce_shape(op, x, t);
  const CeInputs in = prepare_ce(op, s, x, t, weight, class_weights, boundary_radius, label_smoothing);
  const std::vector<double> per_n =
      ce_sample_sums(op, s, in, {boundary_weight, boundary_radius, ignore_index, label_smoothing, squared});
  const CeFinish f = ce_finish(per_n, s.N, s.C, lambda_ce, lambda_dice, smooth_nr, smooth_dr, batch, log_dice,
                               include_background, average == "present", red);
  const auto lt = at::TensorOptions().dtype(at::kDouble);
  Tensor loss = at::from_blob(const_cast<double*>(f.loss.data()), {int64_t(f.loss.size())}, lt);
  loss = (red == 2 ? loss : loss.reshape({})).to(logits.scalar_type()).clone();
  Tensor factors = at::from_blob(const_cast<double*>(f.factors.data()), {int64_t(f.factors.size())}, lt)
                       .to(x.scalar_type())
                       .clone();
  return {loss, factors};
}

Tensor ce_dice_loss_backward_cpu(const Tensor& grad, const Tensor& factors, const Tensor& logits, const Tensor& target,
                                 const std::optional<Tensor>& weight, const std::optional<Tensor>& class_weights,
                                 double boundary_weight, int64_t boundary_radius, std::optional<int64_t> ignore_index,
                                 double label_smoothing, bool squared, bool batch, c10::string_view reduction) {
  const char* op = "ce_dice_loss_backward";
  const int red = ce_reduction(op, reduction);
  const auto [x, t] = ce_compute_inputs(logits, target);
  const CeShape s = ce_shape(op, x, t);
  const int64_t N = s.N, C = s.C;
  TORCH_CHECK(factors.dim() == 1 && factors.numel() == 2 * N * C + N + 1, op, ": factors must have shape (",
              2 * N * C + N + 1, ",), got ", factors.sizes());
  TORCH_CHECK(red == 2 ? grad.numel() == N : grad.numel() == 1, op, ": grad must have ", red == 2 ? N : 1,
              " elements, got shape ", grad.sizes());
  const CeInputs in = prepare_ce(op, s, x, t, weight, class_weights, boundary_radius, label_smoothing);
  const Tensor g = grad.to(at::kDouble).contiguous().reshape({-1});
  const Tensor fd = factors.to(at::kDouble).contiguous();
  const double* go = g.data_ptr<double>();
  const double* f = fd.data_ptr<double>();
  double go_sum = 0;
  for (int64_t n = 0; n < g.numel(); ++n) go_sum += go[n];
  Tensor gd = at::empty({N, C, 3}, at::kDouble), gc = at::empty({N, 2}, at::kDouble);
  double* gdp = gd.data_ptr<double>();
  double* gcp = gc.data_ptr<double>();
  for (int64_t n = 0; n < N; ++n) {
    // d loss / d Dice sums: go (per sample for "none"; its batch sum where batch Dice meets "none").
    const double go_n = red == 2 ? go[n] : go[0];
    const double go_dice = red == 2 && batch ? go_sum : go_n;
    for (int64_t c = 0; c < C; ++c) {
      gdp[(n * C + c) * 3] = go_dice * f[2 * (n * C + c)];
      gdp[(n * C + c) * 3 + 1] = go_dice * f[2 * (n * C + c) + 1];
      gdp[(n * C + c) * 3 + 2] = 0;
    }
    gcp[2 * n] = go_n * f[2 * N * C + N] * f[2 * N * C + n];
    gcp[2 * n + 1] = 0;
  }
  Tensor dx = at::empty_like(in.x);
  ce_sums_backward_into(op, s, in, {boundary_weight, boundary_radius, ignore_index, label_smoothing, squared},
                        gd.to(in.x.scalar_type()), gc.to(in.x.scalar_type()), dx);
  return dx.scalar_type() == logits.scalar_type() ? dx : dx.to(logits.scalar_type());
}

// Autograd of ce_dice_loss for CPU tensors, in C++. brnnseg_kernels/losses/ce_dice.py registers the same
// formula for every device through torch.library (Python); a kernel registered directly to AutogradCPU
// takes precedence over it there. Why a second one: at (4, 8, 128, 128) the Python autograd.Function
// around the op cost 0.2-0.4 ms a step on the CPU, as much as either kernel. Both call the ops through the
// dispatcher, so fake tensors and torch.compile see the same ops on either path.
class CeDiceLossCpuFunction : public torch::autograd::Function<CeDiceLossCpuFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& logits,
                                                const Tensor& target, const std::optional<Tensor>& weight,
                                                const std::optional<Tensor>& class_weights,
                                                double boundary_weight, int64_t boundary_radius,
                                                std::optional<int64_t> ignore_index, double label_smoothing,
                                                bool squared, double lambda_ce, double lambda_dice, double smooth_nr,
                                                double smooth_dr, bool batch, bool log_dice, bool include_background,
                                                std::string average, std::string reduction) {
    static const auto op = loss_op<decltype(ce_dice_loss_cpu)>("brnnseg::ce_dice_loss");
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, factors] =
        op.call(logits, target, weight, class_weights, boundary_weight, boundary_radius, ignore_index,
                label_smoothing, squared, lambda_ce, lambda_dice, smooth_nr, smooth_dr, batch, log_dice,
                include_background, average, reduction);
    ctx->mark_non_differentiable({factors});
    ctx->set_materialize_grads(false);  // no zeros for the factors' gradient
    ctx->save_for_backward({factors, logits, target, weight.value_or(Tensor()), class_weights.value_or(Tensor())});
    ctx->saved_data["boundary_weight"] = boundary_weight;
    ctx->saved_data["boundary_radius"] = boundary_radius;
    ctx->saved_data["ignore_index"] = ignore_index.has_value() ? c10::IValue(*ignore_index) : c10::IValue();
    ctx->saved_data["label_smoothing"] = label_smoothing;
    ctx->saved_data["squared"] = squared;
    ctx->saved_data["batch"] = batch;
    ctx->saved_data["reduction"] = reduction;
    return {loss, factors};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    refuse_double_backward("brnnseg::ce_dice_loss");
    torch::autograd::variable_list out(18);
    if (!grads[0].defined()) return out;
    static const auto op = loss_op<decltype(ce_dice_loss_backward_cpu)>("brnnseg::ce_dice_loss_backward");
    const auto saved = ctx->get_saved_variables();
    const auto& sd = ctx->saved_data;
    const c10::IValue& ign = sd.at("ignore_index");
    out[0] = op.call(grads[0], saved[0], saved[1], saved[2], saved_optional(saved[3]), saved_optional(saved[4]),
                     sd.at("boundary_weight").toDouble(), sd.at("boundary_radius").toInt(),
                     ign.isNone() ? std::nullopt : std::optional<int64_t>(ign.toInt()),
                     sd.at("label_smoothing").toDouble(), sd.at("squared").toBool(), sd.at("batch").toBool(),
                     sd.at("reduction").toStringRef());
    return out;
  }
};

std::tuple<Tensor, Tensor> ce_dice_loss_autograd_cpu(
    const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
    const std::optional<Tensor>& class_weights, double boundary_weight, int64_t boundary_radius,
    std::optional<int64_t> ignore_index, double label_smoothing, bool squared, double lambda_ce, double lambda_dice,
    double smooth_nr, double smooth_dr, bool batch, bool log_dice, bool include_background, c10::string_view average,
    c10::string_view reduction) {
  auto out = CeDiceLossCpuFunction::apply(logits, target, weight, class_weights,
                                          boundary_weight, boundary_radius, ignore_index, label_smoothing, squared,
                                          lambda_ce, lambda_dice, smooth_nr, smooth_dr, batch, log_dice,
                                          include_background, std::string(average), std::string(reduction));
  return {out[0], out[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(brnnseg, CPU, m) {
  m.impl("ce_dice_sums", &ce_dice_sums_cpu);
  m.impl("ce_dice_sums_backward", &ce_dice_sums_backward_cpu);
  m.impl("ce_dice_loss", &ce_dice_loss_cpu);
  m.impl("ce_dice_loss_backward", &ce_dice_loss_backward_cpu);
}

TORCH_LIBRARY_IMPL(brnnseg, AutogradCPU, m) { m.impl("ce_dice_loss", &ce_dice_loss_autograd_cpu); }

}  // namespace brnnseg::cpu
