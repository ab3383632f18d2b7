// C++ test of the bfloat16 GEMM (cpu/gemm/gemm_bf16.cpp) against a double-precision loop over the same
// operands rounded to bfloat16: row tails (M = 1..13 and beyond), column tails, odd K (a padded pair),
// K = 0 and 1, A as given and transposed, overwrite and accumulate, strided operands, pre-packed B; and
// transpose_f32.
// Run three times by ctest: on the CPU's own rung (AMX-BF16 tiles for the 16-blocks where it has them,
// AVX512-BF16 for the rest), with BRNNSEG_CPU_ISA=avx512_bf16 and with BRNNSEG_CPU_ISA=avx512 (the plain
// loops). M, N and K reach 64, 100 and 601, so the tiles run 2 x 2, 2 x 1, 1 x 2 and 1 x 1 blocks with
// every kind of edge. No torch needed.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/gemm/gemm_bf16.h"
#include "cpu/runtime/isa.h"

namespace {
// Round to nearest even, independently of the code under test.
double bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t lsb = (u >> 16) & 1u;
  u = (u + 0x7fffu + lsb) & 0xffff0000u;
  float r;
  std::memcpy(&r, &u, 4);
  return r;
}
}  // namespace

int main() {
  using namespace brnnseg::cpu;
  const Bf16Isa isa = cpu_bf16_isa();
  std::printf("bfloat16 GEMM on %s\n", isa == Bf16Isa::kAmxBf16      ? "AMX-BF16 tiles + AVX512-BF16"
                                       : isa == Bf16Isa::kAvx512Bf16 ? "AVX512-BF16"
                                                                     : "plain loops");
  std::mt19937 rng(4321);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  int failures = 0, cases = 0;
  const int Ms[] = {1, 2, 5, 11, 12, 13, 25, 64};
  const int Ns[] = {1, 7, 16, 17, 31, 32, 33, 100};
  const int Ks[] = {0, 1, 3, 64, 129, 601};  // 601: several K blocks and an odd tail
  for (int M : Ms) for (int N : Ns) for (int K : Ks) for (int trans = 0; trans < 2; ++trans)
    for (int acc = 0; acc < 2; ++acc) for (int packed = 0; packed < 2; ++packed) {
      const int lda = (trans ? M : K) + 3, ldb = N + 5, ldc = N + 2;
      std::vector<float> A((trans ? K : M) * lda + 1), B(K * ldb + 1), C(M * ldc), C0;
      for (auto* v : {&A, &B, &C}) for (float& x : *v) x = u(rng);
      C0 = C;
      if (packed) {
        std::vector<uint32_t> bp(((K + 1) / 2) * N + 1);
        pack_pairs_across_rows(B.data(), ldb, K, N, bp.data());
        gemm_bf16_packed_b(trans, M, N, K, A.data(), lda, bp.data(), C.data(), ldc, acc != 0);
      } else {
        gemm_bf16(trans, M, N, K, A.data(), lda, B.data(), ldb, C.data(), ldc, acc != 0);
      }
      ++cases;
      for (int i = 0; i < M; ++i) {
        for (int j = 0; j < N; ++j) {
          double want = acc ? C0[i * ldc + j] : 0.0, mag = std::fabs(want);
          for (int k = 0; k < K; ++k) {
            const double p = bf16(trans ? A[k * lda + i] : A[i * lda + k]) * bf16(B[k * ldb + j]);
            want += p;
            mag += std::fabs(p);
          }
          // float32 sums of exact products: a few ulps of the magnitude per K block
          if (std::fabs(C[i * ldc + j] - want) > 1e-6 * (4 + K) * (mag + 1e-30)) {
            if (failures++ < 10)
              std::printf("FAIL M=%d N=%d K=%d trans=%d acc=%d packed=%d at (%d,%d): %.9g vs %.9g\n", M, N, K, trans,
                          acc, packed, i, j, C[i * ldc + j], want);
          }
        }
        for (int j = N; j < ldc; ++j)
          if (C[i * ldc + j] != C0[i * ldc + j] && failures++ < 10)
            std::printf("FAIL M=%d N=%d K=%d: wrote past column N at (%d,%d)\n", M, N, K, i, j);
      }
    }
  // Two products summed into one C (gemm_bf16_pairs_sum: the input and recurrent products of a cell that
  // adds them): rows and columns with and without 16-block edges, either K with or without a tail.
  for (int M : {1, 17, 40, 64}) for (int N : {16, 33, 100}) for (int Ka : {3, 16, 21, 32}) for (int Kb : {8, 16, 24}) {
    const int sa1 = Ka + 2, sa2 = Kb + 1, ldc = N + 3, ldb = N + 5;  // B: N of ldb columns (a gate slice)
    std::vector<float> a1(M * 2 * Ka), a2(M * 2 * Kb), b1(2 * Ka * ldb), b2(2 * Kb * ldb);
    for (auto* v : {&a1, &a2, &b1, &b2}) for (float& x : *v) x = u(rng);
    std::vector<uint32_t> p1(M * sa1), p2(M * sa2), q1(Ka * ldb), q2(Kb * ldb);
    for (int i = 0; i < M; ++i) {
      pack_pairs_along_rows(a1.data() + i * 2 * Ka, 2 * Ka, 1, 2 * Ka, p1.data() + i * sa1);
      pack_pairs_along_rows(a2.data() + i * 2 * Kb, 2 * Kb, 1, 2 * Kb, p2.data() + i * sa2);
    }
    pack_pairs_across_rows(b1.data(), ldb, 2 * Ka, ldb, q1.data());
    pack_pairs_across_rows(b2.data(), ldb, 2 * Kb, ldb, q2.data());
    std::vector<float> C(M * ldc, 7.f);
    gemm_bf16_pairs_sum(M, N, Ka, p1.data(), sa1, q1.data(), Kb, p2.data(), sa2, q2.data(), ldb, C.data(), ldc);
    ++cases;
    for (int i = 0; i < M; ++i) {
      for (int j = 0; j < N; ++j) {
        double want = 0, mag = 0;
        for (int k = 0; k < 2 * Ka; ++k) {
          const double p = bf16(a1[i * 2 * Ka + k]) * bf16(b1[k * ldb + j]);
          want += p;
          mag += std::fabs(p);
        }
        for (int k = 0; k < 2 * Kb; ++k) {
          const double p = bf16(a2[i * 2 * Kb + k]) * bf16(b2[k * ldb + j]);
          want += p;
          mag += std::fabs(p);
        }
        if (std::fabs(C[i * ldc + j] - want) > 1e-6 * (8 + 2 * (Ka + Kb)) * (mag + 1e-30) && failures++ < 10)
          std::printf("FAIL sum M=%d N=%d K2a=%d K2b=%d at (%d,%d): %.9g vs %.9g\n", M, N, Ka, Kb, i, j,
                      C[i * ldc + j], want);
      }
      for (int j = N; j < ldc; ++j)
        if (C[i * ldc + j] != 7.f && failures++ < 10) std::printf("FAIL sum: wrote past column N at (%d,%d)\n", i, j);
    }
  }
  // Weight gradients: C (M x N) += A^T . B over K rows, A (K x M) packed and transposed in one pass
  // (pack_pairs_transposed: rows of pairs, AMX's layout) and B packed by gemm_bf16_packed_a.
  for (int K : {1, 3, 31, 64, 129, 1000}) for (int M : {5, 16, 33, 96}) for (int N : {7, 32, 40}) {
    const int lda = M + 1, ldb = N + 2, ldc = N + 1, K2 = (K + 1) / 2;
    std::vector<float> A(K * lda), B(K * ldb), C(M * ldc), C0;
    for (auto* v : {&A, &B, &C}) for (float& x : *v) x = u(rng);
    C0 = C;
    std::vector<uint32_t> ap(M * K2 + 1, 0xdeadbeefu);
    pack_pairs_transposed(A.data(), lda, K, M, ap.data());
    if (ap[M * K2] != 0xdeadbeefu && failures++ < 10) std::printf("FAIL transposed pack wrote past M*K2 (K=%d M=%d)\n", K, M);
    gemm_bf16_packed_a(M, N, K, ap.data(), K2, 1, B.data(), ldb, C.data(), ldc, true);
    ++cases;
    for (int i = 0; i < M; ++i)
      for (int j = 0; j < N; ++j) {
        double want = C0[i * ldc + j], mag = std::fabs(want);
        for (int k = 0; k < K; ++k) {
          const double p = bf16(A[k * lda + i]) * bf16(B[k * ldb + j]);
          want += p;
          mag += std::fabs(p);
        }
        if (std::fabs(C[i * ldc + j] - want) > 1e-6 * (4 + K) * (mag + 1e-30) && failures++ < 10)
          std::printf("FAIL transposed K=%d M=%d N=%d at (%d,%d): %.9g vs %.9g\n", K, M, N, i, j, C[i * ldc + j], want);
      }
  }
  // transpose_f32 (the sweeps' NCHW loads and stores): whole 16 x 16 register blocks and every edge, exact,
  // nothing written outside the M columns of each destination row.
  for (int M : {1, 5, 16, 17, 40}) for (int N : {1, 15, 16, 33}) {
    const int ls = N + 3, ld = M + 2;
    std::vector<float> src(M * ls), dst(N * ld, -7.f);
    for (float& x : src) x = u(rng);
    transpose_f32(src.data(), ls, M, N, dst.data(), ld);
    ++cases;
    int bad = 0;
    for (int n = 0; n < N; ++n)
      for (int m = 0; m < ld; ++m) bad += dst[n * ld + m] != (m < M ? src[m * ls + n] : -7.f);
    if (bad && failures++ < 10) std::printf("FAIL transpose_f32 M=%d N=%d: %d values wrong\n", M, N, bad);
  }
  // Rounding: ties go to even, as the hardware's vcvtne2ps2bf16.
  {
    const float vals[] = {1.00390625f, 1.01171875f, -1.00390625f, 3.0f, 1e-3f};  // 1 + 2^-8 is a tie
    for (float v : vals) {
      std::vector<float> a = {v}, b = {1.0f};
      float c = 0.f;
      gemm_bf16(false, 1, 1, 1, a.data(), 1, b.data(), 1, &c, 1, false);
      ++cases;
      if (c != static_cast<float>(bf16(v)) && failures++ < 10) std::printf("FAIL rounding %.9g -> %.9g\n", v, c);
    }
  }
  std::printf("%d bfloat16 GEMM cases, %d failures\n", cases, failures);
  return failures ? 1 : 0;
}
