// The tensor-core sweep kernels (cuda/sweep_{fwd,bwd}_mma_kernel.cuh) compiled by g++ under the SIMT
// simulator, whose nvcuda::wmma emulation (brnnseg/simt_sim_wmma.h) runs them on the CPU: the
// launchers sweep_sim.cpp's op code calls when the planner picks the tensor-core recurrence. A
// translation unit of its own, so the two halves of the simulator compile in parallel.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "brnnseg/simt_sim.h"
#define BRNNSEG_SIM_HALF_TYPES 1
#include "cuda/sweep_mma_launch_impl.cuh"

namespace brnnseg {
#define BRNNSEG_INSTANTIATE_MMA(C, T)                                                                            \
  template void sweep_fwd_mma_launch<C, T>(const SweepBatch<SweepFwdParams<T>>&, const LaunchConfig&, void*); \
  template void sweep_bwd_mma_launch<C, T>(const SweepBatch<SweepBwdParams<T>>&, const LaunchConfig&, void*);
#define BRNNSEG_INSTANTIATE_MMA_ALL(C) \
  BRNNSEG_INSTANTIATE_MMA(C, float) BRNNSEG_INSTANTIATE_MMA(C, c10::Half) BRNNSEG_INSTANTIATE_MMA(C, c10::BFloat16)
BRNNSEG_FOR_EACH_CELL(BRNNSEG_INSTANTIATE_MMA_ALL)
}  // namespace brnnseg
