// The launch planner of the sweep kernels (sweep_fwd_kernel.cuh, sweep_bwd_kernel.cuh): threads, lines per CTA, shared memory and where W_hh
// lives, from the cell, hidden size, storage type and the device's shared-memory limit. Host code
// only (no kernels, no torch), so the CPU build exports it (torch.ops.brnnseg.sweep_launch_plan, for
// `python -m brnnseg_kernels plan`) and the CUDA and simulator builds launch with it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
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

// ---- the tensor-core recurrence (sweep_{fwd,bwd}_mma_kernel.cuh) ---------------------------------
// The per-step product of a CTA of kMmaLines lines, [16 lines x K] . [K x N], on tensor cores through
// wmma: forward h_prev . W_hh^T (K = hid_pad, N = G*hid_pad), backward dgates . W_hh (K = G*hid_pad,
// N = hid_pad), hid_pad = 16 * kt. W_hh stays in registers as B fragments for the whole launch: warp w
// owns `nt` column tiles of 16 and `kpw` row tiles (k tiles of 16, 8 for TF32) of them; when K is split
// over `ksplit` warps their partial products are summed in the gate math. At most kMmaMaxFrags B
// fragments a warp (4 registers each: 96 registers a thread) and kMmaMaxWarps warps a CTA (384
// threads: up to 168 registers a thread under __launch_bounds__(384, 1), so nothing spills).
constexpr int kMmaLines = 16;
constexpr int kMmaMaxFrags = 24;
constexpr int kMmaMaxSplitFrags = 10;  // 3xTF32: (high, low) B fragment pairs a warp
constexpr int kMmaMaxWarps = 12;
constexpr int kMmaMaxKt = 8;  // hidden <= 128 (kt = 1, 2, 4, 8); larger hidden sizes take the FMA kernel

struct MmaTiling {
  int ntiles = 0, ktiles = 0;  // column tiles of 16 and row tiles of the MMA's k of the product
  int nt = 0, kpw = 0;         // column tiles and k tiles a warp owns
  int ksplit = 0;              // warps that share one column tile (K split between them)
  int warps = 0;               // 0: W_hh does not fit the registers of kMmaMaxWarps warps
  BRNNSEG_HD constexpr int groups() const { return warps / (ksplit ? ksplit : 1); }  // column groups
};

// The split with the fewest registers a thread spends on the product (4 per B fragment, 8 per
// accumulator tile), ties to the fewest k splits (fewest partial products): at most kMmaMaxWarps warps
// with at most kMmaMaxFrags fragments each. `split` (3xTF32): each B fragment is held twice, its TF32
// high part and the TF32 rounding of what that leaves (8 registers), and each column tile has two
// accumulators (16 registers): at most kMmaMaxSplitFrags pairs a warp (12 spilled on sm_80 and sm_90:
// an LSTM forward and the Elman cells at kt 4 and 8).
BRNNSEG_HD constexpr MmaTiling mma_tiling(int ntiles, int ktiles, bool split = false) {
  MmaTiling best{ntiles, ktiles, 0, 0, 0, 0};
  const int max_frags = split ? kMmaMaxSplitFrags : kMmaMaxFrags, regs = split ? 8 : 4, acc = split ? 16 : 8;
  for (int ksplit = 1; ksplit <= ktiles; ++ksplit) {
    if (ktiles % ksplit) continue;
    const int kpw = ktiles / ksplit;
    for (int nt = 1; nt * kpw <= max_frags; ++nt) {
      const int warps = (ntiles + nt - 1) / nt * ksplit;
      if (warps > kMmaMaxWarps) continue;
      if (best.warps == 0 || nt * (regs * kpw + acc) < best.nt * (regs * best.kpw + acc))
        best = MmaTiling{ntiles, ktiles, nt, kpw, ksplit, warps};
      break;  // a larger nt only adds fragments
    }
  }
  return best;
}

// k of one MMA: 16 for half/bfloat16 operands, 8 for TF32 (float storage).
template <typename T>
BRNNSEG_HD constexpr int mma_k() { return sizeof(T) == 4 ? 8 : 16; }
// Row padding of the A operand in shared memory (16 bytes: rows start in different banks).
template <typename T>
BRNNSEG_HD constexpr int mma_a_pad() { return 16 / int(sizeof(T)); }

