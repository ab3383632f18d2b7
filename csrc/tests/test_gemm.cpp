// C++ test of the AVX-512 float GEMM (cpu/gemm/gemm_avx512.cpp) against a double-precision loop:
// every row tail (M = 1..13 and beyond), column tails (N not a multiple of 16/32), K = 0 and 1,
// A as given and transposed, overwrite and accumulate, strided B and C. No torch needed.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/gemm/blas.h"

int main() {
  using brnnseg::cpu::sgemm_avx512;
  if (!brnnseg::cpu::avx512_gemm_supported()) {
    std::printf("SKIP: this CPU has no AVX-512 (the BLAS path is used instead)\n");
    return 0;
  }
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  int failures = 0, cases = 0;
  const int Ms[] = {1, 2, 5, 11, 12, 13, 25, 64};
  const int Ns[] = {1, 7, 16, 17, 31, 32, 33, 100};
  const int Ks[] = {0, 1, 3, 64, 129, 600};  // 600: several K blocks
  for (int M : Ms) for (int N : Ns) for (int K : Ks) for (int trans = 0; trans < 2; ++trans)
    for (int acc = 0; acc < 2; ++acc) {
      const int lda = (trans ? M : K) + 3, ldb = N + 5, ldc = N + 2;
      std::vector<float> A((trans ? K : M) * lda + 1), B(K * ldb + 1), C(M * ldc), C0;
      for (auto* v : {&A, &B, &C}) for (float& x : *v) x = u(rng);
      C0 = C;
      const int64_t sam = trans ? 1 : lda, sak = trans ? lda : 1;
      sgemm_avx512(M, N, K, A.data(), sam, sak, B.data(), ldb, C.data(), ldc, acc != 0);
      ++cases;
      for (int i = 0; i < M; ++i) {
        for (int j = 0; j < N; ++j) {
          double want = acc ? C0[i * ldc + j] : 0.0;
          for (int k = 0; k < K; ++k) want += double(A[i * sam + k * sak]) * B[k * ldb + j];
          if (std::fabs(C[i * ldc + j] - want) > 1e-5 * (1 + K)) {
            if (failures++ < 10)
              std::printf("FAIL M=%d N=%d K=%d trans=%d acc=%d at (%d,%d): %g vs %g\n", M, N, K, trans, acc, i, j,
                          C[i * ldc + j], want);
          }
        }
        for (int j = N; j < ldc; ++j)  // padding between rows untouched
          if (C[i * ldc + j] != C0[i * ldc + j] && failures++ < 10)
            std::printf("FAIL M=%d N=%d K=%d: wrote past column N at (%d,%d)\n", M, N, K, i, j);
      }
    }
  std::printf("%d GEMM cases, %d failures\n", cases, failures);
  return failures ? 1 : 0;
}
