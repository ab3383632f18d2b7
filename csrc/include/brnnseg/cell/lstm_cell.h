// LSTM cell math for one hidden unit, PyTorch's gate order (i, f, g, o):
//   i = sigmoid(a_i)  f = sigmoid(a_f)  g = tanh(a_g)  o = sigmoid(a_o)   a_* = gx_* + gh_*
//   c = f * c_prev + i * g
//   h = o * tanh(c)
// Saved for backward per unit and step: i, f, g, o, c (S = 5).
#pragma once
#include "brnnseg/cell/activations.h"

namespace brnnseg {

struct LstmCell {
  static constexpr int kGates = 4;
  static constexpr int kSaved = 5;
};

template <typename T>
BRNNSEG_HD T lstm_cell_forward(T a_i, T a_f, T a_g, T a_o, T c_prev,
                               T& i, T& f, T& g, T& o, T& c) {
  i = sigmoid(a_i);
  f = sigmoid(a_f);
  g = tanh_act(a_g);
  o = sigmoid(a_o);
  c = f * c_prev + i * g;
  return o * tanh_act(c);
}

// dh, dc: gradients reaching h and c at this step (dc from step t+1 only).
// Returns the pre-activation gradients (identical on the input and recurrent side)
// and dc_prev.
template <typename T>
BRNNSEG_HD void lstm_cell_backward(T dh, T dc, T i, T f, T g, T o, T c, T c_prev,
                                   T& da_i, T& da_f, T& da_g, T& da_o, T& dc_prev) {
  const T tc = tanh_act(c);
  const T dct = dc + dh * o * (T(1) - tc * tc);
  da_o = dh * tc * o * (T(1) - o);
  da_i = dct * g * i * (T(1) - i);
  da_f = dct * c_prev * f * (T(1) - f);
  da_g = dct * i * (T(1) - g * g);
  dc_prev = dct * f;
}

}  // namespace brnnseg
