// See weight_transpose.h.
#include "cpu/gemm/weight_transpose.h"

#include <ATen/Parallel.h>

#include <algorithm>

#include "cpu/gemm/gemm_bf16.h"
#include "cpu/gemm/transpose16.h"
#include "cpu/runtime/cpu_tensors.h"
#include "cpu/runtime/isa.h"

namespace brnnseg::cpu {
namespace {

constexpr int64_t kBlock = 32;

// Rows [r0, r1) of src (R x K, row-major) into columns [r0, r1) of dst (K x R, row-major), in
// kRows x kCols tiles. Only 8 source rows at a time: they lie K elements apart, often a multiple of
// 4 KiB, so all of them fall in one L1 set; 32 rows (the first version) thrashed an 8-way L1 and ran
// at 1.7-2 ns per element here, 8 rows at 0.3-0.6 ns.
// noinline: inlined into the OpenMP-outlined parallel_for body, GCC kept the loop's pointers on the
// stack (a load and a store per element).
constexpr int64_t kRows = 8, kCols = 64;
// dst[k*R + r] = src0[r*K + k] (+ src1[r*K + k] when kSum), converted to D, for r in [r0, r1) and k in
// [k0, k1).
template <typename S, typename D, bool kSum = false>
__attribute__((noinline)) void transpose_tile(const S* __restrict src0, const S* __restrict src1, D* __restrict dst,
                                              int64_t R, int64_t K, int64_t r0, int64_t r1, int64_t k0,
                                              int64_t k1) {
  for (int64_t rs = r0; rs < r1; rs += kRows) {
    const int64_t re = std::min(rs + kRows, r1);
    for (int64_t kb = k0; kb < k1; kb += kCols) {
      const int64_t ke = std::min(kb + kCols, k1);
      for (int64_t k = kb; k < ke; ++k) {
        D* __restrict d = dst + k * R;
        for (int64_t r = rs; r < re; ++r) {
          if constexpr (kSum) d[r] = static_cast<D>(src0[r * K + k] + src1[r * K + k]);
          else d[r] = static_cast<D>(src0[r * K + k]);
        }
      }
    }
  }
}
#if defined(__x86_64__) && defined(__GNUC__)
// transpose_tile for 2-byte elements (bfloat16 and float16 maps) on AVX-512, in 32 x 16 blocks: source rows
// 2i and 2i+1 interleaved into 32-bit pairs (16 rows of 16 pairs), those transposed in registers as 32-bit
// values (transpose16_regs, cpu/gemm/transpose16.h), each result row then holding one column's 32 values in order.
// The scalar loop spent 1 store per element: 5 % of a cpu-hires bfloat16 GRU forward+backward (perf).
__attribute__((target("avx512f,avx512bw"))) void transpose_u16_avx512(const uint16_t* __restrict src,
                                                                      uint16_t* __restrict dst, int64_t R, int64_t K,
                                                                      int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
  for (int64_t r = r0; r + 32 <= r1; r += 32) {
    for (int64_t k = k0; k + 16 <= k1; k += 16) {
      __m512i v[16];
      for (int i = 0; i < 16; ++i) {
        const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + (r + 2 * i) * K + k)));
        const __m512i hi = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + (r + 2 * i + 1) * K + k)));
        v[i] = _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
      }
      transpose16_regs(v);
      for (int j = 0; j < 16; ++j) _mm512_storeu_si512(dst + (k + j) * R + r, v[j]);
    }
  }
}
#endif

// transpose_tile, with 2-byte elements through transpose_u16_avx512 where the CPU has AVX-512 (its whole
// 32 x 16 blocks; the edges, and other element sizes, by transpose_tile).
template <typename E>
void transpose_part(const E* src, E* dst, int64_t R, int64_t K, int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (sizeof(E) == 2) {
    if (cpu_isa() == Isa::kAvx512) {
      const int64_t r32 = r0 + (r1 - r0) / 32 * 32, k16 = k0 + (k1 - k0) / 16 * 16;
      transpose_u16_avx512(reinterpret_cast<const uint16_t*>(src), reinterpret_cast<uint16_t*>(dst), R, K, r0, r32, k0,
                           k16);
      if (k16 < k1) transpose_tile<E, E>(src, nullptr, dst, R, K, r0, r32, k16, k1);
      if (r32 < r1) transpose_tile<E, E>(src, nullptr, dst, R, K, r32, r1, k0, k1);
      return;
    }
  }
#endif
  transpose_tile<E, E>(src, nullptr, dst, R, K, r0, r1, k0, k1);
}

