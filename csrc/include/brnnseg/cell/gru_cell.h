// GRU cell math for one hidden unit, PyTorch's variant (reset gate applied after the
// recurrent product):
//   r  = sigmoid(gx_r + gh_r)          gx_* = W_i* x + b_i*
//   z  = sigmoid(gx_z + gh_z)          gh_* = W_h* h_prev + b_h*
//   n  = tanh(gx_n + r * gh_n)
//   h  = (1 - z) * n + z * h_prev
// Saved for backward per unit and step: r, z, n, gh_n (S = 4).
#pragma once
#include "brnnseg/cell/activations.h"

namespace brnnseg {

struct GruCell {
  static constexpr int kGates = 3;
  static constexpr int kSaved = 4;
};

template <typename T>
BRNNSEG_HD T gru_cell_forward(T gx_r, T gx_z, T gx_n, T gh_r, T gh_z, T gh_n, T h_prev,
                              T& r, T& z, T& n) {
  r = sigmoid(gx_r + gh_r);
  z = sigmoid(gx_z + gh_z);
  n = tanh_act(gx_n + r * gh_n);
  return (T(1) - z) * n + z * h_prev;
}

// Given dh (gradient reaching h at this step), returns the gradients of the gate
// pre-activations: on the input side (da_r, da_z, da_n) and on the recurrent side
// (da_r, da_z, dgh_n), plus the part of dh_prev that bypasses W_hh (dh * z).
template <typename T>
BRNNSEG_HD void gru_cell_backward(T dh, T r, T z, T n, T gh_n, T h_prev,
                                  T& da_r, T& da_z, T& da_n, T& dgh_n, T& dh_prev_direct) {
  const T dn = dh * (T(1) - z);
  const T dz = dh * (h_prev - n);
  dh_prev_direct = dh * z;
  da_n = dn * (T(1) - n * n);
  const T dr = da_n * gh_n;
  dgh_n = da_n * r;
  da_r = dr * r * (T(1) - r);
  da_z = dz * z * (T(1) - z);
}

}  // namespace brnnseg
