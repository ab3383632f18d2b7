// The launch planner of the sweep kernels (sweep_fwd_kernel.cuh, sweep_bwd_kernel.cuh): threads, lines per CTA, shared memory and where W_hh
// lives, from the cell, hidden size, storage type and the device's shared-memory limit. Host code
// only (no kernels, no torch), so the CPU build exports it (torch.ops.brnnseg.sweep_launch_plan, for
// `python -m brnnseg_kernels plan`) and the CUDA and simulator builds launch with it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "brnnseg/host_device.h"

namespace brnnseg {

// Largest CTA the launcher uses (one thread per hidden unit, hidden <= 512). Declared to ptxas with
// __launch_bounds__ so every kernel fits 64K registers / 512 threads = 128 registers per thread.
constexpr int kMaxThreadsPerCta = 512;

// Shared memory of the forward kernel: [the first smem_gates gates of W_hh^T of this direction, T]
// [2 x tile x hid hidden-state buffers, float]. Backward: [the first smem_gates gates of W_hh]
// [tile x G*hid recurrent-side gate gradients, float].
// The float buffers start 16-byte aligned after the weights (a half/bfloat16 weight block can have
// any even size; a misaligned float access faults on a GPU, not in the simulator).
template <typename T>
BRNNSEG_HD size_t smem_weight_bytes(int hid, int smem_gates) {
  return (size_t(smem_gates) * hid * hid * sizeof(T) + 15) & ~size_t(15);
}
template <typename T>
inline size_t fwd_smem_bytes(int G, int hid, int tile, int smem_gates) {
  (void)G;
  return smem_weight_bytes<T>(hid, smem_gates) + size_t(2) * tile * hid * sizeof(float);
}
template <typename T>
inline size_t bwd_smem_bytes(int G, int hid, int tile, int smem_gates) {
  return smem_weight_bytes<T>(hid, smem_gates) + size_t(tile) * G * hid * sizeof(float);
}

// Lines per thread: each weight loaded from shared memory serves this many lines (register tile).
constexpr int kLinesPerThread = 4;
// Threads per CTA aimed for: enough warps to hide shared-memory latency, few enough that several
// CTAs fit an SM.
constexpr int kTargetThreads = 256;
constexpr int kMaxThreads = kMaxThreadsPerCta;

// The sweep kernels' static shared memory as ptxas records it for sm_90 (cuobjdump -res-usage: SHARED
// 1024 on every instantiation; 0 on sm_80). A CTA's static plus dynamic shared memory must fit the
// device's opt-in limit, so the dynamic budget planned against a device leaves room for it (checked by
// tests/test_cuda_build.py on the shipped binary).
constexpr size_t kStaticSmemAllowance = 1024;
inline size_t dynamic_smem_budget(size_t optin_limit) {
  return optin_limit > kStaticSmemAllowance ? optin_limit - kStaticSmemAllowance : 0;
}

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
LaunchConfig sweep_launch_config(bool backward, int G, int hid, int64_t lines, size_t smem_limit,
                              bool force_global_weights = false) {
  LaunchConfig c;
  const int units_pad = (hid + 31) / 32 * 32;
  // One thread per unit: at most kMaxThreads, whose registers (<= 128 each, checked by
  // tests/test_cuda_build.py) fit the 64K-register file. Larger hidden sizes take the per-step
  // path (brnnseg_kernels.dispatch reads this limit through torch.ops.brnnseg.sweep_limits).
  if (units_pad > kMaxThreads)
    throw std::invalid_argument("sweep: hidden size " + std::to_string(hid) + " exceeds " +
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
    throw std::invalid_argument("sweep: hidden size " + std::to_string(hid) + " needs " +
                                std::to_string(c.smem_bytes) + " bytes of shared memory, limit " +
                                std::to_string(smem_limit));
  return c;
}
}  // namespace brnnseg