#if defined(__x86_64__) && defined(__GNUC__)
// sum_directions' kernels for a bfloat16 dx on AVX512-BF16: float parts summed, rounded by vcvtneps2bf16
// (to nearest even, as c10::BFloat16). The loops they replace (c10::BFloat16's rounding does not
// vectorise) were 4.4 % of a cpu-hires bfloat16 GRU forward+backward (perf); float32 dx keeps the loops.
#define BRNNSEG_SUM_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
BRNNSEG_SUM_TARGET inline void store_bf16x16(uint16_t* dst, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(v));
}
// dst[i] = a[i] + b[i] over the whole vectors of n (the channels_last case); returns how many were done.
BRNNSEG_SUM_TARGET int64_t sum_bf16_avx512(const float* a, const float* b, uint16_t* dst, int64_t n) {
  const int64_t n16 = n / 16 * 16;
  for (int64_t i = 0; i < n16; i += 16) store_bf16x16(dst + i, _mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i)));
  return n16;
}
// dst[k*R + r] = a[r*K + k] + b[r*K + k] over whole 16 x 16 blocks of [r0, r1) x [0, k16) (the NCHW case):
// the sums transposed in registers. Returns the end of the rows done.
BRNNSEG_SUM_TARGET int64_t sum_transposed_bf16_avx512(const float* a, const float* b, uint16_t* dst, int64_t R,
                                                      int64_t K, int64_t r0, int64_t r1, int64_t k16) {
  const int64_t r16 = r0 + (r1 - r0) / 16 * 16;
  for (int64_t r = r0; r < r16; r += 16) {
    for (int64_t k = 0; k < k16; k += 16) {
      __m512i v[16];
      for (int i = 0; i < 16; ++i)
        v[i] = _mm512_castps_si512(_mm512_add_ps(_mm512_loadu_ps(a + (r + i) * K + k), _mm512_loadu_ps(b + (r + i) * K + k)));
      transpose16_regs(v);
      for (int j = 0; j < 16; ++j) store_bf16x16(dst + (k + j) * R + r, _mm512_castsi512_ps(v[j]));
    }
  }
  return r16;
}
#undef BRNNSEG_SUM_TARGET
#endif

// sum_directions' two cases: the kernels above where they apply, the loops for the rest.
template <typename S, typename D>
void sum_elementwise(const S* a, const S* b, D* out, int64_t n) {
  int64_t i = 0;
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<S, float> && std::is_same_v<D, c10::BFloat16>) {
    if (bf16_gemm_supported()) i = sum_bf16_avx512(a, b, reinterpret_cast<uint16_t*>(out), n);
  }
#endif
  for (; i < n; ++i) out[i] = static_cast<D>(a[i] + b[i]);
}
template <typename S, typename D>
void sum_transposed(const S* a, const S* b, D* out, int64_t R, int64_t K, int64_t r0, int64_t r1) {
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (std::is_same_v<S, float> && std::is_same_v<D, c10::BFloat16>) {
    if (bf16_gemm_supported()) {
      const int64_t k16 = K / 16 * 16;
      const int64_t r16 = sum_transposed_bf16_avx512(a, b, reinterpret_cast<uint16_t*>(out), R, K, r0, r1, k16);
      if (k16 < K) transpose_tile<S, D, true>(a, b, out, R, K, r0, r16, k16, K);
      return transpose_tile<S, D, true>(a, b, out, R, K, r16, r1, 0, K);
    }
  }
#endif
  transpose_tile<S, D, true>(a, b, out, R, K, r0, r1, 0, K);
}

template <typename T>
void transpose_rows(const T* src, T* dst, int64_t R, int64_t K, int64_t r0, int64_t r1) {
  transpose_tile<T, T>(src, nullptr, dst, R, K, r0, r1, 0, K);
}

// Tasks of about kTask elements over (image, chunk of `len`), for parallel_for.
constexpr int64_t kTask = 1 << 15;
int64_t chunk_of(int64_t len, int64_t width) {
  return std::max<int64_t>(kRows, std::min(len, kTask / std::max<int64_t>(1, width)) / kRows * kRows);
}

// dst[d] = src[d]^T for d < D, each (R x K) row-major: blocks of kBlock rows on every thread (a few
// blocks a task, so small weights stay on one thread).
template <typename E>
void transpose_each(const E* src, E* dst, int64_t D, int64_t R, int64_t K) {
  const int64_t blocks = (R + kBlock - 1) / kBlock;
  at::parallel_for(0, D * blocks, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, kBlock * K)),
                   [&](int64_t b0, int64_t b1) {
                     for (int64_t b = b0; b < b1; ++b) {
                       const int64_t d = b / blocks, r0 = (b % blocks) * kBlock;
                       transpose_rows(src + d * R * K, dst + d * K * R, R, K, r0, std::min(r0 + kBlock, R));
                     }
                   });
}

}  // namespace

at::Tensor transposed_weights(const at::Tensor& w_in) {
  TORCH_CHECK(w_in.dim() == 3, "transposed_weights: expected (D, R, K), got ", w_in.sizes());
  const at::Tensor w = w_in.contiguous();
  const int64_t D = w.size(0), R = w.size(1), K = w.size(2);
  at::Tensor out = empty_large({D, K, R}, w.options());
  dispatch_float_double("transposed_weights", w.scalar_type(), [&](auto v) {
    using T = decltype(v);
    transpose_each(w.data_ptr<T>(), out.data_ptr<T>(), D, R, K);
  });
  return out;
}

