// The bfloat16 GEMM (see gemm_bf16.h). Register blocking as in the float kernel (gemm_avx512.cpp):
// 12 rows x 32 columns of C in 24 zmm accumulators; per pair of k one row of two B vectors (16 pairs
// each) and 12 broadcast A pairs feed 24 vdpbf16ps, 64 multiply-adds per C element pair of vectors.
// Each K2 x 32 panel of B (kKC2 pairs deep, 16 KiB) stays in L1 across the row blocks. Column tails use
// masked loads and stores, row tails a kernel instantiated for fewer rows.
//
// On a CPU with AMX-BF16 (and the OS's permission, runtime/isa.h) the whole 16-blocks of a product run on
// the tiles: each tdpbf16ps adds a 16 x 32 by 32 x 16 bfloat16 product into a 16 x 16 float32 tile, and
// the pairs layout above is already the tiles' (an A tile row is 16 pairs of one row; a B tile row 16
// columns of one pair). Four accumulator tiles hold a 32 x 32 block of C, two A and two B tiles feed them
// (tmm0-3 C, tmm4-5 A, tmm6-7 B). What is left over -- K2 % 16 pairs, N % 16 columns, M % 16 rows --
// runs on the AVX512-BF16 kernel above, so no operand is copied to pad it; a transposed A (the weight
// gradients' [K2][M]) is transposed into pairs rows first, once per product.
//
// Where the CPU lacks AVX512-BF16 the same functions run as plain loops with the same rounding (round
// to nearest even, then exact products summed in float32); the tile engine does not call them there
// (bfloat16 sweeps then run their products in float32: recurrence/tile_engine.h), but ctest compares
// both against a double-precision loop.
#include "cpu/gemm/gemm_bf16.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "cpu/gemm/amx_config.h"
#include "cpu/gemm/transpose16.h"
#include "cpu/runtime/isa.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define BRNNSEG_HAVE_X86 1
#endif

