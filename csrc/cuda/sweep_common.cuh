// What the forward and backward sweep kernels share: shared-memory access (checked in the simulator),
// storage-type conversion and the thread layout of a CTA. Compiled by nvcc (the per-dtype
// instantiation files sweep_{fwd,bwd}_{fp32,fp16,bf16}.cu) and by g++ under simt_sim.h (csrc/sim/).
#pragma once
#include <cstdint>

#include "brnnseg/cell/cells.h"
#include "brnnseg/params.h"
#include "cuda/sweep_plan.h"

#if defined(__CUDACC__)
// Shared memory is reached through smem_ptr<T> / smem_at<T>(base, byte offset): plain pointers under
// nvcc, checked pointers under the simulator (simt_sim.h: bounds, unwritten reads).
#define BRNNSEG_DYNAMIC_SMEM(type, name) \
  extern __shared__ __align__(128) unsigned char brnnseg_smem_raw[]; \
  type* name = reinterpret_cast<type*>(brnnseg_smem_raw)
template <typename T>
using smem_ptr = T*;
template <typename T>
__device__ __forceinline__ T* smem_at(unsigned char* base, size_t byte_offset) {
  return reinterpret_cast<T*>(base + byte_offset);
}
#endif

namespace brnnseg {

template <typename T>
__device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }
#if defined(BRNNSEG_SIMT_SIM)
// A checked global-memory element (simt_sim.h): read, then converted.
template <typename T>
inline float to_float(const sim::GlobalRef<T>& r) { return static_cast<float>(r.get()); }
#endif

// Which lines and unit a thread owns: blockDim.x = units_pad * line_groups; thread t owns hidden
// unit u = t % units_pad (idle when u >= hid) of tile lines lg, lg + line_groups, ...
struct CtaLayout {
  int64_t l0;        // first line of this CTA's tile
  int L;             // lines in the tile (the last tile may be partial)
  int u, lg, line_groups;
  bool active;
  __device__ __forceinline__ CtaLayout(const SweepGeometry& geo, int tile, int hid) {
    const int64_t lines = geo.lines();
    l0 = int64_t(blockIdx.x) * tile;
    L = static_cast<int>(lines - l0 < tile ? lines - l0 : tile);
    const int units_pad = (hid + 31) / 32 * 32;
    u = threadIdx.x % units_pad;
    lg = threadIdx.x / units_pad;
    line_groups = blockDim.x / units_pad;
    active = u < hid;
  }
};

}  // namespace brnnseg
