// An AVX-512 float GEMM for the per-step products (see blas.h for why it exists).
//
// C (M x N) = A (M x K) . B (K x N) [+ C]; A element (m, k) at A[m*sam + k*sak] (so A or A^T),
// B row-major with row stride ldb, C row-major. Register blocking: 12 rows x 32 columns of C in
// 24 zmm accumulators; per k one row of two B vectors and 12 broadcast A elements feed 24 FMAs.
// The loop runs each 256 x 32 panel of B (L1 resident) against every 12-row block of A.
// Column tails use masked loads/stores, row tails a kernel instantiated for fewer rows.
#include "cpu/gemm/blas.h"
#include "cpu/runtime/isa.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

namespace brnnseg::cpu {
namespace {

constexpr int kMR = 12;  // rows per micro-tile
constexpr int kNR = 32;  // columns per micro-tile (two zmm)
constexpr int64_t kKC = 256;  // K block

template <int MR>
__attribute__((target("avx512f"))) void micro_tile(int64_t K, const float* A, int64_t sam, int64_t sak,
                                                   const float* B, int64_t ldb, float* C, int64_t ldc,
                                                   bool accumulate, __mmask16 mask0, __mmask16 mask1) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    c0[i] = _mm512_setzero_ps();
    c1[i] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K; ++k) {
    const __m512 b0 = _mm512_maskz_loadu_ps(mask0, B + k * ldb);
    const __m512 b1 = _mm512_maskz_loadu_ps(mask1, B + k * ldb + 16);
    const float* a = A + k * sak;
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(a[i * sam]);
      c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
    }
  }
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    float* c = C + i * ldc;
    if (accumulate) {
      c0[i] = _mm512_add_ps(c0[i], _mm512_maskz_loadu_ps(mask0, c));
      c1[i] = _mm512_add_ps(c1[i], _mm512_maskz_loadu_ps(mask1, c + 16));
    }
    _mm512_mask_storeu_ps(c, mask0, c0[i]);
    _mm512_mask_storeu_ps(c + 16, mask1, c1[i]);
  }
}

using Tile = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t, bool,
                      __mmask16, __mmask16);
constexpr Tile kTiles[kMR + 1] = {nullptr,        micro_tile<1>,  micro_tile<2>, micro_tile<3>, micro_tile<4>,
                                  micro_tile<5>,  micro_tile<6>,  micro_tile<7>, micro_tile<8>, micro_tile<9>,
                                  micro_tile<10>, micro_tile<11>, micro_tile<12>};

__mmask16 lane_mask(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }

}  // namespace

bool avx512_gemm_supported() {
  return cpu_isa() == Isa::kAvx512;
}

void sgemm_avx512(int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak, const float* B,
                  int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  // K in blocks of kKC so a B panel (kKC x 32 floats, 32 KiB) stays in L1 across the row blocks.
  for (int64_t k0 = 0; k0 < K || k0 == 0; k0 += kKC) {
    const int64_t kc = std::min<int64_t>(kKC, K - k0);
    const bool acc = accumulate || k0 > 0;
    for (int64_t n0 = 0; n0 < N; n0 += kNR) {
      const int64_t nb = std::min<int64_t>(kNR, N - n0);
      const __mmask16 m0 = lane_mask(nb), m1 = lane_mask(nb - 16 > 0 ? nb - 16 : 0);
      for (int64_t r0 = 0; r0 < M; r0 += kMR) {
        const int mr = static_cast<int>(std::min<int64_t>(kMR, M - r0));
        kTiles[mr](kc, A + r0 * sam + k0 * sak, sam, sak, B + k0 * ldb + n0, ldb, C + r0 * ldc + n0, ldc, acc, m0,
                   m1);
      }
    }
  }
}

}  // namespace brnnseg::cpu

#else

namespace brnnseg::cpu {
bool avx512_gemm_supported() { return false; }
void sgemm_avx512(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*, int64_t,
                  bool) {}
}  // namespace brnnseg::cpu

#endif
