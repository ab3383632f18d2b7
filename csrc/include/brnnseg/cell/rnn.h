// The Elman cell of torch.nn.RNN, one struct per nonlinearity (cuDNN's RNN_TANH / RNN_RELU):
//   h = act(ax + ah)          ax = W_ih x + b_ih, ah = W_hh h_prev + b_hh,  act = tanh or relu
// Saved for backward per unit and step: h (kSaved = 1). Interface: see gru.h.
#pragma once
#include "brnnseg/cell/activations.h"

namespace brnnseg {

template <bool kRelu>
struct ElmanCell {
  static constexpr int kGates = 1;
  static constexpr int kSaved = 1;
  static constexpr int kCellSlot = -1;
  static constexpr bool kHasCellState = false;
  static constexpr bool kSplitRecurrentGrad = false;
  static constexpr int kSummedGates = 1;  // leading gates whose pre-activation is ax + ah (all)
  static constexpr bool kBackwardReadsHPrev = false;

  template <typename T>
  static BRNNSEG_HD T forward(const T* ax, const T* ah, T h_prev, T& c, T* saved) {
    (void)h_prev;
    (void)c;
    const T a = ax[0] + ah[0];
    T h;
    if constexpr (kRelu) h = a > T(0) ? a : T(0);
    else h = tanh_act(a);  // (not one ?: : the tanh cell also runs on a vector type, cpu/recurrence)
    saved[0] = h;
    return h;
  }

  // act'(a) from h: tanh' = 1 - h^2; relu' = (h > 0). h_prev gets its gradient through W_hh only.
  template <typename T>
  static BRNNSEG_HD void backward(T dh, T& dc, const T* saved, T h_prev, T c_prev, T* dax, T* dah, T& dh_direct) {
    (void)dc;
    (void)h_prev;
    (void)c_prev;
    const T h = saved[0];
    if constexpr (kRelu) dax[0] = dah[0] = h > T(0) ? dh : T(0);
    else dax[0] = dah[0] = dh * (T(1) - h * h);
    dh_direct = T(0);
  }
};

struct RnnTanhCell : ElmanCell<false> {
  static constexpr const char* kName = "rnn_tanh";
};
struct RnnReluCell : ElmanCell<true> {
  static constexpr const char* kName = "rnn_relu";
};

}  // namespace brnnseg