namespace brnnseg::cpu {
namespace {

constexpr int kMR = 12;
constexpr int kNR = 32;
constexpr int64_t kKC2 = 128;

// float -> bfloat16 bits, round to nearest even (NaN stays a quiet NaN), as vcvtne2ps2bf16 rounds.
inline uint16_t to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
inline float bf16_lo(uint32_t p) {
  const uint32_t u = p << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float bf16_hi(uint32_t p) {
  const uint32_t u = p & 0xffff0000u;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t pair_bits(float lo, float hi) {
  return static_cast<uint32_t>(to_bf16_bits(lo)) | (static_cast<uint32_t>(to_bf16_bits(hi)) << 16);
}

void pack_along_plain(const float* src, int64_t ld, int64_t M, int64_t K, uint32_t* dst) {
  const int64_t K2 = (K + 1) / 2;
  for (int64_t m = 0; m < M; ++m) {
    const float* s = src + m * ld;
    for (int64_t j = 0; j < K2; ++j) dst[m * K2 + j] = pair_bits(s[2 * j], 2 * j + 1 < K ? s[2 * j + 1] : 0.f);
  }
}

void pack_across_plain(const float* src, int64_t ld, int64_t K, int64_t N, uint32_t* dst) {
  const int64_t K2 = (K + 1) / 2;
  for (int64_t j = 0; j < K2; ++j) {
    const float* r0 = src + 2 * j * ld;
    const float* r1 = 2 * j + 1 < K ? r0 + ld : nullptr;
    for (int64_t n = 0; n < N; ++n) dst[j * N + n] = pair_bits(r0[n], r1 ? r1[n] : 0.f);
  }
}

void gemm_pairs_plain(int64_t M, int64_t N, int64_t K2, const uint32_t* A, int64_t sam, int64_t sak,
                      const uint32_t* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t n = 0; n < N; ++n) {
      float acc = accumulate ? C[i * ldc + n] : 0.f;
      for (int64_t j = 0; j < K2; ++j) {
        const uint32_t a = A[i * sam + j * sak], b = B[j * ldb + n];
        acc += bf16_lo(a) * bf16_lo(b) + bf16_hi(a) * bf16_hi(b);
      }
      C[i * ldc + n] = acc;
    }
}

#ifdef BRNNSEG_HAVE_X86

inline __mmask16 lane_mask(int64_t n) {
  return n >= 16 ? __mmask16(0xFFFF) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) void pack_along_avx512(const float* src, int64_t ld,
                                                                                int64_t M, int64_t K,
                                                                                uint32_t* dst) {
  const int64_t K2 = (K + 1) / 2;
  for (int64_t m = 0; m < M; ++m) {
    const float* s = src + m * ld;
    uint32_t* d = dst + m * K2;
    for (int64_t k = 0; k < K; k += 32) {
      const __m512 lo = _mm512_maskz_loadu_ps(lane_mask(K - k), s + k);
      const __m512 hi = _mm512_maskz_loadu_ps(lane_mask(K - k - 16), s + k + 16);
      const __m512bh r = _mm512_cvtne2ps_pbh(hi, lo);  // lanes 0-15 from lo, 16-31 from hi
      _mm512_mask_storeu_epi32(d + k / 2, lane_mask((K - k + 1) / 2), (__m512i)r);
    }
  }
}

// 16 lanes of two rows (a: the even k, b: the odd) rounded to bfloat16 and interleaved into 16 pairs:
// 16-bit lane i of the result takes lane kIdx[i] of [a (0-15) | b (16-31)].
__attribute__((target("avx512f,avx512bw,avx512bf16"), always_inline)) inline __m512i pair_rows(__m512 a, __m512 b) {
  alignas(64) static const uint16_t kIdx[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  return _mm512_permutexvar_epi16(_mm512_load_si512(kIdx), (__m512i)_mm512_cvtne2ps_pbh(b, a));
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) void pack_across_avx512(const float* src, int64_t ld,
                                                                                 int64_t K, int64_t N,
                                                                                 uint32_t* dst) {
  const int64_t K2 = (K + 1) / 2;
  for (int64_t j = 0; j < K2; ++j) {
    const float* r0 = src + 2 * j * ld;
    const bool has1 = 2 * j + 1 < K;
    const float* r1 = r0 + ld;
    uint32_t* d = dst + j * N;
    for (int64_t n = 0; n < N; n += 16) {
      const __mmask16 m = lane_mask(N - n);
      const __m512 a = _mm512_maskz_loadu_ps(m, r0 + n);
      const __m512 b = has1 ? _mm512_maskz_loadu_ps(m, r1 + n) : _mm512_setzero_ps();
      _mm512_mask_storeu_epi32(d + n, m, pair_rows(a, b));
    }
  }
}

template <int MR>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void micro_tile(int64_t K2, const uint32_t* A, int64_t sam,
                                                                        int64_t sak, const uint32_t* B,
                                                                        int64_t ldb, float* C, int64_t ldc,
                                                                        bool accumulate, __mmask16 mask0,
                                                                        __mmask16 mask1) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) {
    c0[i] = _mm512_setzero_ps();
    c1[i] = _mm512_setzero_ps();
  }
  for (int64_t k = 0; k < K2; ++k) {
    const __m512bh b0 = (__m512bh)_mm512_maskz_loadu_epi32(mask0, B + k * ldb);
    const __m512bh b1 = (__m512bh)_mm512_maskz_loadu_epi32(mask1, B + k * ldb + 16);
    const uint32_t* a = A + k * sak;
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m512bh ai = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[i * sam]));
      c0[i] = _mm512_dpbf16_ps(c0[i], ai, b0);
      c1[i] = _mm512_dpbf16_ps(c1[i], ai, b1);
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

using Tile = void (*)(int64_t, const uint32_t*, int64_t, int64_t, const uint32_t*, int64_t, float*, int64_t, bool,
                      __mmask16, __mmask16);
constexpr Tile kTiles[kMR + 1] = {nullptr,        micro_tile<1>,  micro_tile<2>, micro_tile<3>, micro_tile<4>,
                                  micro_tile<5>,  micro_tile<6>,  micro_tile<7>, micro_tile<8>, micro_tile<9>,
                                  micro_tile<10>, micro_tile<11>, micro_tile<12>};

void gemm_pairs_avx512(int64_t M, int64_t N, int64_t K2, const uint32_t* A, int64_t sam, int64_t sak,
                       const uint32_t* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  for (int64_t k0 = 0; k0 < K2 || k0 == 0; k0 += kKC2) {
    const int64_t kc = std::min<int64_t>(kKC2, K2 - k0);
    const bool acc = accumulate || k0 > 0;
    for (int64_t n0 = 0; n0 < N; n0 += kNR) {
      const int64_t nb = std::min<int64_t>(kNR, N - n0);
      const __mmask16 m0 = lane_mask(nb), m1 = lane_mask(nb - 16);
      for (int64_t r0 = 0; r0 < M; r0 += kMR) {
        const int mr = static_cast<int>(std::min<int64_t>(kMR, M - r0));
        kTiles[mr](kc, A + r0 * sam + k0 * sak, sam, sak, B + k0 * ldb + n0, ldb, C + r0 * ldc + n0, ldc, acc, m0,
                   m1);
      }
    }
  }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void bf16_from_float_avx512(
    const float* src, int64_t lds, uint16_t* dst, int64_t ldd, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r, src += lds, dst += ldd) {
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = lane_mask(n - i);
      const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, src + i));
      _mm256_mask_storeu_epi16(dst + i, m, (__m256i)v);
    }
  }
}

