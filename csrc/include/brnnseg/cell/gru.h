// The GRU cell, PyTorch's variant (reset gate applied after the recurrent product):
//   r  = sigmoid(ax_r + ah_r)          ax_* = W_i* x + b_i*   (input side)
//   z  = sigmoid(ax_z + ah_z)          ah_* = W_h* h_prev + b_h*   (recurrent side)
//   n  = tanh(ax_n + r * ah_n)
//   h  = (1 - z) * n + z * h_prev
// Saved for backward per unit and step: r, z, n, ah_n (kSaved = 4).
//
// The interface every cell implements (see CONTRIBUTING.md, "Add a cell"): compile-time facts the
// kernels and the planner read, and the math of ONE hidden unit, written once for the CPU, the CUDA
// kernels and the simulator.
#pragma once
#include "brnnseg/cell/activations.h"

namespace brnnseg {

struct GruCell {
  static constexpr const char* kName = "gru";   // the `cell` argument of the ops
  static constexpr int kGates = 3;              // rows of W_ih / W_hh per hidden unit
  static constexpr int kSaved = 4;              // floats saved per unit and step for backward
  static constexpr int kCellSlot = -1;          // saved slot holding a cell state c (-1: none)
  static constexpr bool kHasCellState = kCellSlot >= 0;
  static constexpr bool kSplitRecurrentGrad = true;  // gradient of ah differs from that of ax (n gate)
  static constexpr int kSummedGates = 2;  // leading gates whose pre-activation is ax + ah (r, z)
  static constexpr bool kBackwardReadsHPrev = true;  // backward needs h_prev (besides the saved slots)

  // ax, ah: the gates' input- and recurrent-side pre-activations (biases included). c: the cell
  // state (unused). Returns h; writes the saved slots.
  template <typename T>
  static BRNNSEG_HD T forward(const T* ax, const T* ah, T h_prev, T& c, T* saved) {
    (void)c;
    const T r = sigmoid(ax[0] + ah[0]);
    const T z = sigmoid(ax[1] + ah[1]);
    const T n = tanh_act(ax[2] + r * ah[2]);
    saved[0] = r;
    saved[1] = z;
    saved[2] = n;
    saved[3] = ah[2];
    return (T(1) - z) * n + z * h_prev;
  }

  // dh: gradient reaching h at this step. Writes the gradients of ax (dax) and ah (dah) and the
  // part of dh_prev that bypasses W_hh (dh_direct). dc and c_prev are unused (no cell state).
  template <typename T>
  static BRNNSEG_HD void backward(T dh, T& dc, const T* saved, T h_prev, T c_prev, T* dax, T* dah, T& dh_direct) {
    (void)dc;
    (void)c_prev;
    const T r = saved[0], z = saved[1], n = saved[2], ah_n = saved[3];
    const T dn = dh * (T(1) - z);
    const T dz = dh * (h_prev - n);
    dh_direct = dh * z;
    const T da_n = dn * (T(1) - n * n);
    const T da_r = da_n * ah_n * r * (T(1) - r);
    const T da_z = dz * z * (T(1) - z);
    dax[0] = dah[0] = da_r;
    dax[1] = dah[1] = da_z;
    dax[2] = da_n;
    dah[2] = da_n * r;
  }
};

}  // namespace brnnseg
