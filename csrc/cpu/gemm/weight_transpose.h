// Transposed weights for the per-step GEMMs: W (D, R, K) -> W^T (D, K, R), so that the GEMMs'
// B operand is row-major (blas.h). at::Tensor::contiguous() of a transposed view copies element
// by element with a strided write (~75 us for one 512 x 128 LSTM weight here, 2-4 per sweep, a
// tenth of a small layer's forward); this copies 32 x 32 blocks that stay in L1, on every thread.
#pragma once
#include <torch/types.h>

namespace brnnseg::cpu {

at::Tensor transposed_weights(const at::Tensor& w);

}  // namespace brnnseg::cpu