// Rows a stride apart (a sweep's lines): the source row 4 on is prefetched, as gather_rows did (sweep_cpu.cpp).
__attribute__((target("avx512f,avx512bw,avx512vl"))) void float_from_bf16_avx512(const uint16_t* src, int64_t lds,
                                                                               float* dst, int64_t ldd, int64_t rows,
                                                                               int64_t n, bool accumulate) {
  for (int64_t r = 0; r < rows; ++r, src += lds, dst += ldd) {
    if (rows > 1 && r + 4 < rows)
      for (int64_t o = 0; o < n * 2; o += 64) _mm_prefetch(reinterpret_cast<const char*>(src + 4 * lds) + o, _MM_HINT_T0);
    for (int64_t i = 0; i < n; i += 16) {
      const __mmask16 m = lane_mask(n - i);
      __m512 v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src + i)), 16));
      if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, dst + i));
      _mm512_mask_storeu_ps(dst + i, m, v);
    }
  }
}

#define BRNNSEG_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512bf16")))

// One product of a 16-block region: A rows of pairs (A[m*sam + k2]), B [K2][ldb] pairs, K2 a multiple of 16.
struct AmxOperands {
  int64_t K2;
  const uint32_t* A;
  int64_t sam;
  const uint32_t* B;
  int64_t ldb;
};

