// The LSTM cell, PyTorch's gate order (i, f, g, o):
//   i = sigmoid(a_i)  f = sigmoid(a_f)  g = tanh(a_g)  o = sigmoid(a_o)   a_* = ax_* + ah_*
//   c = f * c_prev + i * g
//   h = o * tanh(c)
// Saved for backward per unit and step: i, f, g, o, c (kSaved = 5; c in slot 4).
// Interface: see gru.h.
#pragma once
#include "brnnseg/cell/activations.h"

namespace brnnseg {

struct LstmCell {
  static constexpr const char* kName = "lstm";
  static constexpr int kGates = 4;
  static constexpr int kSaved = 5;
  static constexpr int kCellSlot = 4;
  static constexpr bool kHasCellState = kCellSlot >= 0;
  static constexpr bool kSplitRecurrentGrad = false;
  static constexpr int kSummedGates = 4;  // leading gates whose pre-activation is ax + ah (all)
  static constexpr bool kBackwardReadsHPrev = false;

  // c: c_prev on entry, the new cell state on return.
  template <typename T>
  static BRNNSEG_HD T forward(const T* ax, const T* ah, T h_prev, T& c, T* saved) {
    (void)h_prev;
    const T i = sigmoid(ax[0] + ah[0]);
    const T f = sigmoid(ax[1] + ah[1]);
    const T g = tanh_act(ax[2] + ah[2]);
    const T o = sigmoid(ax[3] + ah[3]);
    c = f * c + i * g;
    saved[0] = i;
    saved[1] = f;
    saved[2] = g;
    saved[3] = o;
    saved[4] = c;
    return o * tanh_act(c);
  }

  // dc: gradient from step t+1 on entry, dc_prev on return. The pre-activation gradients are the
  // same on both sides (dah = dax); h_prev gets its gradient only through W_hh (dh_direct = 0).
  template <typename T>
  static BRNNSEG_HD void backward(T dh, T& dc, const T* saved, T h_prev, T c_prev, T* dax, T* dah, T& dh_direct) {
    (void)h_prev;
    const T i = saved[0], f = saved[1], g = saved[2], o = saved[3], c = saved[4];
    const T tc = tanh_act(c);
    const T dct = dc + dh * o * (T(1) - tc * tc);
    dax[0] = dah[0] = dct * g * i * (T(1) - i);
    dax[1] = dah[1] = dct * c_prev * f * (T(1) - f);
    dax[2] = dah[2] = dct * i * (T(1) - g * g);
    dax[3] = dah[3] = dh * tc * o * (T(1) - o);
    dc = dct * f;
    dh_direct = T(0);
  }
};

}  // namespace brnnseg