at::Tensor position_major(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "position_major: expected (N, C, H, W), got ", x.sizes());
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return x;
  const at::Tensor xc = x.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  // (N, C, HW) -> (N, HW, C) by the blocked transpose, as raw 2-, 4- or 8-byte elements; tasks over
  // (image, chunk of positions).
  at::Tensor out = at::empty({N, H, W, C}, x.options()).permute({0, 3, 1, 2});
  const int64_t R = C, K = H * W, chunk = chunk_of(K, R), chunks = (K + chunk - 1) / chunk;
  auto run = [&](auto v) {
    using E = decltype(v);
    const E* src = static_cast<const E*>(xc.data_ptr());
    E* dst = static_cast<E*>(out.data_ptr());
    at::parallel_for(0, N * chunks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n = b / chunks, k0 = (b % chunks) * chunk;
        transpose_part<E>(src + n * R * K, dst + n * K * R, R, K, 0, R, k0, std::min(k0 + chunk, K));
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

void sum_directions(const at::Tensor& parts, at::Tensor& dx) {
  TORCH_CHECK(parts.dim() == 5 && parts.size(0) == 2 && parts.is_contiguous(), "sum_directions: expected (2, N, H, W, C)");
  const int64_t N = parts.size(1), C = parts.size(4), P = parts.size(2) * parts.size(3);
  const bool nhwc = dx.is_contiguous(at::MemoryFormat::ChannelsLast);
  auto run = [&](auto sv, auto dv) {
    using S = decltype(sv);
    using D = decltype(dv);
    const S* a = parts.data_ptr<S>();
    const S* b = a + N * P * C;
    D* out = dx.data_ptr<D>();
    if (nhwc) {
      // dx's memory is (N, H, W, C), the parts' layout: an elementwise sum (at::add_out of a float and a
      // bfloat16 tensor takes TensorIterator's mixed-dtype path, ~12 ns an element: 25 ms at cpu-med).
      at::parallel_for(0, N * P * C, 1 << 15,
                       [&](int64_t i0, int64_t i1) { sum_elementwise(a + i0, b + i0, out + i0, i1 - i0); });
      return;
    }
    // (N, HW, C) + (N, HW, C) -> (N, C, HW): R = HW positions, K = C; tasks over (image, chunk of positions).
    const int64_t chunk = chunk_of(P, C), chunks = (P + chunk - 1) / chunk;
    at::parallel_for(0, N * chunks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t t = b0; t < b1; ++t) {
        const int64_t n = t / chunks, r0 = (t % chunks) * chunk;
        sum_transposed(a + n * P * C, b + n * P * C, out + n * C * P, P, C, r0, std::min(r0 + chunk, P));
      }
    });
  };
  const bool same = parts.scalar_type() == dx.scalar_type();
  if (nhwc || dx.is_contiguous()) {
    if (parts.scalar_type() == at::kDouble && same) return run(double{}, double{});
    if (parts.scalar_type() == at::kFloat && same) return run(float{}, float{});
    if (parts.scalar_type() == at::kFloat && dx.scalar_type() == at::kBFloat16) return run(float{}, c10::BFloat16{});
  }
  at::add_out(dx, parts[0].permute({0, 3, 1, 2}), parts[1].permute({0, 3, 1, 2}));  // other layouts and dtypes
}

at::Tensor weight_pairs(const at::Tensor& w, bool transposed) {
  TORCH_CHECK(w.dim() == 3, "weight_pairs: expected (D, R, K), got ", w.sizes());
  const int64_t D = w.size(0), R = w.size(1), K = w.size(2);
  at::Tensor b = w.to(at::kBFloat16);  // round to nearest even, as the per-step operands
  // Even sizes (every benchmark shape) by the blocked transpose / a row interleave on every thread; the
  // ATen copies below took ~0.1 ms of a 1.9 ms cpu-wide bfloat16 LSTM forward (transposed int32 views).
  if (transposed && K % 2 == 0) {
    // The pairs of row r are the int32 view of its values: (D, R, K2) -> (D, K2, R), a 32-bit transpose.
    const at::Tensor src = b.contiguous();
    const int64_t K2 = K / 2;
    at::Tensor out = empty_large({D, K2, R}, w.options().dtype(at::kInt));
    transpose_each(static_cast<const uint32_t*>(src.data_ptr()), static_cast<uint32_t*>(out.data_ptr()), D, R, K2);
    return out;
  }
  if (!transposed && R % 2 == 0) {
    // Rows 2j and 2j+1 interleaved: pair (j, k) = row 2j's value in the low half, row 2j+1's in the high.
    const at::Tensor src = b.contiguous();
    const int64_t R2 = R / 2;
    at::Tensor out = empty_large({D, R2, K}, w.options().dtype(at::kInt));
    const uint16_t* s = static_cast<const uint16_t*>(src.data_ptr());
    uint32_t* o = static_cast<uint32_t*>(out.data_ptr());
    at::parallel_for(0, D * R2, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, K)), [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        const uint16_t* lo = s + 2 * j * K;
        const uint16_t* hi = lo + K;
        uint32_t* dst = o + j * K;
        for (int64_t k = 0; k < K; ++k) dst[k] = static_cast<uint32_t>(lo[k]) | (static_cast<uint32_t>(hi[k]) << 16);
      }
    });
    return out;
  }
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