// C[0:16*MT, 0:16*NT] (=, or += where accumulate) the sum of n products (1 or 2), at row m0 and column n0
// of each; C float32 (stride ldc). The tile numbers are immediates.
template <int MT, int NT>
BRNNSEG_AMX_TARGET void amx_block(const AmxOperands* ops, int n, int64_t m0, int64_t n0, float* C, int64_t ldc,
                                  bool accumulate) {
  const int64_t sc = ldc * 4;
  float* c1 = C + 16;
  float* c2 = C + 16 * ldc;
  float* c3 = c2 + 16;
  if (accumulate) {
    _tile_loadd(0, C, sc);
    if constexpr (NT == 2) _tile_loadd(1, c1, sc);
    if constexpr (MT == 2) _tile_loadd(2, c2, sc);
    if constexpr (MT == 2 && NT == 2) _tile_loadd(3, c3, sc);
  } else {
    _tile_zero(0);
    if constexpr (NT == 2) _tile_zero(1);
    if constexpr (MT == 2) _tile_zero(2);
    if constexpr (MT == 2 && NT == 2) _tile_zero(3);
  }
  for (int i = 0; i < n; ++i) {
    const AmxOperands& o = ops[i];
    const uint32_t* A = o.A + m0 * o.sam;
    const uint32_t* B = o.B + n0;
    const int64_t sa = o.sam * 4, sb = o.ldb * 4, sam = o.sam, ldb = o.ldb;
    for (int64_t k = 0; k < o.K2; k += 16) {
      _tile_loadd(4, A + k, sa);
      _tile_loadd(6, B + k * ldb, sb);
      if constexpr (NT == 2) _tile_loadd(7, B + k * ldb + 16, sb);
      if constexpr (MT == 2) _tile_loadd(5, A + 16 * sam + k, sa);
      _tile_dpbf16ps(0, 4, 6);
      if constexpr (NT == 2) _tile_dpbf16ps(1, 4, 7);
      if constexpr (MT == 2) _tile_dpbf16ps(2, 5, 6);
      if constexpr (MT == 2 && NT == 2) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, C, sc);
  if constexpr (NT == 2) _tile_stored(1, c1, sc);
  if constexpr (MT == 2) _tile_stored(2, c2, sc);
  if constexpr (MT == 2 && NT == 2) _tile_stored(3, c3, sc);
}

// The 16-blocks (M, N and every K2 multiples of 16) of the sum of n products. The configuration is
// loaded per call (tens of cycles against the thousands of a product) and released after it, so no
// thread carries tile state between calls.
BRNNSEG_AMX_TARGET void amx_blocks(int64_t M, int64_t N, const AmxOperands* ops, int n, float* C, int64_t ldc,
                                   bool accumulate) {
  const AmxConfig cfg;
  _tile_loadconfig(&cfg);
  for (int64_t n0 = 0; n0 < N; n0 += 32) {
    const bool n2 = n0 + 32 <= N;
    for (int64_t m0 = 0; m0 < M; m0 += 32) {
      const bool m2 = m0 + 32 <= M;
      float* c = C + m0 * ldc + n0;
      if (m2 && n2) amx_block<2, 2>(ops, n, m0, n0, c, ldc, accumulate);
      else if (m2) amx_block<2, 1>(ops, n, m0, n0, c, ldc, accumulate);
      else if (n2) amx_block<1, 2>(ops, n, m0, n0, c, ldc, accumulate);
      else amx_block<1, 1>(ops, n, m0, n0, c, ldc, accumulate);
    }
  }
  _tile_release();
}

// dst[j][i] = src[i][j] for a 16 x 16 block of 32-bit values (rows ls / ld apart).
__attribute__((target("avx512f"))) void transpose16(const uint32_t* src, int64_t ls, uint32_t* dst, int64_t ld) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(src + i * ls);
  transpose16_regs(r);
  for (int i = 0; i < 16; ++i) _mm512_storeu_si512(dst + i * ld, r[i]);
}

// transpose_f32 (gemm_bf16.h) on AVX-512: whole 16 x 16 blocks in registers, the edges scalar.
__attribute__((target("avx512f"))) void transpose_f32_avx512(const float* src, int64_t ls, int64_t M, int64_t N,
                                                             float* dst, int64_t ld) {
  const uint32_t* s = reinterpret_cast<const uint32_t*>(src);
  uint32_t* d = reinterpret_cast<uint32_t*>(dst);
  const int64_t M16 = M & ~int64_t(15), N16 = N & ~int64_t(15);
  for (int64_t m0 = 0; m0 < M16; m0 += 16)
    for (int64_t n0 = 0; n0 < N16; n0 += 16) transpose16(s + m0 * ls + n0, ls, d + n0 * ld + m0, ld);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = m < M16 ? N16 : 0; n < N; ++n) d[n * ld + m] = s[m * ls + n];
  }
}

// (K x N) float32 -> [N][K2] rows of pairs, dst[n*K2 + j] = (src[2j][n], src[2j+1][n]): the transposed A
// of a weight gradient (K = the buffered rows) packed and transposed in one pass, 16 pairs x 16 columns
// at a time: rounded and interleaved as pack_across_avx512 does, then transpose16.
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void pack_transposed_avx512(const float* src, int64_t ld,
                                                                                     int64_t K, int64_t N,
                                                                                     uint32_t* dst) {
  const int64_t K2 = (K + 1) / 2;
  for (int64_t n0 = 0; n0 < N; n0 += 16) {
    const __mmask16 mn = lane_mask(N - n0);
    const int64_t nn = std::min<int64_t>(16, N - n0);
    for (int64_t j0 = 0; j0 < K2; j0 += 16) {
      const int64_t jj = std::min<int64_t>(16, K2 - j0);
      __m512i r[16];
      for (int64_t j = 0; j < 16; ++j) {
        const int64_t k = 2 * (j0 + j);
        const __m512 a = k < K ? _mm512_maskz_loadu_ps(mn, src + k * ld + n0) : _mm512_setzero_ps();
        const __m512 b = k + 1 < K ? _mm512_maskz_loadu_ps(mn, src + (k + 1) * ld + n0) : _mm512_setzero_ps();
        r[j] = pair_rows(a, b);
      }
      transpose16_regs(r);
      const __mmask16 mj = lane_mask(jj);
      for (int64_t i = 0; i < nn; ++i) _mm512_mask_storeu_epi32(dst + (n0 + i) * K2 + j0, mj, r[i]);
    }
  }
}

