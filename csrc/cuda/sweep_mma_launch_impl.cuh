// Definitions of the tensor-core launchers declared in sweep_launch.h: the planner's kt (hid_pad / 16)
// and, for float32, its tf32x3 pick the instantiation. BRNNSEG_LAUNCH and BRNNSEG_SET_MAX_DYNAMIC_SMEM
// must be defined first (cuda/launch_cuda.h under nvcc, simt_sim.h in the simulator).
#pragma once
#include <stdexcept>
#include <string>

#include "cuda/sweep_bwd_mma_kernel.cuh"
#include "cuda/sweep_fwd_mma_kernel.cuh"
#include "cuda/sweep_launch.h"
#include "cuda/sweep_launch_impl.cuh"

namespace brnnseg {

template <typename T, typename Cell, bool kBackward, int kKt, bool kSplit, typename Params>
void launch_mma_kt(const SweepBatch<Params>& b, const LaunchConfig& c, void* stream) {
  using Sh = MmaShape<T, Cell, kKt, kBackward, kSplit>;
  if constexpr (Sh::kFits) {
    if (c.threads != Sh::kThreads ||
        c.smem_bytes != mma_smem<T>(kBackward, Cell::kGates, kKt, Cell::kHasCellState, c.gx_stages, kSplit).total)
      throw std::logic_error("sweep: tensor-core plan and kernel disagree (threads " + std::to_string(c.threads) +
                             " vs " + std::to_string(Sh::kThreads) + ")");
    const std::string name = std::string(kBackward ? "sweep_bwd_mma_kernel<" : "sweep_fwd_mma_kernel<") +
                             Cell::kName + ",kt=" + std::to_string(kKt) + (kSplit ? ",tf32x3>" : ">");
    if constexpr (kBackward)
      launch_sweep_kernel(sweep_bwd_mma_kernel<T, Cell, kKt, kSplit>, name, b, c, stream, Sh::kThreads);
    else
      launch_sweep_kernel(sweep_fwd_mma_kernel<T, Cell, kKt, kSplit>, name, b, c, stream, Sh::kThreads);
  } else {
    throw std::logic_error("sweep: no tensor-core kernel for this cell and hidden size");
  }
}

// kt (hid_pad / 16) and, for float storage, TF32 or 3xTF32 (c.tf32x3) pick the instantiation.
template <typename T, typename Cell, bool kBackward, bool kSplit, typename Params>
void launch_mma_split(const SweepBatch<Params>& b, const LaunchConfig& c, void* stream) {
  switch (c.kt) {
    case 1: return launch_mma_kt<T, Cell, kBackward, 1, kSplit>(b, c, stream);
    case 2: return launch_mma_kt<T, Cell, kBackward, 2, kSplit>(b, c, stream);
    case 4: return launch_mma_kt<T, Cell, kBackward, 4, kSplit>(b, c, stream);
    case 8: return launch_mma_kt<T, Cell, kBackward, 8, kSplit>(b, c, stream);
    default: throw std::logic_error("sweep: tensor-core kernel planned with kt " + std::to_string(c.kt));
  }
}

template <typename T, typename Cell, bool kBackward, typename Params>
void launch_mma(const SweepBatch<Params>& b, const LaunchConfig& c, void* stream) {
  if constexpr (sizeof(T) == 4)
    if (c.tf32x3) return launch_mma_split<T, Cell, kBackward, true>(b, c, stream);
  launch_mma_split<T, Cell, kBackward, false>(b, c, stream);
}

template <typename Cell, typename T>
void sweep_fwd_mma_launch(const SweepBatch<SweepFwdParams<T>>& b, const LaunchConfig& c, void* stream) {
  launch_mma<T, Cell, false>(b, c, stream);
}

template <typename Cell, typename T>
void sweep_bwd_mma_launch(const SweepBatch<SweepBwdParams<T>>& b, const LaunchConfig& c, void* stream) {
  launch_mma<T, Cell, true>(b, c, stream);
}

}  // namespace brnnseg
