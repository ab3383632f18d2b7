// Kernel parameters of the line sweeps: sizes, strides and raw pointers only, so the same kernels
// compile under nvcc and under the SIMT simulator (simt_sim.h) with no torch types inside.
#pragma once
#include <cstdint>

#include "brnnseg/sweep_geometry.h"

namespace brnnseg {

// T: storage type of inputs/outputs (float, c10::Half, c10::BFloat16); math runs in float.
template <typename T>
struct SweepFwdParams {
  SweepGeometry geo;
  int hid;
  int tile;                 // lines per CTA
  int smem_gates;           // gates of W_hh held in shared memory (0..G); the rest is read through L2
  const T* gx;              // (P, 2, G*hid) input projections W_ih x, no bias
  const T* w_hh_t;          // (2, hid, G*hid): W_hh transposed, so threads of consecutive units read
                            // consecutive addresses
  const T* w_mma;           // tensor-core kernels: (2, hid_pad, G*hid_pad), W_hh^T zero-padded per gate
                            // (column g*hid_pad + u), the B operand; nullptr for the FMA kernels
  const float* b_ih;        // (2, G*hid), zeros when the layer has no bias
  const float* b_hh;
  T* y;                     // (N, 2*hid, H, W), strided
  int64_t y_sN, y_sC, y_sH, y_sW;
  float* ws;                // (2, T, lines, S*hid) saved gates, nullptr when not training
};

template <typename T>
struct SweepBwdParams {
  SweepGeometry geo;
  int hid;
  int tile;
  int smem_gates;
  const T* w_hh;            // (2, G*hid, hid)
  const T* w_mma;           // tensor-core kernels: (2, G*hid_pad, hid_pad), W_hh zero-padded per gate
                            // (row g*hid_pad + j), the B operand; nullptr for the FMA kernels
  const T* grad_y;          // strided like y
  int64_t g_sN, g_sC, g_sH, g_sW;
  const T* y;
  int64_t y_sN, y_sC, y_sH, y_sW;
  const float* ws;          // (2, T, lines, S*hid)
  float* dgx;               // out (P, 2, G*hid): input-side pre-activation gradients
  float* dgh;               // out (P, 2, G*hid): recurrent-side ones, stored at the position of the
                            //     h_prev they multiply (zero where no later step reads h)
  float* dgh_first;         // out (2, lines, G*hid): recurrent-side gradients of each line's first
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
