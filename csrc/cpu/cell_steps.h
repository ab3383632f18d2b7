// One time step of the cell math over a tile of L lines, on the CPU. Every buffer is tile-local and
// row-major (row l = line l of the tile). The inner loop runs over hidden units with unit stride so
// it vectorises; cell_steps.cpp compiles the float versions for several ISAs (target_clones) and
// picks one at load time.
#pragma once
#include <cstdint>

namespace brnnseg::cpu {

template <typename T>
struct StepArgs {
  int64_t L, hid;
  const T* gx;                  // L x G*hid input projections W_ih x (no bias)
  const T* gh;                  // L x G*hid recurrent products W_hh h_prev (no bias)
  const T* b_ih; const T* b_hh; // G*hid biases (zeros when the layer has none)
  T* ws;                        // L x S*hid saved gates of this step, or nullptr (not training)
};

// h_out (L x hid) receives the new hidden state.
void gru_step_forward(const StepArgs<float>& a, float* h_out, const float* h_prev);
void gru_step_forward(const StepArgs<double>& a, double* h_out, const double* h_prev);
// c (L x hid) holds c_prev on entry and the new cell state on return.
void lstm_step_forward(const StepArgs<float>& a, float* h_out, float* c);
void lstm_step_forward(const StepArgs<double>& a, double* h_out, double* c);

template <typename T>
struct StepBackwardArgs {
  int64_t L, hid;
  const T* ws;                  // L x S*hid saved gates of this step
  T* dgx;                       // out: L x G*hid pre-activation grads, input side (= recurrent side for LSTM)
  T* dgh;                       // out: L x G*hid recurrent-side grads (GRU only; differs in the n gate)
  T* db_ih; T* db_hh;           // G*hid bias-gradient accumulators (db_hh: GRU only)
};

// dh: in = gradient reaching h at this step; out = the part of dh_prev that bypasses W_hh.
// h_prev: L x hid (zeros at the first step).
void gru_step_backward(const StepBackwardArgs<float>& a, float* dh, const float* h_prev);
void gru_step_backward(const StepBackwardArgs<double>& a, double* dh, const double* h_prev);
// dh: in = gradient reaching h; out = 0 (h_prev gets its gradient only through W_hh).
// dc: in = gradient from step t+1; out = dc_prev.
// c_prev: the previous step's cell state, row l at c_prev + l*c_prev_ld; nullptr at the first step.
void lstm_step_backward(const StepBackwardArgs<float>& a, float* dh, float* dc, const float* c_prev,
                        int64_t c_prev_ld);
void lstm_step_backward(const StepBackwardArgs<double>& a, double* dh, double* dc, const double* c_prev,
                        int64_t c_prev_ld);

}  // namespace brnnseg::cpu