template <typename T>
BRNNSEG_HD constexpr MmaTiling mma_fwd_tiling(int G, int kt, bool split = false) {
  return mma_tiling(G * kt, 16 * kt / mma_k<T>(), split);
}
template <typename T>
BRNNSEG_HD constexpr MmaTiling mma_bwd_tiling(int G, int kt, bool split = false) {
  return mma_tiling(kt, G * 16 * kt / mma_k<T>(), split);
}

// Shared memory of the tensor-core kernels, in this order (each part 32-byte aligned):
//   A operand [16][K + pad] (T) | partial products [ksplit][16][N + 4] (float) |
//   state [16][hid_pad] (float: forward h, backward dh_direct) | cell state [16][hid_pad] (float, cells
//   with one) | forward only: biases [2][N] (float) | per line: the position of its time 0 and the
//   offsets of its time 0 in y and grad_y ([3][16] int64: the step loop then needs no 64-bit
//   division) | forward only, last: input projections [gx_stages][16][G*hid_pad] (T), the ring the
//   coming steps' are copied into asynchronously (gx_stages = prefetch distance + 1; last, so that
//   the other offsets do not depend on it).
struct MmaSmem {
  size_t a, p, state, cell, bias, gx, line, total;
};
BRNNSEG_HD constexpr size_t align32(size_t b) { return (b + 31) & ~size_t(31); }
template <typename T>
BRNNSEG_HD constexpr MmaSmem mma_smem(bool backward, int G, int kt, bool cell_state, int gx_stages = 2,
                                      bool split = false) {
  const int hp = 16 * kt, K = backward ? G * hp : hp, N = backward ? hp : G * hp;
  const MmaTiling t = backward ? mma_bwd_tiling<T>(G, kt, split) : mma_fwd_tiling<T>(G, kt, split);
  MmaSmem s{};
  s.a = 0;
  s.p = s.a + align32(size_t(kMmaLines) * (K + mma_a_pad<T>()) * sizeof(T));
  s.state = s.p + align32(size_t(t.ksplit) * kMmaLines * (N + 4) * sizeof(float));
  s.cell = s.state + align32(size_t(kMmaLines) * hp * sizeof(float));
  s.bias = s.cell + (cell_state ? align32(size_t(kMmaLines) * hp * sizeof(float)) : 0);
  s.line = s.bias + (backward ? 0 : align32(size_t(2) * N * sizeof(float)));
  s.gx = s.line + align32(size_t(3) * kMmaLines * sizeof(int64_t));
  s.total = s.gx + (backward ? 0 : align32(size_t(gx_stages) * kMmaLines * G * hp * sizeof(T)));
  return s;
}

// How many steps ahead the tensor-core forward kernel copies the input projections (cp.async):
// BRNNSEG_MMA_PREFETCH = 1 (default: the step's wait covers the copy issued at its start, the build
// the H200 measured) | 2 (the copy for step s+2 is issued at step s: two steps to land). Issue 22's
// candidate for the fixed ~1 us per step; the next GPU run measures both (python/gpu_profile.py).
inline int mma_prefetch_distance() {
  const char* env = std::getenv("BRNNSEG_MMA_PREFETCH");
  if (!env || !*env || std::string(env) == "1") return 1;
  if (std::string(env) == "2") return 2;
  throw std::invalid_argument("BRNNSEG_MMA_PREFETCH must be 1 or 2, got '" + std::string(env) + "'");
}

// Which recurrence a launch runs: the FP32-core kernels (sweep_{fwd,bwd}_kernel.cuh) or the
// tensor-core ones.
enum class Recurrence { kFma = 0, kMma = 1 };