std::vector<uint32_t>& amx_rows_scratch() {
  thread_local std::vector<uint32_t> v;
  return v;
}

void gemm_pairs_amx(int64_t M, int64_t N, int64_t K2, const uint32_t* A, int64_t sam, int64_t sak,
                    const uint32_t* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  const int64_t Mf = M & ~int64_t(15), Nf = N & ~int64_t(15), Kf = K2 & ~int64_t(15);
  if (Mf == 0 || Nf == 0 || Kf == 0) return gemm_pairs_avx512(M, N, K2, A, sam, sak, B, ldb, C, ldc, accumulate);
  const uint32_t* a = A;
  int64_t as = sam;
  if (sak != 1) {  // tiles read rows of pairs: [K2][M] (or any stride) -> [Mf][Kf]
    std::vector<uint32_t>& t = amx_rows_scratch();
    if (static_cast<int64_t>(t.size()) < Mf * Kf) t.resize(Mf * Kf);
    if (sam == 1) {
      for (int64_t k0 = 0; k0 < Kf; k0 += 16)
        for (int64_t m0 = 0; m0 < Mf; m0 += 16) transpose16(A + k0 * sak + m0, sak, t.data() + m0 * Kf + k0, Kf);
    } else {
      for (int64_t m = 0; m < Mf; ++m)
        for (int64_t k = 0; k < Kf; ++k) t[m * Kf + k] = A[m * sam + k * sak];
    }
    a = t.data();
    as = Kf;
  }
  const AmxOperands op{Kf, a, as, B, ldb};
  amx_blocks(Mf, Nf, &op, 1, C, ldc, accumulate);
  if (Kf < K2)  // the last K2 % 16 pairs of the 16-blocks
    gemm_pairs_avx512(Mf, Nf, K2 - Kf, A + Kf * sak, sam, sak, B + Kf * ldb, ldb, C, ldc, true);
  if (Nf < N)  // the last N % 16 columns, every row
    gemm_pairs_avx512(M, N - Nf, K2, A, sam, sak, B + Nf, ldb, C + Nf, ldc, accumulate);
  if (Mf < M)  // the last M % 16 rows, the 16-block columns
    gemm_pairs_avx512(M - Mf, Nf, K2, A + Mf * sam, sam, sak, B, ldb, C + Mf * ldc, ldc, accumulate);
}

// C = A1 . B1 + A2 . B2 (rows of pairs, B [K2][N]): the 16-blocks accumulate both products in the same
// tiles and store once; the edges run on AVX512-BF16, the first product overwriting, the second adding.
void gemm_pairs_sum_amx(int64_t M, int64_t N, int64_t K2a, const uint32_t* A1, int64_t sa1, const uint32_t* B1,
                        int64_t K2b, const uint32_t* A2, int64_t sa2, const uint32_t* B2, int64_t ldb, float* C, int64_t ldc) {
  const int64_t Mf = M & ~int64_t(15), Nf = N & ~int64_t(15);
  const int64_t Ka = K2a & ~int64_t(15), Kb = K2b & ~int64_t(15);
  if (Mf == 0 || Nf == 0 || Ka == 0 || Kb == 0) {
    gemm_pairs_amx(M, N, K2a, A1, sa1, 1, B1, ldb, C, ldc, false);
    gemm_pairs_amx(M, N, K2b, A2, sa2, 1, B2, ldb, C, ldc, true);
    return;
  }
  const AmxOperands ops[2] = {{Ka, A1, sa1, B1, ldb}, {Kb, A2, sa2, B2, ldb}};
  amx_blocks(Mf, Nf, ops, 2, C, ldc, false);
  if (Ka < K2a) gemm_pairs_avx512(Mf, Nf, K2a - Ka, A1 + Ka, sa1, 1, B1 + Ka * ldb, ldb, C, ldc, true);
  if (Kb < K2b) gemm_pairs_avx512(Mf, Nf, K2b - Kb, A2 + Kb, sa2, 1, B2 + Kb * ldb, ldb, C, ldc, true);
  if (Nf < N) {
    gemm_pairs_avx512(M, N - Nf, K2a, A1, sa1, 1, B1 + Nf, ldb, C + Nf, ldc, false);
    gemm_pairs_avx512(M, N - Nf, K2b, A2, sa2, 1, B2 + Nf, ldb, C + Nf, ldc, true);
  }
  if (Mf < M) {
    gemm_pairs_avx512(M - Mf, Nf, K2a, A1 + Mf * sa1, sa1, 1, B1, ldb, C + Mf * ldc, ldc, false);
    gemm_pairs_avx512(M - Mf, Nf, K2b, A2 + Mf * sa2, sa2, 1, B2, ldb, C + Mf * ldc, ldc, true);
  }
}

