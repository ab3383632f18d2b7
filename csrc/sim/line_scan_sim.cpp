// The CUDA kernels of the line sweeps, compiled by g++ under the SIMT simulator and driven through
// the same host code as the CUDA build (cuda/line_scan_host.h), on CPU tensors. Registered as
// torch.ops.brnnseg_sim.* for the tests (pytest -k sim); never used for real work.
//
// Every op takes the GPU to play (`gpu`: "a100", "h100", "h200"): the launch planner uses its
// opt-in shared-memory limit (or `smem_limit` when > 0, to force a split of W_hh), and every launch
// is checked against its rules (simt_sim.h). Outputs are NaN-filled before the kernels run.
#include <Python.h>
#include <torch/library.h>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "brnnseg/simt_sim.h"
#include "cuda/line_scan_host.h"

// The module is brnnseg_kernels._sim, or _sim_asan when built with AddressSanitizer + UBSan
// (BRNNSEG_SIM_ASAN=1 at build time; `make test-sim-asan` runs the simulator tests through it).
#ifndef BRNNSEG_SIM_MODULE
#define BRNNSEG_SIM_MODULE _sim
#endif
#define BRNNSEG_CAT(a, b) a##b
#define BRNNSEG_PYINIT(name) BRNNSEG_CAT(PyInit_, name)
#define BRNNSEG_STR2(x) #x
#define BRNNSEG_STR(x) BRNNSEG_STR2(x)

extern "C" {
PyObject* BRNNSEG_PYINIT(BRNNSEG_SIM_MODULE)(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, BRNNSEG_STR(BRNNSEG_SIM_MODULE), nullptr, -1,
                                          nullptr};
  return PyModule_Create(&module_def);
}
}

namespace brnnseg::sim_ops {
namespace {

using at::Tensor;

using device::dispatch_dtype;  // float32, float16, bfloat16, as the CUDA build

// The simulated GPU for the duration of one op, and the planner's shared-memory budget on it.
struct Gpu {
  sim::DeviceScope scope;
  size_t smem_limit;
  Gpu(const std::string& name, int64_t smem_limit_override)
      : scope(device_spec(name)),
        smem_limit(smem_limit_override > 0 ? size_t(smem_limit_override) : device_spec(name).smem_per_block_optin) {}
};

template <int G>
std::tuple<Tensor, Tensor> fwd(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                               const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, int64_t axis,
                               bool channels_last, bool training, c10::string_view gpu, int64_t smem_limit,
                               bool global_weights) {
  const char* op = G == 3 ? "brnnseg_sim::bigru_sweep" : "brnnseg_sim::bilstm_sweep";
  const Gpu dev(std::string(gpu), smem_limit);
  std::tuple<Tensor, Tensor> out;
  dispatch_dtype(op, x.scalar_type(), [&](auto v) {
    using T = decltype(v);
    out = device::sweep_forward<T>(op, G, x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training, dev.smem_limit,
                                   nullptr, global_weights);
  });
  return out;
}

template <int G>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bwd(const Tensor& grad_y, const Tensor& x, const Tensor& w_ih,
                                                       const Tensor& w_hh, const Tensor& y, const Tensor& ws,
                                                       int64_t axis, c10::string_view gpu, int64_t smem_limit,
                                                       bool global_weights) {
  const char* op = G == 3 ? "brnnseg_sim::bigru_sweep_backward" : "brnnseg_sim::bilstm_sweep_backward";
  const Gpu dev(std::string(gpu), smem_limit);
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> out;
  dispatch_dtype(op, x.scalar_type(), [&](auto v) {
    using T = decltype(v);
    out = device::sweep_backward<T>(op, G, grad_y.to(x.scalar_type()), x, w_ih, w_hh, y, ws, axis, dev.smem_limit,
                                    nullptr, global_weights);
  });
  return out;
}

template <int G>
std::tuple<Tensor, Tensor, Tensor> pair_fwd(const Tensor& x, const Tensor& w_ih_r, const Tensor& w_hh_r,
                                            const std::optional<Tensor>& b_ih_r, const std::optional<Tensor>& b_hh_r,
                                            const Tensor& w_ih_c, const Tensor& w_hh_c,
                                            const std::optional<Tensor>& b_ih_c, const std::optional<Tensor>& b_hh_c,
                                            bool channels_last, bool training, c10::string_view gpu,
                                            int64_t smem_limit, bool global_weights) {
  const char* op = G == 3 ? "brnnseg_sim::bigru_sweep_pair" : "brnnseg_sim::bilstm_sweep_pair";
  const Gpu dev(std::string(gpu), smem_limit);
  std::tuple<Tensor, Tensor, Tensor> out;
  dispatch_dtype(op, x.scalar_type(), [&](auto v) {
    using T = decltype(v);
    out = device::sweep_pair_forward<T>(op, G, x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ih_c, w_hh_c, b_ih_c, b_hh_c,
                                        channels_last, training, dev.smem_limit, nullptr, global_weights);
  });
  return out;
}

template <int G>
std::vector<Tensor> pair_bwd(const Tensor& grad_y, const Tensor& x, const Tensor& w_ih_r, const Tensor& w_hh_r,
                             const Tensor& w_ih_c, const Tensor& w_hh_c, const Tensor& y, const Tensor& ws_r,
                             const Tensor& ws_c, c10::string_view gpu, int64_t smem_limit, bool global_weights) {
  const char* op = G == 3 ? "brnnseg_sim::bigru_sweep_pair_backward" : "brnnseg_sim::bilstm_sweep_pair_backward";
  const Gpu dev(std::string(gpu), smem_limit);
  std::vector<Tensor> out;
  dispatch_dtype(op, x.scalar_type(), [&](auto v) {
    using T = decltype(v);
    out = device::sweep_pair_backward<T>(op, G, grad_y.to(x.scalar_type()), x, w_ih_r, w_hh_r, w_ih_c, w_hh_c, y,
                                         ws_r, ws_c, dev.smem_limit, nullptr, global_weights);
  });
  return out;
}

// The launches simulated so far, one line each: "kernel grid=(x,y,z) block=t smem=bytes gpu=name".
std::vector<std::string> launch_log(bool clear) {
  std::lock_guard<std::mutex> lock(sim::log_mutex());
  std::vector<std::string> out;
  for (const auto& r : sim::launch_log())
    out.push_back(r.kernel + " grid=" + sim::str(r.grid) + " block=" + std::to_string(r.block.x) +
                  " smem=" + std::to_string(r.smem) + " gpu=" + r.device);
  if (clear) sim::launch_log().clear();
  return out;
}

}  // namespace
}  // namespace brnnseg::sim_ops