struct LaunchConfig {
  int threads = 0, tile = 0, blocks = 0;
  int smem_gates = 0;       // gates of W_hh in shared memory (all of them when they fit); FMA kernels
  size_t smem_bytes = 0;
  Recurrence recurrence = Recurrence::kFma;
  int kt = 0;               // tensor-core kernels: hid_pad / 16
  int gx_stages = 2;        // tensor-core forward: input-projection buffers (prefetch distance + 1)
  bool tf32x3 = false;      // tensor-core float32: 3xTF32 products (float32 accuracy), else TF32
  MmaTiling tiling;         // tensor-core kernels: how the warps share W_hh
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

// The tensor-core plan for (cell, hidden, storage type), or why there is none (`why` non-empty).
// T = float plans the TF32 kernel, or with tf32x3 the 3xTF32 one (ignored for half types).
template <typename T>
LaunchConfig mma_launch_config(bool backward, int G, bool cell_state, int hid, int64_t lines, size_t smem_limit,
                               std::string& why, bool tf32x3 = false) {
  const bool split = tf32x3 && sizeof(T) == 4;
  LaunchConfig c;
  int kt = 1;
  while (16 * kt < hid) kt *= 2;
  if (kt > kMmaMaxKt) {
    why = "hidden " + std::to_string(hid) + " is over " + std::to_string(16 * kMmaMaxKt) +
          " (W_hh no longer fits the registers of one CTA)";
    return c;
  }
  const MmaTiling t = backward ? mma_bwd_tiling<T>(G, kt, split) : mma_fwd_tiling<T>(G, kt, split);
  if (t.warps == 0) {
    why = "W_hh of hidden " + std::to_string(hid) + (split ? " in 3xTF32" : sizeof(T) == 4 ? " in TF32" : "") +
          " needs more than " + std::to_string(kMmaMaxWarps) + " warps x " +
          std::to_string(split ? kMmaMaxSplitFrags : kMmaMaxFrags) + (split ? " fragment pairs" : " fragments") +
          " of registers";
    return c;
  }
  // The deeper prefetch ring where it fits; else the double buffer (never lose the tensor-core plan to it).
  int stages = backward ? 2 : mma_prefetch_distance() + 1;
  if (stages > 2 && mma_smem<T>(backward, G, kt, cell_state, stages, split).total > smem_limit) stages = 2;
  const MmaSmem sm = mma_smem<T>(backward, G, kt, cell_state, stages, split);
  if (sm.total > smem_limit) {
    why = "the tensor-core kernel needs " + std::to_string(sm.total) + " bytes of shared memory, limit " +
          std::to_string(smem_limit);
    return c;
  }
  c.gx_stages = stages;
  c.tf32x3 = split;
  c.recurrence = Recurrence::kMma;
  c.kt = kt;
  c.tiling = t;
  c.threads = 32 * t.warps;
  c.tile = kMmaLines;
  c.blocks = static_cast<int>((lines + kMmaLines - 1) / kMmaLines);
  c.smem_gates = G;  // W_hh is on chip (registers)
  c.smem_bytes = sm.total;
  return c;
}
}  // namespace brnnseg

namespace brnnseg {

// The launch the op makes: the tensor-core recurrence when `request` ("auto", "fma", "mma" or "tf32x3",
// from BRNNSEG_CUDA_RECURRENCE) and the dtype allow it and it has a plan, else the FP32-core one.
//   auto:   tensor cores for half/bfloat16; for float32 only when TF32 is allowed (allow_tf32).
//   mma:    tensor cores (float32 as TF32); std::invalid_argument where there is no plan.
//   tf32x3: tensor cores, float32 as 3xTF32 (each operand a TF32 high part plus a TF32 low part, three
//           products: float32 accuracy) where W_hh's two parts fit the registers, else the FP32-core
//           kernels (float32 accuracy either way; e.g. an LSTM at hidden 64 runs its forward in 3xTF32
//           and its backward on FP32 cores); half types as mma. Opt-in until a GPU has measured it
//           against the FP32-core kernels (issue 22).
//   fma:    the FP32-core kernels.
template <typename T>
LaunchConfig plan_recurrence(const std::string& request, bool tf32_allowed, bool backward, int G, bool cell_state,
                             int hid, int64_t lines, size_t smem_limit, bool force_global_weights = false) {
  if (request != "auto" && request != "fma" && request != "mma" && request != "tf32x3")
    throw std::invalid_argument("BRNNSEG_CUDA_RECURRENCE must be 'auto', 'fma', 'mma' or 'tf32x3', got '" + request +
                                "'");
  const bool forced = request == "mma" || request == "tf32x3";
  const bool want = !force_global_weights && (forced || (request == "auto" && (sizeof(T) == 2 || tf32_allowed)));
  if (want) {
    std::string why;
    const LaunchConfig c =
        mma_launch_config<T>(backward, G, cell_state, hid, lines, smem_limit, why, request == "tf32x3");
    if (c.recurrence == Recurrence::kMma) return c;
    if (request == "mma") throw std::invalid_argument("BRNNSEG_CUDA_RECURRENCE=mma: no tensor-core kernel: " + why);
    if (request == "tf32x3" && sizeof(T) == 2)
      throw std::invalid_argument("BRNNSEG_CUDA_RECURRENCE=tf32x3: no tensor-core kernel: " + why);
  }
  return sweep_launch_config<T>(backward, G, hid, lines, smem_limit, force_global_weights);
}

}  // namespace brnnseg
