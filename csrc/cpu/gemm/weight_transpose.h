// Transposed weights for the per-step GEMMs: W (D, R, K) -> W^T (D, K, R), so that the GEMMs'
// B operand is row-major (blas.h). at::Tensor::contiguous() of a transposed view copies element
// by element with a strided write (~75 us for one 512 x 128 LSTM weight here, 2-4 per sweep, a
// tenth of a small layer's forward); this copies 32 x 32 blocks that stay in L1, on every thread.
#pragma once
#include <torch/types.h>

namespace brnnseg::cpu {

at::Tensor transposed_weights(const at::Tensor& w);

// x (N, C, H, W) in channels_last memory (position-major: the rows a sweep step reads are C contiguous
// values): x itself when it already is, else the same blocked transpose (at::Tensor::contiguous with
// a memory format took 2.3 ms for a (4, 64, 64, 64) bfloat16 map here, ~10 % of its sweep).
at::Tensor position_major(const at::Tensor& x);

// dx (N, C, H, W), in its memory format, = the sum of two directions' position-major parts parts[0] +
// parts[1] ((2, N, H, W, C), contiguous), converted to dx's dtype; for NCHW dx the same blocked transpose
// (at::add_out over the permuted parts took ~7 % of a bfloat16 GRU block's forward+backward here).
void sum_directions(const at::Tensor& parts, at::Tensor& dx);

// Stacked weights w (D, R, K) rounded to bfloat16 and packed in pairs (gemm_bf16.h) as the per-step
// GEMMs' B operand, an int32 tensor:
//   transposed = true:  B = w^T per direction (K x R), pairs along K: (D, ceil(K/2), R) -- forward;
//   transposed = false: B = w per direction (R x K), pairs along R:   (D, ceil(R/2), K) -- backward.
// An odd pair is padded with zero.
at::Tensor weight_pairs(const at::Tensor& w, bool transposed);
inline const uint32_t* pairs_ptr(const at::Tensor& pairs) {
  return reinterpret_cast<const uint32_t*>(pairs.data_ptr<int32_t>());
}

}  // namespace brnnseg::cpu
