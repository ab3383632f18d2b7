// Per-work-item weight-gradient accumulators of the backward kernels. Every item (a direction and
// a tile of lines) accumulates its own dW_ih, dW_hh, db_ih, db_hh without locks; the items of a
// direction are summed at the end in a fixed order, so results do not depend on thread timing.
#pragma once
#include <torch/types.h>

#include <algorithm>
#include <tuple>

#include "cpu/runtime/buffer_cache.h"

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

  // Accumulators for `items` work items, direction = item % D, from the buffer cache and not zeroed:
  // every work item zeroes its own (zero()) on the thread that accumulates into it. (at::zeros filled
  // them on one thread, into fresh pages: 0.65 ms of a 9.5 ms cpu-wide bfloat16 LSTM fwd+bwd.)
  at::Tensor empty(int64_t items, const at::TensorOptions& options) const {
    return cached_empty({items, size()}, options, at::MemoryFormat::Contiguous);
  }
  template <typename T>
  void zero(T* parts, int64_t item) const {
    std::fill_n(parts + item * size(), size(), T(0));
  }

  // (dW_ih (D, Gh, C), dW_hh (D, Gh, hid), db_ih (D, Gh), db_hh (D, Gh)) in `dtype`: fresh tensors,
  // never views of one buffer (the op schemas promise outputs that do not alias; the parts are a
  // cached buffer). With one item a direction the parts are the sums: copied (and cast) once. An LSTM
  // has one bias gradient (the two biases add), so its db_hh is db_ih.
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sum(const at::Tensor& parts, bool separate_b_hh,
                                                                 at::ScalarType dtype) const {
    const int64_t per_direction = parts.size(0) / D;
    const at::Tensor s = per_direction == 1 ? parts.view({D, size()}) : parts.view({per_direction, D, size()}).sum(0);
    auto take = [&](int64_t offset, int64_t n) {
      return s.narrow(1, offset, n).to(s.options().dtype(dtype), false, true, at::MemoryFormat::Contiguous);
    };
    return {take(0, Gh * C).view({D, Gh, C}), take(Gh * C, Gh * hid).view({D, Gh, hid}), take(Gh * (C + hid), Gh),
            take(Gh * (C + hid + (separate_b_hh ? 1 : 0)), Gh)};
  }
};

}  // namespace brnnseg::cpu
