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
#include <cstdint>
#include <vector>

#include "brnnseg/loss/seg_loss_math.h"

namespace brnnseg::cpu {
namespace {

using at::Tensor;

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
  int64_t radius;
  bool has_ignore;
  double ignore_value;
  bool squared;
};

LossShape loss_shape(const char* op, const Tensor& logits) {
  TORCH_CHECK(logits.dim() == 4 || logits.dim() == 5, op,
              ": logits must be (N, C, H, W) or (N, C, D, H, W), got shape ", logits.sizes());
  if (logits.dim() == 4) return {logits.size(0), logits.size(1), 1, logits.size(2), logits.size(3)};
  return {logits.size(0), logits.size(1), logits.size(2), logits.size(3), logits.size(4)};
}

void check_loss_inputs(const char* op, const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                       const Tensor& pos_weight, int64_t radius) {
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
  TORCH_CHECK(radius >= 0, op, ": boundary_radius must be >= 0, got ", radius);
}

// Boundary flags of rows [h0, h1) of depth slice d of one (n, c) volume: flag = the clipped
// (2r+1)^dims neighbourhood holds a foreground (> 0.5) and a background pixel, ignored pixels
// being neither. The neighbourhood test is separable: OR over depth, then along W, then along H.
template <typename Y>
void boundary_rows(const Y* vol, const LossShape& s, int64_t d, int64_t h0, int64_t h1, int64_t r, bool has_ignore,
                   double ignore, std::vector<uint8_t>& scratch, uint8_t* flags) {
  const int64_t W = s.W, hlo = std::max<int64_t>(0, h0 - r), hhi = std::min(s.H, h1 + r);
  const int64_t rows = hhi - hlo;
  scratch.assign(4 * rows * W, 0);
  uint8_t* a_fg = scratch.data();
  uint8_t* a_bg = a_fg + rows * W;
  uint8_t* b_fg = a_bg + rows * W;
  uint8_t* b_bg = b_fg + rows * W;
  const int64_t dlo = s.D > 1 ? std::max<int64_t>(0, d - r) : 0, dhi = s.D > 1 ? std::min(s.D, d + r + 1) : 1;
  for (int64_t dd = dlo; dd < dhi; ++dd) {
    for (int64_t i = 0; i < rows; ++i) {
      const Y* row = vol + (dd * s.H + hlo + i) * W;
      for (int64_t w = 0; w < W; ++w) {
        const double v = static_cast<double>(row[w]);
        const bool valid = !(has_ignore && v == ignore);
        a_fg[i * W + w] |= valid && v > 0.5;
        a_bg[i * W + w] |= valid && v <= 0.5;
      }
    }
  }
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t w = 0; w < W; ++w) {
      uint8_t f = 0, b = 0;
      for (int64_t k = std::max<int64_t>(0, w - r); k <= std::min(W - 1, w + r); ++k) {
        f |= a_fg[i * W + k];
        b |= a_bg[i * W + k];
      }
      b_fg[i * W + w] = f;
      b_bg[i * W + w] = b;
    }
  }
  for (int64_t h = h0; h < h1; ++h) {
    for (int64_t w = 0; w < W; ++w) {
      uint8_t f = 0, b = 0;
      for (int64_t hh = std::max(hlo, h - r); hh < std::min(hhi, h + r + 1); ++hh) {
        f |= b_fg[(hh - hlo) * W + w];
        b |= b_bg[(hh - hlo) * W + w];
      }
      flags[(h - h0) * W + w] = f & b;
    }
  }
}

// Calls body(n, c, d, h0, h1, unit) for every work unit, each on one thread.
template <typename F>
void for_each_unit(const LossShape& s, F&& body) {
  const int64_t bps = s.blocks_per_slice();
  at::parallel_for(0, s.units(), 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t blk = u % bps, slice = u / bps;  // slice = (n*C + c)*D + d
      const int64_t d = slice % s.D, nc = slice / s.D;
      const int64_t h0 = blk * kRowBlock, h1 = std::min(s.H, h0 + kRowBlock);
      body(nc / s.C, nc % s.C, d, h0, h1, u);
    }
  });
}

