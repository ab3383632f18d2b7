// Definitions of the launchers declared in sweep_launch.h. BRNNSEG_LAUNCH and
// BRNNSEG_SET_MAX_DYNAMIC_SMEM must be defined first: <<<...>>> plus an error check under nvcc
// (cuda/launch_cuda.h), the checked emulation under simt_sim.h.
#pragma once
#include <string>

#include "cuda/sweep_bwd_kernel.cuh"
#include "cuda/sweep_fwd_kernel.cuh"
#include "cuda/sweep_launch.h"

namespace brnnseg {

// BRNNSEG_SET_MAX_DYNAMIC_SMEM is cudaFuncSetAttribute under nvcc and its emulation (checked against
// the simulated GPU) under simt_sim.h; the launch is refused above 48 KiB without it.
// bounds: the kernel's __launch_bounds__ (the simulator checks the block against it).
template <typename Kernel, typename Params>
void launch_sweep_kernel(Kernel kernel, const std::string& name, const SweepBatch<Params>& b, const LaunchConfig& c,
                         void* stream, int bounds = kMaxThreadsPerCta) {
  if (c.smem_bytes > 48 * 1024) BRNNSEG_SET_MAX_DYNAMIC_SMEM(kernel, c.smem_bytes);
  (void)stream;
  const int blocks = b.count == 2 && b.blocks[1] > b.blocks[0] ? b.blocks[1] : b.blocks[0];
  BRNNSEG_LAUNCH(kernel, name.c_str(), bounds, dim3(blocks, 2, b.count), dim3(c.threads), c.smem_bytes, stream, b);
}

template <typename Cell, typename T>
void sweep_fwd_launch(const SweepBatch<SweepFwdParams<T>>& b, const LaunchConfig& c, void* stream) {
  launch_sweep_kernel(sweep_fwd_kernel<T, Cell, kLinesPerThread>,
                      std::string("sweep_fwd_kernel<") + Cell::kName + ">", b, c, stream);
}

template <typename Cell, typename T>
void sweep_bwd_launch(const SweepBatch<SweepBwdParams<T>>& b, const LaunchConfig& c, void* stream) {
  launch_sweep_kernel(sweep_bwd_kernel<T, Cell, kLinesPerThread>,
                      std::string("sweep_bwd_kernel<") + Cell::kName + ">", b, c, stream);
}

}  // namespace brnnseg
