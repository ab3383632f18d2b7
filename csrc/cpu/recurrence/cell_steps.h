// One time step of a cell over a tile of L lines, on the CPU. Every buffer is tile-local and
// row-major (row l = line l of the tile). The inner loop runs over hidden units with unit stride so
// it vectorises; cell_steps.cpp compiles the float versions for several ISAs (target_clones) and
// picks one at load time. One overload per cell of BRNNSEG_FOR_EACH_CELL (the tag argument picks it).
#pragma once
#include <cstdint>

#include "brnnseg/cell/cells.h"

namespace brnnseg::cpu {

template <typename T>
struct StepArgs {
  int64_t L, hid;
  const T* gx;                  // L x G*hid input projections W_ih x (no bias)
  const T* gh;                  // L x G*hid recurrent products W_hh h_prev (no bias); nullptr when every
                                // gate is summed (below)
  const T* b_ih; const T* b_hh; // G*hid biases (zeros when the layer has none)
  T* ws;                        // L x S*hid saved slots of this step, or nullptr (not training)
  bool bf16_gates = false;      // a bfloat16 op: gate math to bfloat16's accuracy where that is faster
  uint16_t* ws_bf16 = nullptr;  // or the saved slots in bfloat16 (bits; bfloat16 ops, ws then nullptr)
  int summed = 0;               // the first `summed` gates (<= Cell::kSummedGates) hold W_ih x + W_hh h_prev
                                // in gx, their gh columns unread: both products in one pass (tile_engine.h)
};

template <typename T>
struct StepBackwardArgs {
  int64_t L, hid;
  const T* ws;                  // L x S*hid saved slots of this step
  T* dgx;                       // out: L x G*hid pre-activation grads, input side
  T* dgh;                       // out: L x G*hid recurrent side (cells with kSplitRecurrentGrad; else unused)
  T* db_ih; T* db_hh;           // G*hid bias-gradient accumulators (db_hh: kSplitRecurrentGrad only)
  const uint16_t* ws_bf16 = nullptr;  // or the saved slots in bfloat16 (bits; ws then nullptr)
};

// Forward: h_out (L x hid) receives the new hidden state; h_prev (L x hid); c (L x hid): the cell
// state, c_prev on entry and the new one on return (cells with a cell state; else unused).
// Backward: dh: in = gradient reaching h at this step; out = the part of dh_prev that bypasses W_hh.
// dc: in = gradient of c from step t+1, out = dc_prev (cells with a cell state). h_prev: L x hid (zeros
// at the first step). c_prev: the previous step's cell state, row l at c_prev + l*c_prev_ld; nullptr at
// the first step.
#define BRNNSEG_DECLARE_CELL_STEPS(C)                                                                          \
  void step_forward(C, const StepArgs<float>& a, float* h_out, const float* h_prev, float* c);                 \
  void step_forward(C, const StepArgs<double>& a, double* h_out, const double* h_prev, double* c);             \
  void step_backward(C, const StepBackwardArgs<float>& a, float* dh, float* dc, const float* h_prev,           \
                     const float* c_prev, int64_t c_prev_ld);                                                  \
  void step_backward(C, const StepBackwardArgs<double>& a, double* dh, double* dc, const double* h_prev,       \
                     const double* c_prev, int64_t c_prev_ld);
BRNNSEG_FOR_EACH_CELL(BRNNSEG_DECLARE_CELL_STEPS)
#undef BRNNSEG_DECLARE_CELL_STEPS

// The float forward and backward steps on AVX-512 (cell_steps_avx512.cpp): the cells with transcendental activations
// (the ReLU cell has none; GCC vectorises it well). step_forward takes it where cpu/runtime/isa.h says
// AVX-512 (BRNNSEG_CPU_ISA caps that); call it directly only on such a CPU.
#define BRNNSEG_FOR_EACH_VECTOR_CELL(X) X(GruCell) X(LstmCell) X(RnnTanhCell)
#define BRNNSEG_DECLARE_AVX512_STEP(C)                                                                  \
  void step_forward_avx512(C, const StepArgs<float>& a, float* h_out, const float* h_prev, float* c); \
  void step_backward_avx512(C, const StepBackwardArgs<float>& a, float* dh, float* dc, const float* h_prev, \
                            const float* c_prev, int64_t c_prev_ld);
BRNNSEG_FOR_EACH_VECTOR_CELL(BRNNSEG_DECLARE_AVX512_STEP)
#undef BRNNSEG_DECLARE_AVX512_STEP
// False where the compiler could not build them (not GCC on x86-64): step_forward never calls them then.
bool avx512_steps_built();

}  // namespace brnnseg::cpu
