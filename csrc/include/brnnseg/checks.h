// Input checks shared by every entry point (CPU and CUDA, forward and backward).
// Every message names the argument and what was expected.
#pragma once
#include <torch/types.h>

#include <vector>

namespace brnnseg {

inline void check_sweep_inputs(const char* op, const at::Tensor& x, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                               const std::optional<at::Tensor>& b_hh, int64_t gates, int64_t axis) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (N, C, H, W), got ", x.dim(), "-D with shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be a floating point tensor, got ",
              x.scalar_type());
  TORCH_CHECK(axis == 2 || axis == 3, op, ": axis must be 2 (sweep along H) or 3 (sweep along W), got ", axis);
  TORCH_CHECK(w_hh.dim() == 3 && w_hh.size(0) == 2 && w_hh.size(1) == gates * w_hh.size(2),
              op, ": w_hh must have shape (2, ", gates, "*hidden, hidden), got ", w_hh.sizes());
  const int64_t hid = w_hh.size(2);
  TORCH_CHECK(hid > 0, op, ": hidden size (w_hh.size(2)) must be positive");
  TORCH_CHECK(w_ih.dim() == 3 && w_ih.size(0) == 2 && w_ih.size(1) == gates * hid && w_ih.size(2) == x.size(1),
              op, ": w_ih must have shape (2, ", gates * hid, ", C=", x.size(1), "), got ", w_ih.sizes());
  for (const auto* t : {&w_ih, &w_hh}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type(), op, ": weights must have the dtype of x (",
                x.scalar_type(), "), got ", t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), op, ": weights must be on the device of x (", x.device(),
                "), got ", t->device());
  }
  const char* names[2] = {"b_ih", "b_hh"};
  const std::optional<at::Tensor>* biases[2] = {&b_ih, &b_hh};
  for (int i = 0; i < 2; ++i) {
    if (!biases[i]->has_value()) continue;
    const at::Tensor& b = biases[i]->value();
    TORCH_CHECK(b.dim() == 2 && b.size(0) == 2 && b.size(1) == gates * hid, op, ": ", names[i],
                " must have shape (2, ", gates * hid, "), got ", b.sizes());
    TORCH_CHECK(b.scalar_type() == x.scalar_type() && b.device() == x.device(), op, ": ", names[i],
                " must match x in dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
                b.scalar_type(), ", ", b.device());
  }
}

// The saved state a sweep's backward reads, and the forward's output: one rule for the CPU and the
// device kernels. grad_y is converted to the dtype of x by the caller (autograd may hand back
// another floating dtype); the workspace holds ws_dtype (on the CPU x's dtype, bfloat16 included; on a
// GPU float32).
inline void check_sweep_backward_inputs(const char* op, int64_t saved, const at::Tensor& grad_y, const at::Tensor& x,
                                        const at::Tensor& w_hh, const at::Tensor& y, const at::Tensor& ws,
                                        int64_t axis, at::ScalarType ws_dtype) {
  const int64_t hid = w_hh.size(2);
  const std::vector<int64_t> y_shape{x.size(0), 2 * hid, x.size(2), x.size(3)};
  TORCH_CHECK(y.sizes() == y_shape, op, ": y must have shape ", y_shape, ", got ", y.sizes());
  TORCH_CHECK(grad_y.sizes() == y_shape, op, ": grad_y must have shape ", y_shape, ", got ", grad_y.sizes());
  const int64_t steps = axis == 3 ? x.size(3) : x.size(2);
  const int64_t lines = x.size(0) * (axis == 3 ? x.size(2) : x.size(3));
  const std::vector<int64_t> ws_shape{2, steps, lines, saved * hid};
  TORCH_CHECK(ws.sizes() == ws_shape && ws.is_contiguous() && ws.scalar_type() == ws_dtype, op,
              ": workspace must be a contiguous ", ws_dtype, " tensor of shape ", ws_shape,
              " (run the forward with training=True), got ", ws.scalar_type(), " of shape ", ws.sizes());
  TORCH_CHECK(y.scalar_type() == x.scalar_type() && grad_y.scalar_type() == x.scalar_type(), op,
              ": y and grad_y must have the dtype of x (", x.scalar_type(), "), got ", y.scalar_type(), " and ",
              grad_y.scalar_type());
  for (const auto* t : {&grad_y, &y, &ws})
    TORCH_CHECK(t->device() == x.device(), op, ": grad_y, y and workspace must be on the device of x (", x.device(),
                "), got ", t->device());
}

}  // namespace brnnseg
