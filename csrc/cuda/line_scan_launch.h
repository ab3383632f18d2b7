// Launch configuration and launchers of the recurrence kernels: raw pointers in, no torch types,
// shared by the CUDA build (line_scan_cuda.cu), the simulator build (csrc/sim/) and the C++
// simulator test. BRNNSEG_LAUNCH is <<<...>>> plus a launch check under nvcc, and
// brnnseg::sim::launch under simt_sim.h.
#pragma once
#include <cstddef>
#include <stdexcept>
#include <string>

#include "brnnseg/device_spec.h"
#include "line_scan_kernels.cuh"

namespace brnnseg {

// Lines per thread: each weight loaded from shared memory serves this many lines (register tile).
constexpr int kLinesPerThread = 4;
// Threads per CTA aimed for: enough warps to hide shared-memory latency, few enough that several
// CTAs fit an SM.
constexpr int kTargetThreads = 256;
constexpr int kMaxThreads = kMaxThreadsPerCta;

struct LaunchConfig {
  int threads = 0, tile = 0, blocks = 0;
  int smem_gates = 0;       // gates of W_hh in shared memory (all of them when they fit)
  size_t smem_bytes = 0;
};

// smem_limit: the most dynamic shared memory a CTA may use (the device's opt-in limit on a GPU,
// 227 KiB on an H100). As many gates of W_hh as fit go to shared memory (all of them for hidden
// <= 128, but 3 of 4 for a float32 LSTM at 128: 256 KiB); the rest is read through L1/L2, which
// is the whole path for large hidden sizes (force_global_weights selects it always, for tests).
template <typename T>
LaunchConfig line_scan_config(bool backward, int G, int hid, int64_t lines, size_t smem_limit,
                              bool force_global_weights = false) {
  LaunchConfig c;
  const int units_pad = (hid + 31) / 32 * 32;
  // One thread per unit: at most kMaxThreads, whose registers (<= 128 each, checked by
  // tests/test_cuda_build.py) fit the 64K-register file. Larger hidden sizes take the per-step
  // path in brnnseg_kernels.functional.
  if (units_pad > kMaxThreads)
    throw std::invalid_argument("line_scan: hidden size " + std::to_string(hid) + " exceeds " +
                                std::to_string(kMaxThreads) + " (the fused kernel's limit)");
  const int groups = units_pad >= kTargetThreads ? 1 : kTargetThreads / units_pad;
  c.threads = units_pad * groups;
  c.tile = kLinesPerThread * groups;
  c.blocks = static_cast<int>((lines + c.tile - 1) / c.tile);
  auto bytes = [&](int gates) {
    return backward ? bwd_smem_bytes<T>(G, hid, c.tile, gates) : fwd_smem_bytes<T>(G, hid, c.tile, gates);
  };
  c.smem_gates = 0;
  if (!force_global_weights)
    for (int g = G; g > 0 && c.smem_gates == 0; --g)
      if (bytes(g) <= smem_limit) c.smem_gates = g;
  c.smem_bytes = bytes(c.smem_gates);
  if (c.smem_bytes > smem_limit)
    throw std::invalid_argument("line_scan: hidden size " + std::to_string(hid) + " needs " +
                                std::to_string(c.smem_bytes) + " bytes of shared memory, limit " +
                                std::to_string(smem_limit));
  return c;
}

// Launches the sweeps of a batch: grid (tiles, 2 directions, sweeps), opting in to > 48 KiB of shared
// memory. The config (threads, tile, shared memory) is the same for every sweep of the batch.
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
