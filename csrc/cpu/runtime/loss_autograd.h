// Helpers of the CPU losses' C++ autograd (ce_dice_cpu.cpp, seg_loss_cpu.cpp): each loss registers a
// torch::autograd::Function to AutogradCPU that calls its forward and backward ops through the dispatcher.
#pragma once
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <optional>

namespace brnnseg::cpu {

// The op `name` (overload ""), typed by the signature of its CPU kernel F.
template <typename F>
c10::TypedOperatorHandle<F> loss_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<F>();
}

// As ops.no_double_backward (Python): the backward ops have no derivative of their own; under
// create_graph=True refuse, rather than return gradients whose own gradients would silently be missing.
inline void refuse_double_backward(const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(!at::GradMode::is_enabled(), op,
                              ": double backward (create_graph=True through this op) is not supported");
}

// An optional tensor saved for backward comes back undefined where it was None.
inline std::optional<at::Tensor> saved_optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

}  // namespace brnnseg::cpu
