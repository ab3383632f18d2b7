// See weight_transpose.h.
#include "cpu/gemm/weight_transpose.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/runtime/cpu_tensors.h"

namespace brnnseg::cpu {
namespace {

constexpr int64_t kBlock = 32;

// Rows [r0, r1) of src (R x K, row-major) into columns [r0, r1) of dst (K x R, row-major), in
// kBlock x kBlock tiles: each tile's source and destination lines stay in L1 while it is copied.
// noinline: inlined into the OpenMP-outlined parallel_for body, GCC kept the loop's pointers on the
// stack (a load and a store per element).
template <typename T>
__attribute__((noinline)) void transpose_rows(const T* __restrict src, T* __restrict dst, int64_t R, int64_t K,
                                              int64_t r0, int64_t r1) {
  for (int64_t k0 = 0; k0 < K; k0 += kBlock) {
    const int64_t k1 = std::min(k0 + kBlock, K);
    for (int64_t k = k0; k < k1; ++k) {
      const T* __restrict s = src + k;
      T* __restrict d = dst + k * R;
      for (int64_t r = r0; r < r1; ++r) d[r] = s[r * K];
    }
  }
}

}  // namespace

at::Tensor transposed_weights(const at::Tensor& w_in) {
  TORCH_CHECK(w_in.dim() == 3, "transposed_weights: expected (D, R, K), got ", w_in.sizes());
  const at::Tensor w = w_in.contiguous();
  const int64_t D = w.size(0), R = w.size(1), K = w.size(2);
  at::Tensor out = empty_large({D, K, R}, w.options());
  const int64_t blocks = (R + kBlock - 1) / kBlock;
  dispatch_float_double("transposed_weights", w.scalar_type(), [&](auto v) {
    using T = decltype(v);
    const T* src = w.data_ptr<T>();
    T* dst = out.data_ptr<T>();
    // Grain: a few blocks per task, so small weights stay on one thread.
    at::parallel_for(0, D * blocks, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, kBlock * K)),
                     [&](int64_t b0, int64_t b1) {
                       for (int64_t b = b0; b < b1; ++b) {
                         const int64_t d = b / blocks, r0 = (b % blocks) * kBlock;
                         transpose_rows(src + d * R * K, dst + d * K * R, R, K, r0, std::min(r0 + kBlock, R));
                       }
                     });
  });
  return out;
}

at::Tensor position_major(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "position_major: expected (N, C, H, W), got ", x.sizes());
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return x;
  const at::Tensor xc = x.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  // (N, C, HW) -> (N, HW, C) by the blocked transpose, as raw 2-, 4- or 8-byte elements.
  at::Tensor out = at::empty({N, H, W, C}, x.options()).permute({0, 3, 1, 2});
  const int64_t R = C, K = H * W, blocks = (R + kBlock - 1) / kBlock;
  auto run = [&](auto v) {
    using E = decltype(v);
    const E* src = static_cast<const E*>(xc.data_ptr());
    E* dst = static_cast<E*>(out.data_ptr());
    at::parallel_for(0, N * blocks, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, kBlock * K)),
                     [&](int64_t b0, int64_t b1) {
                       for (int64_t b = b0; b < b1; ++b) {
                         const int64_t n = b / blocks, r0 = (b % blocks) * kBlock;
                         transpose_rows(src + n * R * K, dst + n * K * R, R, K, r0, std::min(r0 + kBlock, R));
                       }
                     });
  };
  switch (x.element_size()) {
    case 2: run(uint16_t{}); break;
    case 4: run(uint32_t{}); break;
    case 8: run(uint64_t{}); break;
    default: return x.contiguous(at::MemoryFormat::ChannelsLast);
  }
  return out;
}

at::Tensor weight_pairs(const at::Tensor& w, bool transposed) {
  TORCH_CHECK(w.dim() == 3, "weight_pairs: expected (D, R, K), got ", w.sizes());
  const int64_t D = w.size(0), R = w.size(1), K = w.size(2);
  at::Tensor b = w.to(at::kBFloat16);  // round to nearest even, as the per-step operands
  if (transposed) {
    if (K % 2) b = at::constant_pad_nd(b, {0, 1});
    // (D, R, K2) pairs -> (D, K2, R)
    return b.contiguous().view(at::kInt).transpose(1, 2).contiguous();
  }
  if (R % 2) b = at::constant_pad_nd(b, {0, 0, 0, 1});
  // (D, R2, 2, K) -> (D, R2, K, 2): rows 2j and 2j+1 interleaved
  return b.contiguous().view({D, (R + 1) / 2, 2, K}).permute({0, 1, 3, 2}).contiguous().view(at::kInt).view({D, (R + 1) / 2, K});
}

}  // namespace brnnseg::cpu
