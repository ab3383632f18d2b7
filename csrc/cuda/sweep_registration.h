// The device sweep ops, written once and registered twice: by the CUDA build (sweep_cuda.cpp:
// TORCH_LIBRARY_IMPL(brnnseg, CUDA, ...)) and by the simulator build (csrc/sim/sweep_sim.cpp:
// brnnseg_sim, on CPU tensors). Each op checks its inputs (brnnseg/checks.h), opens the backend's
// device scope, then CELL_SWITCH / DTYPE_SWITCH pick the instantiation (brnnseg/static_switch.h).
//
// Backend: a struct with `static constexpr const char* kNamespace` and a `Scope` constructed from
// (x, extra...) that exposes smem_limit, stream and global_weights (the simulator's schemas carry
// extra arguments: the GPU to play, a shared-memory budget, a switch forcing the weights-through-L2
// path; the CUDA backend has none).
#pragma once
#include <torch/library.h>

#include <string>

#include "brnnseg/checks.h"
#include "brnnseg/static_switch.h"
#include "cuda/sweep_host.h"

namespace brnnseg::device {

template <typename Backend>
struct SweepOps {
  using OptTensor = std::optional<Tensor>;
  static std::string name(const char* op) { return std::string(Backend::kNamespace) + "::" + op; }

  template <typename... Extra>
  static std::tuple<Tensor, Tensor> sweep(c10::string_view cell, const Tensor& x, const Tensor& w_ih,
                                          const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                                          int64_t axis, bool channels_last, bool training, Extra... extra) {
    const std::string op = name("sweep");
    return CELL_SWITCH(op.c_str(), cell, Cell, [&] {
      check_sweep_inputs(op.c_str(), x, w_ih, w_hh, b_ih, b_hh, Cell::kGates, axis);
      const typename Backend::Scope dev(x, extra...);
      return DTYPE_SWITCH(op.c_str(), x.scalar_type(), T, DeviceDtypes, [&] {
        return ::brnnseg::device::sweep_forward<Cell, T>(x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training, dev.smem_limit,
                                      dev.stream, dev.global_weights);
      });
    });
  }

  template <typename... Extra>
  static std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sweep_backward(c10::string_view cell,
                                                                           const Tensor& grad_y, const Tensor& x,
                                                                           const Tensor& w_ih, const Tensor& w_hh,
                                                                           const Tensor& y, const Tensor& ws,
                                                                           int64_t axis, Extra... extra) {
    const std::string op = name("sweep_backward");
    return CELL_SWITCH(op.c_str(), cell, Cell, [&] {
      check_sweep_inputs(op.c_str(), x, w_ih, w_hh, std::nullopt, std::nullopt, Cell::kGates, axis);
      const Tensor gy = grad_y.to(x.scalar_type());
      check_sweep_backward_inputs(op.c_str(), Cell::kSaved, gy, x, w_hh, y, ws, axis, at::kFloat);
      const typename Backend::Scope dev(x, extra...);
      return DTYPE_SWITCH(op.c_str(), x.scalar_type(), T, DeviceDtypes, [&] {
        return ::brnnseg::device::sweep_backward<Cell, T>(gy, x, w_ih, w_hh, y, ws, axis, dev.smem_limit, dev.stream,
                                       dev.global_weights);
      });
    });
  }

  template <typename... Extra>
  static std::tuple<Tensor, Tensor, Tensor> sweep_pair(c10::string_view cell, const Tensor& x, const Tensor& w_ih_r,
                                                       const Tensor& w_hh_r, const OptTensor& b_ih_r,
                                                       const OptTensor& b_hh_r, const Tensor& w_ih_c,
                                                       const Tensor& w_hh_c, const OptTensor& b_ih_c,
                                                       const OptTensor& b_hh_c, bool channels_last, bool training,
                                                       Extra... extra) {
    const std::string op = name("sweep_pair");
    return CELL_SWITCH(op.c_str(), cell, Cell, [&] {
      check_sweep_inputs(op.c_str(), x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, Cell::kGates, 3);
      check_sweep_inputs(op.c_str(), x, w_ih_c, w_hh_c, b_ih_c, b_hh_c, Cell::kGates, 2);
      TORCH_CHECK(w_hh_c.size(2) == w_hh_r.size(2), op, ": both sweeps must have the same hidden size, got ",
                  w_hh_r.size(2), " (rows) and ", w_hh_c.size(2), " (cols)");
      const typename Backend::Scope dev(x, extra...);
      return DTYPE_SWITCH(op.c_str(), x.scalar_type(), T, DeviceDtypes, [&] {
        return ::brnnseg::device::sweep_pair_forward<Cell, T>(x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ih_c, w_hh_c, b_ih_c, b_hh_c,
                                           channels_last, training, dev.smem_limit, dev.stream, dev.global_weights);
      });
    });
  }

  template <typename... Extra>
  static std::vector<Tensor> sweep_pair_backward(c10::string_view cell, const Tensor& grad_y, const Tensor& x,
                                                 const Tensor& w_ih_r, const Tensor& w_hh_r, const Tensor& w_ih_c,
                                                 const Tensor& w_hh_c, const Tensor& y, const Tensor& ws_r,
                                                 const Tensor& ws_c, Extra... extra) {
    const std::string op = name("sweep_pair_backward");
    return CELL_SWITCH(op.c_str(), cell, Cell, [&] {
      check_sweep_inputs(op.c_str(), x, w_ih_r, w_hh_r, std::nullopt, std::nullopt, Cell::kGates, 3);
      check_sweep_inputs(op.c_str(), x, w_ih_c, w_hh_c, std::nullopt, std::nullopt, Cell::kGates, 2);
      const int64_t hid = w_hh_r.size(2);
      TORCH_CHECK(w_hh_c.size(2) == hid && y.dim() == 4 && y.size(1) == 4 * hid && grad_y.sizes() == y.sizes(), op,
                  ": y and grad_y must have shape (N, ", 4 * hid, ", H, W) and both sweeps the same hidden size");
      const Tensor gy = grad_y.to(x.scalar_type());
      check_sweep_backward_inputs(op.c_str(), Cell::kSaved, gy.narrow(1, 0, 2 * hid), x, w_hh_r,
                                  y.narrow(1, 0, 2 * hid), ws_r, 3, at::kFloat);
      check_sweep_backward_inputs(op.c_str(), Cell::kSaved, gy.narrow(1, 2 * hid, 2 * hid), x, w_hh_c,
                                  y.narrow(1, 2 * hid, 2 * hid), ws_c, 2, at::kFloat);
      const typename Backend::Scope dev(x, extra...);
      return DTYPE_SWITCH(op.c_str(), x.scalar_type(), T, DeviceDtypes, [&] {
        return ::brnnseg::device::sweep_pair_backward<Cell, T>(gy, x, w_ih_r, w_hh_r, w_ih_c, w_hh_c, y, ws_r, ws_c, dev.smem_limit,
                                            dev.stream, dev.global_weights);
      });
    });
  }
};

// m.impl of the four sweep ops for a backend; Extra: the types of the schema's extra arguments.
template <typename Backend, typename... Extra>
void register_sweep_ops(torch::Library& m) {
  m.impl("sweep", &SweepOps<Backend>::template sweep<Extra...>);
  m.impl("sweep_backward", &SweepOps<Backend>::template sweep_backward<Extra...>);
  m.impl("sweep_pair", &SweepOps<Backend>::template sweep_pair<Extra...>);
  m.impl("sweep_pair_backward", &SweepOps<Backend>::template sweep_pair_backward<Extra...>);
}

}  // namespace brnnseg::device
