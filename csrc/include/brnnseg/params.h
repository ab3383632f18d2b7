// Kernel parameters of the line sweeps: sizes, strides and raw pointers only, so the same kernels
// compile under nvcc and under the SIMT simulator (simt_sim.h) with no torch types inside.
#pragma once
#include <cstdint>

#include "brnnseg/sweep_geometry.h"

namespace brnnseg {

// Global-memory pointers of the kernels: plain pointers under nvcc (and in host code that only fills
// parameters), checked pointers under the SIMT simulator (simt_sim.h: a read of an element the op
// allocated and nothing wrote is a fault). gmem_raw(p) is the raw pointer, for what takes one
// (wmma fragment loads, prefetches).
#if defined(BRNNSEG_SIMT_SIM)
template <typename T>
using gmem_ptr = ::brnnseg::sim::GlobalPtr<T>;
using ::brnnseg::sim::gmem_raw;
#else
template <typename T>
using gmem_ptr = T*;
template <typename T>
#if defined(__CUDACC__)
__host__ __device__
#endif
inline T* gmem_raw(T* p) {
  return p;
}
#endif

// T: storage type of inputs/outputs (float, c10::Half, c10::BFloat16); math runs in float.
template <typename T>
struct SweepFwdParams {
  SweepGeometry geo;
  int hid;
  int tile;                 // lines per CTA
  int smem_gates;           // gates of W_hh held in shared memory (0..G); the rest is read through L2
  gmem_ptr<const T> gx;              // (P, 2, G*hid) input projections W_ih x, no bias
  gmem_ptr<const T> w_hh_t;          // (2, hid, G*hid): W_hh transposed, so threads of consecutive units read
                            // consecutive addresses
  gmem_ptr<const T> w_mma;  // tensor-core kernels: (2, hid_pad, G*hid_pad), W_hh^T zero-padded per gate
                            // (column g*hid_pad + u), the B operand; nullptr for the FMA kernels
  gmem_ptr<const float> b_ih;        // (2, G*hid), zeros when the layer has no bias
  gmem_ptr<const float> b_hh;
  gmem_ptr<T> y;            // (N, 2*hid, H, W), strided
  int64_t y_sN, y_sC, y_sH, y_sW;
  gmem_ptr<float> ws;       // (2, T, lines, S*hid) saved gates, nullptr when not training
  int gx_stages = 2;        // tensor-core kernel: input-projection buffers, prefetch distance + 1 (2 or 3)
};

template <typename T>
struct SweepBwdParams {
  SweepGeometry geo;
  int hid;
  int tile;
  int smem_gates;
  gmem_ptr<const T> w_hh;   // (2, G*hid, hid)
  gmem_ptr<const T> w_mma;  // tensor-core kernels: (2, G*hid_pad, hid_pad), W_hh zero-padded per gate
                            // (row g*hid_pad + j), the B operand; nullptr for the FMA kernels
  gmem_ptr<const T> grad_y; // strided like y
  int64_t g_sN, g_sC, g_sH, g_sW;
  gmem_ptr<const T> y;
  int64_t y_sN, y_sC, y_sH, y_sW;
  gmem_ptr<const float> ws; // (2, T, lines, S*hid)
  gmem_ptr<float> dgx;      // out (P, 2, G*hid): input-side pre-activation gradients
  gmem_ptr<float> dgh;      // out (P, 2, G*hid): recurrent-side ones, stored at the position of the
                            //     h_prev they multiply (zero where no later step reads h)
  gmem_ptr<float> dgh_first; // out (2, lines, G*hid): recurrent-side gradients of each line's first
                            //     step (h_prev = 0: they count for the bias only)
};

// Up to two sweeps of the same cell and hidden size in one launch (mode="parallel": the row and the
// column sweep of one input); blockIdx.z picks the sweep, CTAs past its tile count exit at once.
template <typename P>
struct SweepBatch {
  P sweep[2];
  int blocks[2] = {0, 0};
  int count = 1;
};

}  // namespace brnnseg
