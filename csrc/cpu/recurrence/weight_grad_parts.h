// Per-work-item weight-gradient accumulators of the backward kernels. Every item (a direction and
// a tile of lines) accumulates its own dW_ih, dW_hh, db_ih, db_hh without locks; the items of a
// direction are summed at the end in a fixed order, so results do not depend on thread timing.
#pragma once
#include <torch/types.h>

#include <tuple>

namespace brnnseg::cpu {

struct WeightGradParts {
  int64_t D, Gh, C, hid;
  // Floats per item: dW_ih (Gh x C), dW_hh (Gh x hid), db_ih (Gh), db_hh (Gh).
  int64_t size() const { return Gh * (C + hid + 2); }

  template <typename T>
  struct Slots {
    T *w_ih, *w_hh, *b_ih, *b_hh;
  };
  template <typename T>
  Slots<T> slots(T* parts, int64_t item) const {
    T* w_ih = parts + item * size();
    return {w_ih, w_ih + Gh * C, w_ih + Gh * (C + hid), w_ih + Gh * (C + hid + 1)};
  }

  // Zeroed accumulators for `items` work items, direction = item % D.
  at::Tensor zeros(int64_t items, const at::TensorOptions& options) const { return at::zeros({items, size()}, options); }

  // (dW_ih (D, Gh, C), dW_hh (D, Gh, hid), db_ih (D, Gh), db_hh (D, Gh)): fresh tensors, never views
  // of one buffer (the op schemas promise outputs that do not alias). An LSTM has one bias
  // gradient (the two biases add), so its db_hh is db_ih.
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sum(const at::Tensor& parts, bool separate_b_hh) const {
    const at::Tensor s = parts.view({parts.size(0) / D, D, size()}).sum(0);
    return {s.narrow(1, 0, Gh * C).clone().view({D, Gh, C}), s.narrow(1, Gh * C, Gh * hid).clone().view({D, Gh, hid}),
            s.narrow(1, Gh * (C + hid), Gh).clone(), s.narrow(1, Gh * (C + hid + (separate_b_hh ? 1 : 0)), Gh).clone()};
  }
};

}  // namespace brnnseg::cpu
