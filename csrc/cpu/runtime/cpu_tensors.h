// Tensor helpers shared by the CPU kernels.
#pragma once
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <algorithm>

#include "cpu/runtime/buffer_cache.h"

namespace brnnseg::cpu {

// Large per-call buffers (outputs, saved gates, gradients): from the buffer cache, so repeated
// calls reuse memory instead of faulting in fresh pages (buffer_cache.h).
inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options,
                              at::MemoryFormat fmt = at::MemoryFormat::Contiguous) {
  return cached_empty(sizes, options, fmt);
}

// The thread count the work split is planned for. The tiles' weight-gradient partials are summed in a
// fixed order, but where the tiles fall depends on the thread count, so the last bits of dW/db follow it.
// Under torch.use_deterministic_algorithms(True) the split is planned for one thread whatever the
// thread count (tiles of up to kMaxTile lines; fewer, longer work items), so results equal a 1-thread run.
inline int64_t planning_threads() {
  if (at::globalContext().deterministicAlgorithms()) return 1;
  return std::max<int64_t>(1, at::get_num_threads());
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