TORCH_LIBRARY(brnnseg_sim, m) {
  // As brnnseg::bi*_sweep, plus the GPU to play, the shared-memory budget the launcher plans with
  // (0: that GPU's opt-in limit) and a switch that forces the weights-through-L2 path (the
  // large-hidden-size path), so tests execute every path.
  m.def("bigru_sweep(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, int axis, "
        "bool channels_last, bool training, str gpu, int smem_limit, bool global_weights) -> (Tensor y, Tensor workspace)");
  m.def("bilstm_sweep(Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, int axis, "
        "bool channels_last, bool training, str gpu, int smem_limit, bool global_weights) -> (Tensor y, Tensor workspace)");
  m.def("bigru_sweep_backward(Tensor grad_y, Tensor x, Tensor w_ih, Tensor w_hh, Tensor y, Tensor workspace, "
        "int axis, str gpu, int smem_limit, bool global_weights) -> (Tensor grad_x, Tensor grad_w_ih, Tensor grad_w_hh, "
        "Tensor grad_b_ih, Tensor grad_b_hh)");
  m.def("bilstm_sweep_backward(Tensor grad_y, Tensor x, Tensor w_ih, Tensor w_hh, Tensor y, Tensor workspace, "
        "int axis, str gpu, int smem_limit, bool global_weights) -> (Tensor grad_x, Tensor grad_w_ih, Tensor grad_w_hh, "
        "Tensor grad_b_ih, Tensor grad_b_hh)");
  for (const char* cell : {"bigru", "bilstm"}) {
    m.def((std::string(cell) +
          "_sweep_pair(Tensor x, Tensor w_ih_rows, Tensor w_hh_rows, Tensor? b_ih_rows, Tensor? b_hh_rows, "
          "Tensor w_ih_cols, Tensor w_hh_cols, Tensor? b_ih_cols, Tensor? b_hh_cols, bool channels_last, "
          "bool training, str gpu, int smem_limit, bool global_weights) -> (Tensor y, Tensor workspace_rows, "
          "Tensor workspace_cols)").c_str());
    m.def((std::string(cell) +
          "_sweep_pair_backward(Tensor grad_y, Tensor x, Tensor w_ih_rows, Tensor w_hh_rows, Tensor w_ih_cols, "
          "Tensor w_hh_cols, Tensor y, Tensor workspace_rows, Tensor workspace_cols, str gpu, int smem_limit, "
          "bool global_weights) -> Tensor[]").c_str());
  }
  m.def("launch_log(bool clear) -> str[]", &brnnseg::sim_ops::launch_log);
  m.def("reset_func_attributes() -> ()", &brnnseg::sim::reset_func_attributes);
}

TORCH_LIBRARY_IMPL(brnnseg_sim, CPU, m) {
  m.impl("bigru_sweep_pair", &brnnseg::sim_ops::pair_fwd<3>);
  m.impl("bilstm_sweep_pair", &brnnseg::sim_ops::pair_fwd<4>);
  m.impl("bigru_sweep_pair_backward", &brnnseg::sim_ops::pair_bwd<3>);
  m.impl("bilstm_sweep_pair_backward", &brnnseg::sim_ops::pair_bwd<4>);
  m.impl("bigru_sweep", &brnnseg::sim_ops::fwd<3>);
  m.impl("bilstm_sweep", &brnnseg::sim_ops::fwd<4>);
  m.impl("bigru_sweep_backward", &brnnseg::sim_ops::bwd<3>);
  m.impl("bilstm_sweep_backward", &brnnseg::sim_ops::bwd<4>);
}
