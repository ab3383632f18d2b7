// Tensor helpers shared by the CPU kernels.
#pragma once
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/types.h>

#include <algorithm>
#include <optional>

#include "cpu/gemm/gemm_bf16.h"
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

// A bfloat16 op on the CPU: its tensors enter as float32 (the state, the cell math and every sum are
// float32, as on the GPU) and its outputs leave as bfloat16; the GEMMs' products run in bfloat16 where
// the CPU has AVX512-BF16 (`products`), else in float32.
struct BFloat16Op {
  bool products = bf16_gemm_supported();
  // channels_last: a 4-D input is converted straight into the position-major layout the kernels read.
  at::Tensor in(const at::Tensor& t, bool channels_last = false) const {
    if (!t.defined()) return t;
    if (channels_last && t.dim() == 4)
      return t.to(t.options().dtype(at::kFloat), false, false, at::MemoryFormat::ChannelsLast);
    return t.to(at::kFloat);
  }
  std::optional<at::Tensor> in(const std::optional<at::Tensor>& t) const {
    if (!t.has_value()) return t;
    return in(*t);
  }
  at::Tensor out(const at::Tensor& t) const { return t.defined() ? t.to(at::kBFloat16) : t; }
  // Weights: as they are where the products run in bfloat16 (the kernels read only their pairs,
  // weight_pairs()), else in float32.
  at::Tensor weight(const at::Tensor& w) const { return products ? w : in(w); }
};

}  // namespace brnnseg::cpu
