// Small row-major GEMMs for the per-step recurrent products. They run inside
// at::parallel_for, so they never go through at::mm (which would allocate tensors and dispatch on
// every one of thousands of steps). float: our AVX-512 kernel (gemm_avx512.cpp) where the CPU has
// AVX-512 -- MKL runs its AVX2 path on AMD CPUs, half the FMA width -- else the BLAS libtorch_cpu
// exports (MKL in the x86 wheels). double: that BLAS. No BLAS symbol: a plain loop.
// BRNNSEG_GEMM=blas forces the BLAS for float, BRNNSEG_NO_BLAS=1 the plain loop (tests run both).
#pragma once
#include <cstdint>
#include <cstdlib>
#include <string_view>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b, const int* ldb,
            const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace brnnseg::cpu {

// C (M x N) = A . B [+ C]: A element (m, k) at A[m*sam + k*sak], B row-major (K x N, stride ldb).
bool avx512_gemm_supported();
void sgemm_avx512(int64_t M, int64_t N, int64_t K, const float* A, int64_t sam, int64_t sak, const float* B,
                  int64_t ldb, float* C, int64_t ldc, bool accumulate);

inline bool avx512_gemm_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("BRNNSEG_GEMM");
    return avx512_gemm_supported() && !(v != nullptr && std::string_view(v) == "blas");
  }();
  return enabled;
}

inline bool blas_disabled() {
  static const bool disabled = [] {
    const char* v = std::getenv("BRNNSEG_NO_BLAS");
    return v != nullptr && v[0] == '1';
  }();
  return disabled;
}

template <typename T>
inline void gemm_fallback(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                          const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      T acc = 0;
      for (int64_t k = 0; k < K; ++k) {
        const T a = ta ? A[k * lda + i] : A[i * lda + k];
        const T b = tb ? B[j * ldb + k] : B[k * ldb + j];
        acc += a * b;
      }
      C[i * ldc + j] = alpha * acc + (beta == T(0) ? T(0) : beta * C[i * ldc + j]);
    }
  }
}

// K = 0: C = beta * C. Done here because a BLAS rejects the leading dimension 0 such a call
// can carry (it reports the argument and leaves C untouched).
template <typename T>
inline bool gemm_trivial(int64_t M, int64_t N, int64_t K, T beta, T* C, int64_t ldc) {
  if (M > 0 && N > 0 && K > 0) return false;
  if (K == 0 && beta != T(1)) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
  }
  return true;
}

// Row-major C (M x N) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C.
// Column-major BLAS computes C^T = op(B)^T op(A)^T, hence the swapped operands.
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (gemm_trivial(M, N, K, beta, C, ldc)) return;
  if (!tb && alpha == 1.0f && (beta == 0.0f || beta == 1.0f) && !blas_disabled() && avx512_gemm_enabled())
    return sgemm_avx512(M, N, K, A, ta ? 1 : lda, ta ? lda : 1, B, ldb, C, ldc, beta == 1.0f);
  if (!sgemm_ || blas_disabled()) return gemm_fallback(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
  const int m = (int)M, n = (int)N, k = (int)K, la = (int)lda, lb = (int)ldb, lc = (int)ldc;
  sgemm_(&cb, &ca, &n, &m, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
}
inline void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A, int64_t lda,
                 const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  if (gemm_trivial(M, N, K, beta, C, ldc)) return;
  if (!dgemm_ || blas_disabled()) return gemm_fallback(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  const char ca = ta ? 'T' : 'N', cb = tb ? 'T' : 'N';
  const int m = (int)M, n = (int)N, k = (int)K, la = (int)lda, lb = (int)ldb, lc = (int)ldc;
  dgemm_(&cb, &ca, &n, &m, &k, &alpha, B, &lb, A, &la, &beta, C, &lc);
}

}  // namespace brnnseg::cpu