#endif  // BRNNSEG_HAVE_X86

struct Scratch {
  std::vector<uint32_t> a, b;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

uint32_t* grow(std::vector<uint32_t>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

}  // namespace

void bf16_from_float(const float* src, uint16_t* dst, int64_t n) { bf16_from_float_rows(src, n, dst, n, 1, n); }
void float_from_bf16(const uint16_t* src, float* dst, int64_t n, bool accumulate) {
  float_from_bf16_rows(src, n, dst, n, 1, n, accumulate);
}

void bf16_from_float_rows(const float* src, int64_t lds, uint16_t* dst, int64_t ldd, int64_t rows, int64_t n) {
#ifdef BRNNSEG_HAVE_X86
  if (bf16_gemm_supported()) return bf16_from_float_avx512(src, lds, dst, ldd, rows, n);
#endif
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < n; ++i) dst[r * ldd + i] = to_bf16_bits(src[r * lds + i]);
}

void transpose_f32(const float* src, int64_t ls, int64_t M, int64_t N, float* dst, int64_t ld) {
#ifdef BRNNSEG_HAVE_X86
  if (cpu_isa() == Isa::kAvx512) return transpose_f32_avx512(src, ls, M, N, dst, ld);
#endif
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m) dst[n * ld + m] = src[m * ls + n];
}

void float_from_bf16_rows(const uint16_t* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t n,
                          bool accumulate) {
#ifdef BRNNSEG_HAVE_X86
  if (cpu_isa() == Isa::kAvx512) return float_from_bf16_avx512(src, lds, dst, ldd, rows, n, accumulate);
#endif
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t u = static_cast<uint32_t>(src[r * lds + i]) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      float& d = dst[r * ldd + i];
      d = accumulate ? d + f : f;
    }
  }
}

bool bf16_gemm_supported() { return cpu_bf16_isa() != Bf16Isa::kNone; }

void pack_pairs_along_rows(const float* src, int64_t ld, int64_t M, int64_t K, uint32_t* dst) {
#ifdef BRNNSEG_HAVE_X86
  if (bf16_gemm_supported()) return pack_along_avx512(src, ld, M, K, dst);
#endif
  pack_along_plain(src, ld, M, K, dst);
}

void pack_pairs_transposed(const float* src, int64_t ld, int64_t K, int64_t N, uint32_t* dst) {
#ifdef BRNNSEG_HAVE_X86
  if (bf16_gemm_supported()) return pack_transposed_avx512(src, ld, K, N, dst);
#endif
  const int64_t K2 = (K + 1) / 2;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < K2; ++j)
      dst[n * K2 + j] = pair_bits(src[2 * j * ld + n], 2 * j + 1 < K ? src[(2 * j + 1) * ld + n] : 0.f);
}

void pack_pairs_across_rows(const float* src, int64_t ld, int64_t K, int64_t N, uint32_t* dst) {
#ifdef BRNNSEG_HAVE_X86
  if (bf16_gemm_supported()) return pack_across_avx512(src, ld, K, N, dst);
#endif
  pack_across_plain(src, ld, K, N, dst);
}