template <typename T, typename Y>
Tensor seg_loss_sums_impl(const Tensor& x, const Tensor& y, const std::optional<Tensor>& weight,
                          const LossArgs<T>& a) {
  const LossShape& s = a.s;
  const int64_t W = s.W, plane = s.D * s.H * W;
  Tensor partial = at::zeros({std::max<int64_t>(s.units(), 1), kNumSums}, x.options().dtype(at::kDouble));
  const T* xp = x.data_ptr<T>();
  const Y* yp = y.data_ptr<Y>();
  const T* wp = weight.has_value() ? weight->data_ptr<T>() : nullptr;
  double* pp = partial.data_ptr<double>();
  const bool use_boundary = a.boundary_weight != T(0);
  for_each_unit(s, [&](int64_t n, int64_t c, int64_t d, int64_t h0, int64_t h1, int64_t u) {
    thread_local std::vector<uint8_t> scratch, flags;
    const int64_t base = (n * s.C + c) * plane;
    if (use_boundary) {
      flags.resize((h1 - h0) * W);
      boundary_rows(yp + base, s, d, h0, h1, a.radius, a.has_ignore, a.ignore_value, scratch, flags.data());
    }
    const T pw = a.pos_weight[c], bw = a.boundary_weight;
    const T ign = static_cast<T>(a.ignore_value);
    double acc[kNumSums] = {0, 0, 0, 0, 0};
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t off = base + (d * s.H + h) * W;
      const T* xr = xp + off;
      const Y* yr = yp + off;
      const T* wr = wp ? wp + off : nullptr;
      const uint8_t* fr = use_boundary ? flags.data() + (h - h0) * W : nullptr;
      T sb = 0, sk = 0, si = 0, sp = 0, sy = 0;
#pragma omp simd reduction(+ : sb, sk, si, sp, sy)
      for (int64_t w = 0; w < W; ++w) {
        const T yv_raw = static_cast<T>(yr[w]);
        const T valid = (a.has_ignore && yv_raw == ign) ? T(0) : T(1);
        const T yv = valid * yv_raw;
        const LogitTerms<T> lt = logit_terms(xr[w]);
        T m = fr ? T(1) + bw * T(fr[w]) : T(1);
        if (wr) m *= wr[w];
        sb += valid * m * bce_value(lt, yv, pw);
        sk += valid;
        si += valid * lt.p * yv;
        sp += valid * (a.squared ? lt.p * lt.p : lt.p);
        sy += a.squared ? yv * yv : yv;
      }
      acc[kBceSum] += sb;
      acc[kCount] += sk;
      acc[kInter] += si;
      acc[kPredSum] += sp;
      acc[kTargetSum] += sy;
    }
    for (int k = 0; k < kNumSums; ++k) pp[u * kNumSums + k] = acc[k];
  });
  // Second stage, in a fixed order: units of one (n, c) are consecutive.
  Tensor sums = partial.narrow(0, 0, s.units()).view({s.N, s.C, -1, kNumSums}).sum(2);
  return sums.to(x.scalar_type());
}

template <typename T, typename Y>
Tensor seg_loss_backward_impl(const Tensor& g, const Tensor& x, const Tensor& y, const std::optional<Tensor>& weight,
                              const LossArgs<T>& a) {
  const LossShape& s = a.s;
  const int64_t W = s.W, plane = s.D * s.H * W;
  Tensor dx = at::empty_like(x);
  const Tensor gc = g.to(x.scalar_type()).contiguous();
  const T* gp = gc.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  const Y* yp = y.data_ptr<Y>();
  const T* wp = weight.has_value() ? weight->data_ptr<T>() : nullptr;
  T* dp = dx.data_ptr<T>();
  const bool use_boundary = a.boundary_weight != T(0);
  for_each_unit(s, [&](int64_t n, int64_t c, int64_t d, int64_t h0, int64_t h1, int64_t) {
    thread_local std::vector<uint8_t> scratch, flags;
    const int64_t base = (n * s.C + c) * plane;
    if (use_boundary) {
      flags.resize((h1 - h0) * W);
      boundary_rows(yp + base, s, d, h0, h1, a.radius, a.has_ignore, a.ignore_value, scratch, flags.data());
    }
    const T* gnc = gp + (n * s.C + c) * kNumSums;
    const T g_bce = gnc[kBceSum], g_inter = gnc[kInter], g_pred = gnc[kPredSum];
    const T pw = a.pos_weight[c], bw = a.boundary_weight;
    const T ign = static_cast<T>(a.ignore_value);
    for (int64_t h = h0; h < h1; ++h) {
      const int64_t off = base + (d * s.H + h) * W;
      const T* xr = xp + off;
      const Y* yr = yp + off;
      const T* wr = wp ? wp + off : nullptr;
      const uint8_t* fr = use_boundary ? flags.data() + (h - h0) * W : nullptr;
      T* dr = dp + off;
#pragma omp simd
      for (int64_t w = 0; w < W; ++w) {
        const T yv_raw = static_cast<T>(yr[w]);
        const T valid = (a.has_ignore && yv_raw == ign) ? T(0) : T(1);
        const T yv = valid * yv_raw;
        const LogitTerms<T> lt = logit_terms(xr[w]);
        T m = fr ? T(1) + bw * T(fr[w]) : T(1);
        if (wr) m *= wr[w];
        const T dsig = lt.p * (T(1) - lt.p);
        const T dpred = a.squared ? T(2) * lt.p * dsig : dsig;
        dr[w] = valid * (g_bce * m * bce_grad(lt, yv, pw) + g_inter * yv * dsig + g_pred * dpred);
      }
    }
  });
  return dx;
}

