// The CUDA launch planner and the GPU limits it plans against, exported from the CPU build so that
// `python -m brnnseg_kernels plan` prints exactly what the CUDA op would launch, on any machine:
//   torch.ops.brnnseg.sweep_launch_plan(cell, dtype, hidden, lines, backward, gpu, recurrence="auto",
//                                       tf32=False)
//       -> [threads, lines_per_cta, ctas_per_direction, gates_of_W_hh_on_chip, shared_bytes,
//           tensor_cores (0/1), kt, nt, kpw, ksplit, tf32x3 (0/1)]   (recurrence: as
//           BRNNSEG_CUDA_RECURRENCE; tf32: as torch.backends.cuda.matmul.allow_tf32; the last five are 0
//           for the FP32-core kernels)
//   torch.ops.brnnseg.gpu_spec(gpu) -> [sm_count, smem_per_block_default, smem_per_block_optin,
//       smem_per_sm, regs_per_sm, max_threads_per_block, max_threads_per_sm]
//   torch.ops.brnnseg.sweep_kernel_constants() -> [__launch_bounds__ of the kernels, lines per thread,
//       threads per CTA aimed for]
//   torch.ops.brnnseg.sweep_limits() -> [largest hidden size of the fused CUDA sweep kernel]
#include <torch/library.h>

#include <c10/util/Half.h>

#include "brnnseg/device_spec.h"
#include "brnnseg/static_switch.h"
#include "cuda/sweep_plan.h"

namespace brnnseg {
namespace {

std::vector<int64_t> sweep_launch_plan(c10::string_view cell, at::ScalarType dtype, int64_t hidden, int64_t lines,
                                       bool backward, c10::string_view gpu, c10::string_view recurrence, bool tf32) {
  const int G = CELL_SWITCH("sweep_launch_plan", cell, Cell, [] { return Cell::kGates; });
  const bool cell_state = CELL_SWITCH("sweep_launch_plan", cell, Cell, [] { return Cell::kHasCellState; });
  const std::string req(recurrence);
  TORCH_CHECK_VALUE(hidden >= 1 && lines >= 1, "sweep_launch_plan: hidden and lines must be >= 1, got ", hidden,
                    " and ", lines);
  const DeviceSpec& dev = device_spec(std::string(gpu));
  LaunchConfig c;
  switch (dtype) {
    case at::kFloat:
      c = plan_recurrence<float>(req, tf32, backward, G, cell_state, int(hidden), lines,
                                 dynamic_smem_budget(dev.smem_per_block_optin));
      break;
    case at::kHalf:
    case at::kBFloat16:  // the planner depends on the element size only
      c = plan_recurrence<c10::Half>(req, tf32, backward, G, cell_state, int(hidden), lines,
                                     dynamic_smem_budget(dev.smem_per_block_optin));
      break;
    default:
      TORCH_CHECK_VALUE(false, "sweep_launch_plan: dtype must be float32, float16 or bfloat16, got ", dtype);
  }
  const bool mma = c.recurrence == Recurrence::kMma;
  return {c.threads, c.tile, c.blocks, c.smem_gates, int64_t(c.smem_bytes), mma, c.kt,
          mma ? c.tiling.nt : 0, mma ? c.tiling.kpw : 0, mma ? c.tiling.ksplit : 0, mma && c.tf32x3};
}

std::vector<int64_t> gpu_spec(c10::string_view gpu) {
  const DeviceSpec& d = device_spec(std::string(gpu));
  return {d.sm_count, int64_t(d.smem_per_block_default), int64_t(d.smem_per_block_optin), int64_t(d.smem_per_sm),
          d.regs_per_sm, d.max_threads_per_block, d.max_threads_per_sm};
}

std::vector<int64_t> sweep_kernel_constants() { return {kMaxThreadsPerCta, kLinesPerThread, kTargetThreads}; }

// The limits Python's dispatch reads instead of copying: [largest hidden size of the fused CUDA
// sweep kernel (one thread per unit, kMaxThreadsPerCta)].
std::vector<int64_t> sweep_limits() { return {kMaxThreadsPerCta}; }

}  // namespace
}  // namespace brnnseg

TORCH_LIBRARY_FRAGMENT(brnnseg, m) {
  m.def("sweep_launch_plan(str cell, ScalarType dtype, int hidden, int lines, bool backward, str gpu, "
        "str recurrence=\"auto\", bool tf32=False) -> int[]",
        &brnnseg::sweep_launch_plan);
  m.def("gpu_spec(str gpu) -> int[]", &brnnseg::gpu_spec);
  m.def("sweep_kernel_constants() -> int[]", &brnnseg::sweep_kernel_constants);
  m.def("sweep_limits() -> int[]", &brnnseg::sweep_limits);
}
