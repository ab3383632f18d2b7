// Tensor helpers shared by the CPU kernels.
#pragma once
#include <torch/types.h>

#include "cpu/runtime/buffer_cache.h"

namespace brnnseg::cpu {

// Large per-call buffers (outputs, saved gates, gradients): from the buffer cache, so repeated
// calls reuse memory instead of faulting in fresh pages (buffer_cache.h).
inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options,
                              at::MemoryFormat fmt = at::MemoryFormat::Contiguous) {
  return cached_empty(sizes, options, fmt);
}

// float32 and float64 (the latter for gradcheck); other dtypes get an error naming the op.
template <typename F>
void dispatch_float_double(const char* op, at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    default:
      TORCH_CHECK(false, op, ": the CPU kernel supports float32 and float64 inputs, got ", dtype);
  }
}

}  // namespace brnnseg::cpu