void gemm_bf16_pairs(int64_t M, int64_t N, int64_t K2, const uint32_t* A, int64_t sam, int64_t sak,
                     const uint32_t* B, int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
#ifdef BRNNSEG_HAVE_X86
  static const Bf16Isa isa = cpu_bf16_isa();
  if (isa == Bf16Isa::kAmxBf16) return gemm_pairs_amx(M, N, K2, A, sam, sak, B, ldb, C, ldc, accumulate);
  if (isa == Bf16Isa::kAvx512Bf16) return gemm_pairs_avx512(M, N, K2, A, sam, sak, B, ldb, C, ldc, accumulate);
#endif
  gemm_pairs_plain(M, N, K2, A, sam, sak, B, ldb, C, ldc, accumulate);
}

void gemm_bf16_pairs_sum(int64_t M, int64_t N, int64_t K2a, const uint32_t* A1, int64_t sa1, const uint32_t* B1,
                         int64_t K2b, const uint32_t* A2, int64_t sa2, const uint32_t* B2, int64_t ldb, float* C,
                         int64_t ldc) {
  if (M <= 0 || N <= 0) return;
#ifdef BRNNSEG_HAVE_X86
  if (cpu_bf16_isa() == Bf16Isa::kAmxBf16)
    return gemm_pairs_sum_amx(M, N, K2a, A1, sa1, B1, K2b, A2, sa2, B2, ldb, C, ldc);
#endif
  gemm_bf16_pairs(M, N, K2a, A1, sa1, 1, B1, ldb, C, ldc, false);
  gemm_bf16_pairs(M, N, K2b, A2, sa2, 1, B2, ldb, C, ldc, true);
}

void gemm_bf16_packed_b(bool ta, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                        const uint32_t* B_pairs, float* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  const int64_t K2 = (K + 1) / 2;
  uint32_t* a = grow(scratch().a, M * K2);
  if (ta) pack_pairs_across_rows(A, lda, K, M, a);  // A stored K x M -> [K2][M]
  else pack_pairs_along_rows(A, lda, M, K, a);      // -> [M][K2]
  gemm_bf16_pairs(M, N, K2, a, ta ? 1 : K2, ta ? M : 1, B_pairs, N, C, ldc, accumulate);
}

const uint32_t* bf16_rows_as_pairs(const uint16_t* A, int64_t M, int64_t K, int64_t lda,
                                   std::vector<uint32_t>& buf, int64_t& stride) {
  if (K % 2 == 0 && lda % 2 == 0 && reinterpret_cast<uintptr_t>(A) % 4 == 0) {
    stride = lda / 2;
    return reinterpret_cast<const uint32_t*>(A);
  }
  const int64_t K2 = (K + 1) / 2;
  uint32_t* a = grow(buf, M * K2);
  for (int64_t m = 0; m < M; ++m) {
    const uint16_t* s = A + m * lda;
    for (int64_t j = 0; j < K2; ++j)
      a[m * K2 + j] = static_cast<uint32_t>(s[2 * j]) | (2 * j + 1 < K ? static_cast<uint32_t>(s[2 * j + 1]) << 16 : 0u);
  }
  stride = K2;
  return a;
}

void gemm_bf16_rows_packed_b(int64_t M, int64_t N, int64_t K, const uint16_t* A, int64_t lda,
                             const uint32_t* B_pairs, float* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  int64_t sa = 0;
  const uint32_t* a = bf16_rows_as_pairs(A, M, K, lda, scratch().a, sa);
  gemm_bf16_pairs(M, N, (K + 1) / 2, a, sa, 1, B_pairs, N, C, ldc, accumulate);
}

void gemm_bf16_packed_a(int64_t M, int64_t N, int64_t K, const uint32_t* A, int64_t sam, int64_t sak, const float* B,
                        int64_t ldb, float* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  uint32_t* b = grow(scratch().b, ((K + 1) / 2) * N);
  pack_pairs_across_rows(B, ldb, K, N, b);
  gemm_bf16_pairs(M, N, (K + 1) / 2, A, sam, sak, b, N, C, ldc, accumulate);
}

void gemm_bf16(bool ta, int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb,
               float* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  uint32_t* b = grow(scratch().b, ((K + 1) / 2) * N);
  pack_pairs_across_rows(B, ldb, K, N, b);
  gemm_bf16_packed_b(ta, M, N, K, A, lda, b, C, ldc, accumulate);
}

}  // namespace brnnseg::cpu
