// Launchers of the recurrence kernels (their configuration: line_scan_plan.h): raw pointers in, no torch types,
// shared by the CUDA build (line_scan_cuda.cu), the simulator build (csrc/sim/) and the C++
// simulator test. BRNNSEG_LAUNCH is <<<...>>> plus a launch check under nvcc, and
// brnnseg::sim::launch under simt_sim.h.
#pragma once
#include <cstddef>
#include <stdexcept>
#include <string>

#include "line_scan_kernels.cuh"
#include "line_scan_plan.h"

namespace brnnseg {

// BRNNSEG_SET_MAX_DYNAMIC_SMEM is cudaFuncSetAttribute under nvcc and its emulation (checked against
// the simulated GPU) under simt_sim.h; the launch is refused above 48 KiB without it.
template <typename Kernel, typename Params>
void launch_sweep_kernel(Kernel kernel, const char* name, const SweepBatch<Params>& b, const LaunchConfig& c,
                         void* stream) {
  if (c.smem_bytes > 48 * 1024) BRNNSEG_SET_MAX_DYNAMIC_SMEM(kernel, c.smem_bytes);
  (void)stream;
  const int blocks = b.count == 2 && b.blocks[1] > b.blocks[0] ? b.blocks[1] : b.blocks[0];
  BRNNSEG_LAUNCH(kernel, name, kMaxThreadsPerCta, dim3(blocks, 2, b.count), dim3(c.threads), c.smem_bytes, stream,
                 b);
}

template <typename T, int G>
void launch_fwd_impl(const SweepBatch<SweepFwdParams<T>>& b, const LaunchConfig& c, void* stream) {
  launch_sweep_kernel(line_scan_fwd_kernel<T, G, kLinesPerThread>, G == 3 ? "line_scan_fwd_kernel<gru>"
                                                                           : "line_scan_fwd_kernel<lstm>",
                      b, c, stream);
}

template <typename T, int G>
void launch_bwd_impl(const SweepBatch<SweepBwdParams<T>>& b, const LaunchConfig& c, void* stream) {
  launch_sweep_kernel(line_scan_bwd_kernel<T, G, kLinesPerThread>, G == 3 ? "line_scan_bwd_kernel<gru>"
                                                                           : "line_scan_bwd_kernel<lstm>",
                      b, c, stream);
}

// Applies the config to every sweep of a batch: tile, shared-memory gates, blocks (tiles) per sweep.
template <typename Params>
void set_batch_blocks(SweepBatch<Params>& b, const LaunchConfig& c) {
  for (int i = 0; i < b.count; ++i) {
    b.sweep[i].tile = c.tile;
    b.sweep[i].smem_gates = c.smem_gates;
    b.blocks[i] = static_cast<int>((b.sweep[i].geo.lines() + c.tile - 1) / c.tile);
  }
}

template <typename T>
void launch_line_scan_fwd(int G, const SweepBatch<SweepFwdParams<T>>& p, const LaunchConfig& c, void* stream) {
  if (G == 3) {
    launch_fwd_impl<T, 3>(p, c, stream);
  } else {
    launch_fwd_impl<T, 4>(p, c, stream);
  }
}

template <typename T>
void launch_line_scan_bwd(int G, const SweepBatch<SweepBwdParams<T>>& p, const LaunchConfig& c, void* stream) {
  if (G == 3) {
    launch_bwd_impl<T, 3>(p, c, stream);
  } else {
    launch_bwd_impl<T, 4>(p, c, stream);
  }
}

}  // namespace brnnseg
