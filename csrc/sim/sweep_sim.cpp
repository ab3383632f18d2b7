// The CUDA kernels of the line sweeps, compiled by g++ under the SIMT simulator and registered through
// the same op code as the CUDA build (cuda/sweep_registration.h), on CPU tensors. Registered as
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
#include "cuda/sweep_launch_impl.cuh"  // the kernels, instantiated here
#include "cuda/sweep_registration.h"

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

// The simulated GPU for the duration of one op, and the planner's shared-memory budget on it.
struct SimBackend {
  static constexpr const char* kNamespace = "brnnseg_sim";
  struct Scope {
    sim::DeviceScope scope;
    size_t smem_limit;
    void* stream = nullptr;
    bool global_weights;
    Scope(const Tensor&, c10::string_view gpu, int64_t smem_limit_override, bool force_global_weights)
        : scope(device_spec(std::string(gpu))),
          smem_limit(smem_limit_override > 0 ? size_t(smem_limit_override)
                                             : dynamic_smem_budget(device_spec(std::string(gpu)).smem_per_block_optin)),
          global_weights(force_global_weights) {}
  };
};

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
  // As brnnseg::sweep*, plus the GPU to play, the shared-memory budget the launcher plans with
  // (0: that GPU's opt-in limit) and a switch that forces the weights-through-L2 path (the
  // large-hidden-size path), so tests execute every path.
  m.def("sweep(str cell, Tensor x, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, int axis, "
        "bool channels_last, bool training, str gpu, int smem_limit, bool global_weights) -> (Tensor y, "
        "Tensor workspace)");
  m.def("sweep_backward(str cell, Tensor grad_y, Tensor x, Tensor w_ih, Tensor w_hh, Tensor y, Tensor workspace, "
        "int axis, str gpu, int smem_limit, bool global_weights) -> (Tensor grad_x, Tensor grad_w_ih, "
        "Tensor grad_w_hh, Tensor grad_b_ih, Tensor grad_b_hh)");
  m.def("sweep_pair(str cell, Tensor x, Tensor w_ih_rows, Tensor w_hh_rows, Tensor? b_ih_rows, Tensor? b_hh_rows, "
        "Tensor w_ih_cols, Tensor w_hh_cols, Tensor? b_ih_cols, Tensor? b_hh_cols, bool channels_last, "
        "bool training, str gpu, int smem_limit, bool global_weights) -> (Tensor y, Tensor workspace_rows, "
        "Tensor workspace_cols)");
  m.def("sweep_pair_backward(str cell, Tensor grad_y, Tensor x, Tensor w_ih_rows, Tensor w_hh_rows, "
        "Tensor w_ih_cols, Tensor w_hh_cols, Tensor y, Tensor workspace_rows, Tensor workspace_cols, str gpu, "
        "int smem_limit, bool global_weights) -> Tensor[]");
  m.def("launch_log(bool clear) -> str[]", &brnnseg::sim_ops::launch_log);
  m.def("reset_func_attributes() -> ()", &brnnseg::sim::reset_func_attributes);
}

TORCH_LIBRARY_IMPL(brnnseg_sim, CPU, m) {
  brnnseg::device::register_sweep_ops<brnnseg::sim_ops::SimBackend, c10::string_view, int64_t, bool>(m);
}
