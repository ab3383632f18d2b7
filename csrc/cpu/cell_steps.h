// One time step of the cell math over a tile of L lines, on the CPU. The inner loop runs over
// hidden units with unit stride so it vectorises; cell_steps.cpp compiles the float versions
// for several ISAs (target_clones) and picks one at load time.
//
// Pointers (all row-major, "ld" = distance between rows):
//   pos[l]        position of line l at this time step (rows of ws and dgx)
//   gx            input projections of the tile's lines at this step: row l at gx + l*gx_ld, G*hid wide
//                 (bias not included)
//   gh            recurrent products W_hh h_prev, L x G*hid contiguous (no bias)
//   b_ih, b_hh    G*hid biases (zeros when the layer has none)
//   ws            saved gates, offset to this direction, row p at ws + p*ws_ld (nullptr: not saved)
#pragma once
#include <cstdint>

namespace brnnseg::cpu {

template <typename T>
struct StepArgs {
  int64_t L, hid;
  const int64_t* pos;
  const T* gx; int64_t gx_ld;
  const T* gh;
  const T* b_ih; const T* b_hh;
  T* ws; int64_t ws_ld;
};

// h (L x hid) receives the new hidden state.
void gru_step_forward(const StepArgs<float>& a, float* h_out, const float* h_prev);
void gru_step_forward(const StepArgs<double>& a, double* h_out, const double* h_prev);
// c (L x hid) holds c_prev on entry and the new cell state on return.
void lstm_step_forward(const StepArgs<float>& a, float* h_out, float* c);
void lstm_step_forward(const StepArgs<double>& a, double* h_out, double* c);

template <typename T>
struct StepBackwardArgs {
  int64_t L, hid;
  const int64_t* pos;
  const T* ws; int64_t ws_ld;    // saved gates of this step (offset to the direction)
  T* dgx; int64_t dgx_ld;        // out: input-side pre-activation grads at pos[l]
  T* dgh;                        // out: L x G*hid recurrent-side pre-activation grads
  T* db_ih; T* db_hh;            // G*hid accumulators (bias gradients)
};

// dh: in = gradient reaching h at this step, out = dh_prev minus the W_hh path.
// h_prev: L x hid (zeros at the first step).
void gru_step_backward(const StepBackwardArgs<float>& a, float* dh, const float* h_prev);
void gru_step_backward(const StepBackwardArgs<double>& a, double* dh, const double* h_prev);
// dh: in = gradient reaching h; out = 0 (LSTM's h_prev gets its gradient only through W_hh).
// dc: in = gradient from step t+1, out = dc_prev. prev_offset: position offset of the previous
// step of each line (c_prev lives at ws row pos[l] + prev_offset); first: no previous step.
void lstm_step_backward(const StepBackwardArgs<float>& a, float* dh, float* dc, int64_t prev_offset, bool first);
void lstm_step_backward(const StepBackwardArgs<double>& a, double* dh, double* dc, int64_t prev_offset, bool first);

}  // namespace brnnseg::cpu