template <typename F>
void dispatch_loss(const char* op, const Tensor& logits, const Tensor& target, F&& f) {
  auto with_target = [&](auto tv) {
    switch (target.scalar_type()) {
      case at::kBool: return f(tv, bool{});
      case at::kByte: return f(tv, uint8_t{});
      case at::kInt: return f(tv, int32_t{});
      case at::kLong: return f(tv, int64_t{});
      case at::kFloat: return f(tv, float{});
      case at::kDouble: return f(tv, double{});
      default:
        TORCH_CHECK(false, op, ": target dtype ", target.scalar_type(),
                    " is not supported (bool, uint8, int32, int64, float32, float64)");
    }
  };
  switch (logits.scalar_type()) {
    case at::kFloat: return with_target(float{});
    case at::kDouble: return with_target(double{});
    default:
      TORCH_CHECK(false, op, ": the CPU kernel supports float32 and float64 logits, got ", logits.scalar_type());
  }
}

template <typename T>
LossArgs<T> make_args(const LossShape& s, const Tensor& pos_weight, double boundary_weight, int64_t radius,
                      std::optional<double> ignore_value, bool squared) {
  return {s, pos_weight.data_ptr<T>(), static_cast<T>(boundary_weight), radius, ignore_value.has_value(),
          ignore_value.value_or(0.0), squared};
}

Tensor seg_loss_sums_cpu(const Tensor& logits, const Tensor& target, const std::optional<Tensor>& weight,
                         const Tensor& pos_weight, double boundary_weight, int64_t radius,
                         std::optional<double> ignore_value, bool squared) {
  const char* op = "seg_loss_sums";
  check_loss_inputs(op, logits, target, weight, pos_weight, radius);
  const LossShape s = loss_shape(op, logits);
  const Tensor x = logits.contiguous(), y = target.contiguous();
  const Tensor pw = pos_weight.to(logits.scalar_type()).contiguous();
  std::optional<Tensor> w;
  if (weight.has_value()) w = weight->to(logits.scalar_type()).contiguous();
  Tensor out;
  dispatch_loss(op, x, y, [&](auto tv, auto yv) {
    using T = decltype(tv);
    using Y = decltype(yv);
    out = seg_loss_sums_impl<T, Y>(x, y, w, make_args<T>(s, pw, boundary_weight, radius, ignore_value, squared));
  });
  return out;
}

Tensor seg_loss_sums_backward_cpu(const Tensor& grad_sums, const Tensor& logits, const Tensor& target,
                                  const std::optional<Tensor>& weight, const Tensor& pos_weight, double boundary_weight,
                                  int64_t radius, std::optional<double> ignore_value, bool squared) {
  const char* op = "seg_loss_sums_backward";
  check_loss_inputs(op, logits, target, weight, pos_weight, radius);
  const LossShape s = loss_shape(op, logits);
  TORCH_CHECK(grad_sums.dim() == 3 && grad_sums.size(0) == s.N && grad_sums.size(1) == s.C &&
                  grad_sums.size(2) == kNumSums,
              op, ": grad_sums must have shape (N, C, 5) = (", s.N, ", ", s.C, ", 5), got ", grad_sums.sizes());
  const Tensor x = logits.contiguous(), y = target.contiguous();
  const Tensor pw = pos_weight.to(logits.scalar_type()).contiguous();
  std::optional<Tensor> w;
  if (weight.has_value()) w = weight->to(logits.scalar_type()).contiguous();
  Tensor out;
  dispatch_loss(op, x, y, [&](auto tv, auto yv) {
    using T = decltype(tv);
    using Y = decltype(yv);
    out = seg_loss_backward_impl<T, Y>(grad_sums, x, y, w,
                                       make_args<T>(s, pw, boundary_weight, radius, ignore_value, squared));
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(brnnseg, CPU, m) {
  m.impl("seg_loss_sums", &seg_loss_sums_cpu);
  m.impl("seg_loss_sums_backward", &seg_loss_sums_backward_cpu);
}

}  // namespace brnnseg::cpu
