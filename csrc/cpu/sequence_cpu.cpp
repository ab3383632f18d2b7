// CPU kernels of the sequence RNN ops (brnnseg::sequence and sequence_backward, every cell), behind
// the drop-in nn.GRU / nn.LSTM / nn.RNN. The recurrence is the CPU tile engine the sweeps use
// (recurrence/tile_engine.h): every (direction, tile of sequences) runs its whole sequence on one
// thread. On top of that: initial and final states, one or two directions, and per-sequence lengths.
//
// Lengths: the batch is walked in order of decreasing length (a stable sort). At every time step
// the sequences still running are then a prefix of each tile, so the per-step GEMMs and cell steps
// simply take fewer rows; the rest keep their state and get zero output, as in pad_packed_sequence.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include "brnnseg/static_switch.h"
#include "cpu/gemm/weight_transpose.h"
#include "cpu/recurrence/tile_engine.h"
#include "cpu/recurrence/weight_grad_parts.h"
#include "cpu/runtime/cpu_tensors.h"

namespace brnnseg::cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// The batch in order of decreasing length, cut into tiles; work items are (tile, direction).
struct SeqPlan {
  int64_t T = 0, B = 0, D = 1, tile = 1, tiles = 0;
  std::vector<int64_t> order;  // sorted position -> batch index
  std::vector<int64_t> len;    // length of each sorted position (non-increasing)
  bool identity = true;        // order[j] == j: a tile's rows are equally spaced in x, y and dx

  int64_t items() const { return tiles * D; }
  // Rows of the tile [j0, j0 + L) still running at time t: a prefix, since len is non-increasing.
  int64_t active(int64_t j0, int64_t L, int64_t t) const {
    const auto b = len.begin() + j0;
    return std::partition_point(b, b + L, [t](int64_t v) { return v > t; }) - b;
  }
};

SeqPlan make_plan(const OptTensor& lengths, int64_t T, int64_t B, int64_t D) {
  SeqPlan p;
  p.T = T;
  p.B = B;
  p.D = D;
  p.order.resize(B);
  std::iota(p.order.begin(), p.order.end(), int64_t(0));
  p.len.assign(B, T);
  if (lengths.has_value()) {
    const Tensor l = lengths->contiguous();
    const int64_t* lp = l.data_ptr<int64_t>();
    std::stable_sort(p.order.begin(), p.order.end(), [lp](int64_t a, int64_t b) { return lp[a] > lp[b]; });
    for (int64_t j = 0; j < B; ++j) p.len[j] = lp[p.order[j]];
    for (int64_t j = 0; j < B; ++j) p.identity = p.identity && p.order[j] == j;
  }
  if (B == 0) return p;
  // Enough tiles that the directions together give every thread work.
  const int64_t threads = planning_threads();
  int64_t tiles = std::max((B + kMaxTile - 1) / kMaxTile, (threads + D - 1) / D);
  tiles = std::min(tiles, B);
  p.tile = (B + tiles - 1) / tiles;
  p.tiles = (B + p.tile - 1) / p.tile;
  return p;
}

// (time, batch) strides of a (T, B, F) or (B, T, F) tensor whose feature stride is 1.
struct RowMap {
  int64_t sT, sB;
  RowMap(const Tensor& t, bool batch_first)
      : sT(t.stride(batch_first ? 1 : 0)), sB(t.stride(batch_first ? 0 : 1)) {}
  int64_t at(int64_t t, int64_t b) const { return t * sT + b * sB; }
};

template <typename T>
T* ws_rows(T* ws, int d, int64_t t, int64_t j0, const SeqPlan& p, int64_t row) {
  return ws + ((d * p.T + t) * p.B + j0) * row;
}

// Copies rows of a (D, B, hid) state tensor (or zeros) into a tile buffer in sorted order, and back.
template <typename T>
void load_state(const T* src, const SeqPlan& p, int d, int64_t j0, int64_t L, int64_t hid, T* dst) {
  for (int64_t l = 0; l < L; ++l) {
    if (src) std::memcpy(dst + l * hid, src + (d * p.B + p.order[j0 + l]) * hid, hid * sizeof(T));
    else std::fill(dst + l * hid, dst + (l + 1) * hid, T(0));
  }
}
template <typename T>
void store_state(const T* src, const SeqPlan& p, int d, int64_t j0, int64_t L, int64_t hid, T* dst) {
  for (int64_t l = 0; l < L; ++l) std::memcpy(dst + (d * p.B + p.order[j0 + l]) * hid, src + l * hid, hid * sizeof(T));
}

template <typename T>
const T* opt_ptr(const OptTensor& t) { return t.has_value() ? t->data_ptr<T>() : nullptr; }

// The tile engine's forward IO for a tile of sequences [j0, j0 + L) in sorted order. W: the saved
// slots' type (T, or bfloat16 bits for bfloat16 ops: SavedSlot, tile_engine.h).
template <typename T, typename W = T>
struct SequenceForwardIO {
  const SeqPlan& plan;
  const RowMap &xm, &ym;
  const T* x;
  T* y;
  T* xrows;  // scratch (tile x C) when rows must be gathered
  int64_t C, hid, S, j0, L;
  int d;
  W* ws_;    // saved slots (D, T, B, S*hid), nullptr when not training
  int64_t active(int64_t t) const { return plan.active(j0, L, t); }
  const T* x_rows(int64_t t, int64_t Lt, int64_t& ld) const {
    if (plan.identity) {
      ld = xm.sB;
      return x + xm.at(t, j0);
    }
    for (int64_t l = 0; l < Lt; ++l)  // gather the running sequences' input rows
      std::memcpy(xrows + l * C, x + xm.at(t, plan.order[j0 + l]), C * sizeof(T));
    ld = C;
    return xrows;
  }
  W* ws(int64_t t) const { return ws_ ? ws_rows(ws_, d, t, j0, plan, S * hid) : nullptr; }
  void store(int64_t t, int64_t Lt, const T* h) const {
    for (int64_t l = 0; l < Lt; ++l)
      std::memcpy(y + ym.at(t, plan.order[j0 + l]) + d * hid, h + l * hid, hid * sizeof(T));
  }
  void idle(int64_t t, int64_t Lt) const {  // finished (or not yet started) sequences: output 0
    if (ws_) {  // unused rows, zeroed so the workspace is deterministic
      W* w = ws_rows(ws_, d, t, j0, plan, S * hid);
      std::fill(w + Lt * S * hid, w + L * S * hid, W(0));  // (bfloat16 bits 0: +0.0)
    }
    for (int64_t l = Lt; l < L; ++l) {
      T* out = y + ym.at(t, plan.order[j0 + l]) + d * hid;
      std::fill(out, out + hid, T(0));
    }
  }
};

// The saved slots' dtype: W = uint16_t means bfloat16.
template <typename T, typename W>
at::ScalarType saved_dtype() {
  return std::is_same_v<W, T> ? c10::CppTypeToScalarType<T>::value : at::kBFloat16;
}

template <typename Cell, typename T, typename W = T>
std::vector<Tensor> sequence_forward(const Tensor& x_in, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                     const OptTensor& b_hh, const OptTensor& h0_in, const OptTensor& c0_in,
                                     const OptTensor& lengths, bool batch_first, bool training,
                                     bool bf16_products) {
  constexpr int64_t G = Cell::kGates, S = Cell::kSaved;
  const Tensor x = x_in.stride(2) == 1 ? x_in : x_in.contiguous();
  const int64_t T_len = x.size(batch_first ? 1 : 0), B = x.size(batch_first ? 0 : 1), C = x.size(2);
  const int64_t D = w_hh.size(0), hid = w_hh.size(2), Gh = G * hid;
  const SeqPlan plan = make_plan(lengths, T_len, B, D);

  Tensor y = empty_large({x.size(0), x.size(1), D * hid}, x.options());
  Tensor h_n = at::empty({D, B, hid}, x.options());
  Tensor c_n = Cell::kHasCellState ? at::empty({D, B, hid}, x.options()) : at::empty({0}, x.options());
  const auto ws_opts = x.options().dtype(saved_dtype<T, W>());
  Tensor ws = training ? empty_large({D, T_len, B, S * hid}, ws_opts) : at::empty({0}, ws_opts);
  // Transposed weights (C x Gh, hid x Gh per direction): B row-major for the GEMMs (blas.h).
  const Tensor wih = bf16_products ? Tensor() : transposed_weights(w_ih);  // bfloat16 products read the pairs
  const Tensor whh = bf16_products ? Tensor() : transposed_weights(w_hh);
  const Tensor bi = b_ih.has_value() ? b_ih->contiguous() : at::zeros({D, Gh}, x.options());
  const Tensor bh = b_hh.has_value() ? b_hh->contiguous() : at::zeros({D, Gh}, x.options());
  const OptTensor h0 = h0_in.has_value() ? OptTensor(h0_in->contiguous()) : std::nullopt;
  const OptTensor c0 = c0_in.has_value() ? OptTensor(c0_in->contiguous()) : std::nullopt;

  const RowMap xm(x, batch_first), ym(y, batch_first);
  const Tensor pih = bf16_products ? weight_pairs(w_ih, true) : Tensor();
  const Tensor phh = bf16_products ? weight_pairs(w_hh, true) : Tensor();
  const TileWeights<T> wts{C,
                           hid,
                           Gh,
                           bf16_products ? nullptr : wih.data_ptr<T>(),
                           bf16_products ? nullptr : whh.data_ptr<T>(),
                           bi.data_ptr<T>(),
                           bh.data_ptr<T>(),
                           bf16_products ? pairs_ptr(pih) : nullptr,
                           bf16_products ? pairs_ptr(phh) : nullptr};
  const T* x_p = x.data_ptr<T>();
  const T* h0_p = opt_ptr<T>(h0);
  const T* c0_p = opt_ptr<T>(c0);
  T* y_p = y.data_ptr<T>();
  W* ws_p = training ? static_cast<W*>(ws.data_ptr()) : nullptr;
  T* hn_p = h_n.data_ptr<T>();
  T* cn_p = Cell::kHasCellState ? c_n.data_ptr<T>() : nullptr;

  at::parallel_for(0, plan.items(), 1, [&](int64_t begin, int64_t end) {
    const int64_t tile = plan.tile;
    ForwardScratch<T> scratch(tile, hid, Gh, Cell::kHasCellState);
    std::vector<T> xrows(plan.identity ? 0 : tile * C);
    for (int64_t i = begin; i < end; ++i) {
      const int d = static_cast<int>(i % D);
      const int64_t j0 = (i / D) * tile, L = std::min(tile, B - j0);
      load_state(h0_p, plan, d, j0, L, hid, scratch.h0());
      if (Cell::kHasCellState) load_state(c0_p, plan, d, j0, L, hid, scratch.c.data());
      SequenceForwardIO<T, W> io{plan, xm, ym, x_p, y_p, xrows.data(), C, hid, S, j0, L, d, ws_p};
      const T* h_last = forward_tile<Cell>(wts, d, L, T_len, /*h0_zero=*/h0_p == nullptr, scratch, io);
      store_state(h_last, plan, d, j0, L, hid, hn_p);
      if (Cell::kHasCellState) store_state(scratch.c.data(), plan, d, j0, L, hid, cn_p);
    }
  });
  return {y, h_n, c_n, ws};
}

// The tile engine's backward IO for a tile of sequences: per row, the state before a step is h0/c0 at
// the sequence's first step and the previous output (and saved c) otherwise.
template <typename Cell, typename T, typename W = T>
struct SequenceBackwardIO {
  const SeqPlan& plan;
  const RowMap &xm, &ym, &gm, &dxm;
  const T *x, *y, *grad_y;
  const W* ws_p;
  const T *h0, *c0;
  T* dx;       // this direction's dx
  T* dxrows;   // scratch (tile x C) when rows must be scattered
  int64_t C, hid, S, j0, L;
  int d;
  int64_t active(int64_t t) const { return plan.active(j0, L, t); }
  void before_step(int64_t t, int64_t Lt) const {  // positions past a sequence's end get no gradient
    for (int64_t l = Lt; l < L; ++l) {
      T* out = dx + dxm.at(t, plan.order[j0 + l]);
      std::fill(out, out + C, T(0));
    }
  }
  void add_grad_y(int64_t t, int64_t Lt, T* dh) const {
    if (!grad_y) return;
    for (int64_t l = 0; l < Lt; ++l) {
      const T* g = grad_y + gm.at(t, plan.order[j0 + l]) + d * hid;
      for (int64_t u = 0; u < hid; ++u) dh[l * hid + u] += g[u];
    }
  }
  void load_prev(int64_t t, int64_t Lt, T* hp, T* cp) const {
    const int64_t t_prev = d == 0 ? t - 1 : t + 1;
    for (int64_t l = 0; l < Lt; ++l) {
      const bool first = d == 0 ? t == 0 : t_prev >= plan.len[j0 + l];
      if (first) {
        load_state(h0, plan, d, j0 + l, 1, hid, hp + l * hid);
        if (Cell::kHasCellState) load_state(c0, plan, d, j0 + l, 1, hid, cp + l * hid);
      } else {
        std::memcpy(hp + l * hid, y + ym.at(t_prev, plan.order[j0 + l]) + d * hid, hid * sizeof(T));
        if constexpr (Cell::kHasCellState) {
          const W* src = ws_rows(ws_p, d, t_prev, j0 + l, plan, S * hid) + Cell::kCellSlot * hid;
          if constexpr (std::is_same_v<W, T>) std::memcpy(cp + l * hid, src, hid * sizeof(T));
          else float_from_bf16(src, cp + l * hid, hid, false);
        }
      }
    }
  }
  const W* ws(int64_t t) const { return ws_rows(ws_p, d, t, j0, plan, S * hid); }
  T* dx_rows(int64_t t, int64_t, int64_t& ld) const {
    if (plan.identity) {
      ld = dxm.sB;
      return dx + dxm.at(t, j0);
    }
    ld = C;
    return dxrows;
  }
  void dx_done(int64_t t, int64_t Lt, const T* rows) const {
    if (plan.identity) return;
    for (int64_t l = 0; l < Lt; ++l) std::memcpy(dx + dxm.at(t, plan.order[j0 + l]), rows + l * C, C * sizeof(T));
  }
  void copy_x(int64_t t, int64_t Lt, T* dst) const {
    for (int64_t l = 0; l < Lt; ++l) std::memcpy(dst + l * C, x + xm.at(t, plan.order[j0 + l]), C * sizeof(T));
  }
};

// Backward: each (direction, tile) walks its processing order in reverse through the tile engine;
// dh/dc left at the end are the gradients of h0/c0.
template <typename Cell, typename T, typename W = T>
std::vector<Tensor> sequence_backward(const OptTensor& grad_y_in, const OptTensor& grad_hn_in,
                                      const OptTensor& grad_cn_in, const Tensor& x_in, const Tensor& w_ih,
                                      const Tensor& w_hh, const OptTensor& h0_in, const OptTensor& c0_in,
                                      const OptTensor& lengths, const Tensor& y, const Tensor& ws,
                                      bool batch_first, bool bf16_products) {
  constexpr int64_t G = Cell::kGates, S = Cell::kSaved;
  const Tensor x = x_in.stride(2) == 1 ? x_in : x_in.contiguous();
  const int64_t T_len = x.size(batch_first ? 1 : 0), B = x.size(batch_first ? 0 : 1), C = x.size(2);
  const int64_t D = w_hh.size(0), hid = w_hh.size(2), Gh = G * hid;
  const SeqPlan plan = make_plan(lengths, T_len, B, D);

  const Tensor wih = bf16_products ? Tensor() : w_ih.contiguous(), whh = bf16_products ? Tensor() : w_hh.contiguous();
  auto contig = [](const OptTensor& t) { return t.has_value() ? OptTensor(t->contiguous()) : std::nullopt; };
  const OptTensor h0 = contig(h0_in), c0 = contig(c0_in), grad_hn = contig(grad_hn_in), grad_cn = contig(grad_cn_in);
  const OptTensor grad_y = grad_y_in.has_value() && grad_y_in->stride(2) != 1 ? contig(grad_y_in) : grad_y_in;

  Tensor dx_dir = empty_large({D, x.size(0), x.size(1), C}, x.options());
  Tensor dh0 = at::empty({D, B, hid}, x.options());
  Tensor dc0 = Cell::kHasCellState ? at::empty({D, B, hid}, x.options()) : at::empty({0}, x.options());
  const WeightGradParts wgrad{D, Gh, C, hid};
  Tensor parts = wgrad.empty(plan.items(), x.options());  // each work item zeroes its own

  const RowMap xm(x, batch_first), ym(y, batch_first), dxm(dx_dir[0], batch_first);
  const RowMap gm = grad_y.has_value() ? RowMap(*grad_y, batch_first) : ym;
  const Tensor pih = bf16_products ? weight_pairs(w_ih, false) : Tensor();
  const Tensor phh = bf16_products ? weight_pairs(w_hh, false) : Tensor();
  const TileWeights<T> wts{C,
                           hid,
                           Gh,
                           bf16_products ? nullptr : wih.data_ptr<T>(),
                           bf16_products ? nullptr : whh.data_ptr<T>(),
                           nullptr,
                           nullptr,
                           bf16_products ? pairs_ptr(pih) : nullptr, bf16_products ? pairs_ptr(phh) : nullptr};
  const T* x_p = x.data_ptr<T>();
  const T* y_p = y.data_ptr<T>();
  const T* gy_p = opt_ptr<T>(grad_y);
  const W* ws_p = static_cast<const W*>(ws.data_ptr());
  const T* h0_p = opt_ptr<T>(h0);
  const T* c0_p = opt_ptr<T>(c0);
  const T* ghn_p = opt_ptr<T>(grad_hn);
  const T* gcn_p = opt_ptr<T>(grad_cn);
  T* dx_p = dx_dir.data_ptr<T>();
  T* dh0_p = dh0.data_ptr<T>();
  T* dc0_p = Cell::kHasCellState ? dc0.data_ptr<T>() : nullptr;
  T* parts_p = parts.data_ptr<T>();
  const int64_t dx_dir_stride = x.numel();

  at::parallel_for(0, plan.items(), 1, [&](int64_t begin, int64_t end) {
    const int64_t tile = plan.tile;
    BackwardScratch<T> scratch(tile, hid, Gh, C, Cell::kHasCellState, Cell::kSplitRecurrentGrad);
    std::vector<T> dxrows(plan.identity ? 0 : tile * C);
    for (int64_t item = begin; item < end; ++item) {
      const int d = static_cast<int>(item % D);
      const int64_t j0 = (item / D) * tile, L = std::min(tile, B - j0);
      load_state(ghn_p, plan, d, j0, L, hid, scratch.dh.data());
      if (Cell::kHasCellState) load_state(gcn_p, plan, d, j0, L, hid, scratch.dc.data());
      wgrad.zero(parts_p, item);
      const auto [dwih, dwhh, dbih, dbhh] = wgrad.slots(parts_p, item);
      SequenceBackwardIO<Cell, T, W> io{plan, xm, ym, gm, dxm, x_p, y_p, gy_p, ws_p, h0_p, c0_p,
                                     dx_p + d * dx_dir_stride, dxrows.data(), C, hid, S, j0, L, d};
      backward_tile<Cell>(wts, d, T_len, scratch, GradSlots<T>{dwih, dwhh, dbih, dbhh}, io);
      store_state(scratch.dh.data(), plan, d, j0, L, hid, dh0_p);
      if (Cell::kHasCellState) store_state(scratch.dc.data(), plan, d, j0, L, hid, dc0_p);
    }
  });

  auto [dw_ih, dw_hh, db_ih, db_hh] = wgrad.sum(parts, Cell::kSplitRecurrentGrad, parts.scalar_type());
  Tensor dx = D == 2 ? dx_dir[0].add_(dx_dir[1]) : dx_dir[0];
  return {dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0};
}

// ---- checks (every message names the argument and what was expected) ----

void check_state(const char* op, const char* name, const OptTensor& s, const Tensor& x, int64_t D, int64_t B,
                 int64_t hid) {
  if (!s.has_value()) return;
  TORCH_CHECK(s->dim() == 3 && s->size(0) == D && s->size(1) == B && s->size(2) == hid, op, ": ", name,
              " must have shape (", D, ", ", B, ", ", hid, "), got ", s->sizes());
  TORCH_CHECK(s->scalar_type() == x.scalar_type() && s->device() == x.device(), op, ": ", name,
              " must match x in dtype and device (", x.scalar_type(), ", ", x.device(), "), got ", s->scalar_type(),
              ", ", s->device());
}

template <typename Cell>
void check_sequence_inputs(const char* op, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                           const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& h0, const OptTensor& c0,
                           const OptTensor& lengths, bool batch_first) {
  constexpr int64_t G = Cell::kGates;
  TORCH_CHECK(x.dim() == 3, op, ": x must be 3-D (", batch_first ? "B, T, C" : "T, B, C", "), got ", x.dim(),
              "-D with shape ", x.sizes());
  TORCH_CHECK(x.device().is_cpu(), op, ": CPU kernel called with x on ", x.device());
  TORCH_CHECK(w_hh.dim() == 3 && (w_hh.size(0) == 1 || w_hh.size(0) == 2) && w_hh.size(1) == G * w_hh.size(2) &&
                  w_hh.size(2) > 0,
              op, ": w_hh must have shape (directions 1 or 2, ", G, "*hidden, hidden > 0), got ", w_hh.sizes());
  const int64_t D = w_hh.size(0), hid = w_hh.size(2), C = x.size(2);
  const int64_t T = x.size(batch_first ? 1 : 0), B = x.size(batch_first ? 0 : 1);
  TORCH_CHECK(w_ih.dim() == 3 && w_ih.size(0) == D && w_ih.size(1) == G * hid && w_ih.size(2) == C, op,
              ": w_ih must have shape (", D, ", ", G * hid, ", C=", C, "), got ", w_ih.sizes());
  const char* names[2] = {"b_ih", "b_hh"};
  const OptTensor* biases[2] = {&b_ih, &b_hh};
  for (int i = 0; i < 2; ++i) {
    if (!biases[i]->has_value()) continue;
    TORCH_CHECK(biases[i]->value().dim() == 2 && biases[i]->value().size(0) == D &&
                    biases[i]->value().size(1) == G * hid,
                op, ": ", names[i], " must have shape (", D, ", ", G * hid, "), got ", biases[i]->value().sizes());
  }
  for (const OptTensor& w : {OptTensor(w_ih), OptTensor(w_hh), b_ih, b_hh}) {
    if (!w.has_value()) continue;
    TORCH_CHECK(w->scalar_type() == x.scalar_type() && w->device() == x.device(), op,
                ": weights and biases must match x in dtype and device (", x.scalar_type(), ", ", x.device(),
                "), got ", w->scalar_type(), ", ", w->device());
  }
  check_state(op, "h0", h0, x, D, B, hid);
  if (Cell::kHasCellState) check_state(op, "c0", c0, x, D, B, hid);
  else TORCH_CHECK(!c0.has_value(), op, ": c0 is only for cells with a cell state (lstm), got one for '",
                   Cell::kName, "'");
  if (lengths.has_value()) {
    const Tensor& l = *lengths;
    TORCH_CHECK(l.dim() == 1 && l.size(0) == B && l.scalar_type() == at::kLong && l.device().is_cpu(), op,
                ": lengths must be a 1-D int64 CPU tensor of ", B, " sequence lengths, got ", l.scalar_type(),
                " of shape ", l.sizes(), " on ", l.device());
    if (B > 0) {
      const auto [lo, hi] = at::aminmax(l);
      TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() <= T, op, ": lengths must lie in [0, T=", T,
                  "], got values in [", lo.item<int64_t>(), ", ", hi.item<int64_t>(), "]");
    }
  }
}

// ---- the ops: checks, then CELL_SWITCH / DTYPE_SWITCH to the templates above ----

std::tuple<Tensor, Tensor, Tensor, Tensor> sequence_cpu(c10::string_view cell, const Tensor& x, const Tensor& w_ih,
                                                        const Tensor& w_hh, const OptTensor& b_ih,
                                                        const OptTensor& b_hh, const OptTensor& h0,
                                                        const OptTensor& c0, const OptTensor& lengths,
                                                        bool batch_first, bool training) {
  constexpr const char* op = "brnnseg::sequence";
  const std::vector<Tensor> o = CELL_SWITCH(op, cell, Cell, [&] {
    if (x.scalar_type() == at::kBFloat16) {  // float32 state, bfloat16 products (tile_engine.h)
      check_sequence_inputs<Cell>(op, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first);
      const BFloat16Op b;
      std::vector<Tensor> r =
          sequence_forward<Cell, float, uint16_t>(b.in(x), b.weight(w_ih), b.weight(w_hh), b.in(b_ih), b.in(b_hh),
                                                  b.in(h0), b.in(c0), lengths, batch_first, training, b.products);
      for (int i = 0; i < 3; ++i) r[i] = b.out(r[i]);  // y, h_n, c_n; the workspace is bfloat16 already
      return r;
    }
    return DTYPE_SWITCH(op, x.scalar_type(), T, CpuDtypes, [&] {
      check_sequence_inputs<Cell>(op, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first);
      return sequence_forward<Cell, T>(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first, training, false);
    });
  });
  return {o[0], o[1], o[2], o[3]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> sequence_backward_cpu(
    c10::string_view cell, const OptTensor& grad_y, const OptTensor& grad_hn, const OptTensor& grad_cn,
    const Tensor& x, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& h0, const OptTensor& c0,
    const OptTensor& lengths, const Tensor& y, const Tensor& ws, bool batch_first) {
  constexpr const char* op = "brnnseg::sequence_backward";
  const std::vector<Tensor> o = CELL_SWITCH(op, cell, Cell, [&] {
    check_sequence_inputs<Cell>(op, x, w_ih, w_hh, std::nullopt, std::nullopt, h0, c0, lengths, batch_first);
    const int64_t D = w_hh.size(0), hid = w_hh.size(2);
    const int64_t T = x.size(batch_first ? 1 : 0), B = x.size(batch_first ? 0 : 1);
    const std::vector<int64_t> y_shape{x.size(0), x.size(1), D * hid};
    TORCH_CHECK(y.sizes() == y_shape && y.stride(2) == 1, op, ": y must have shape ", y_shape, ", got ", y.sizes());
    if (grad_y.has_value())
      TORCH_CHECK(grad_y->sizes() == y_shape, op, ": grad_y must have shape ", y_shape, ", got ", grad_y->sizes());
    check_state(op, "grad_h_n", grad_hn, x, D, B, hid);
    if (Cell::kHasCellState) check_state(op, "grad_c_n", grad_cn, x, D, B, hid);
    const std::vector<int64_t> ws_shape{D, T, B, Cell::kSaved * hid};
    TORCH_CHECK(ws.sizes() == ws_shape && ws.is_contiguous(), op,
                ": workspace must be a contiguous tensor of shape ", ws_shape,
                " (run the forward with training=True), got ", ws.sizes());
    for (const OptTensor& t : {grad_y, OptTensor(y)})
      if (t.has_value())
        TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(), op,
                    ": grad_y and y must match x in dtype and device (", x.scalar_type(), ", ", x.device(), "), got ",
                    t->scalar_type(), ", ", t->device());
    const bool bf16 = x.scalar_type() == at::kBFloat16;
    const at::ScalarType ws_dtype = x.scalar_type();  // bfloat16 ops: float32 state, bfloat16 saved slots
    TORCH_CHECK(ws.scalar_type() == ws_dtype && ws.device() == x.device(), op, ": workspace must be ", ws_dtype,
                " on ", x.device(), ", got ", ws.scalar_type(), " on ", ws.device());
    const OptTensor gcn = Cell::kHasCellState ? grad_cn : std::nullopt;
    if (bf16) {
      const BFloat16Op b;
      std::vector<Tensor> r = sequence_backward<Cell, float, uint16_t>(b.in(grad_y), b.in(grad_hn), b.in(gcn), b.in(x),
                                                             b.weight(w_ih), b.weight(w_hh), b.in(h0), b.in(c0), lengths,
                                                             b.in(y), ws, batch_first, b.products);
      for (Tensor& t : r) t = b.out(t);
      return r;
    }
    return DTYPE_SWITCH(op, x.scalar_type(), T, CpuDtypes, [&] {
      return sequence_backward<Cell, T>(grad_y, grad_hn, gcn, x, w_ih, w_hh, h0, c0, lengths, y, ws, batch_first,
                                        false);
    });
  });
  return {o[0], o[1], o[2], o[3], o[4], o[5], o[6]};
}

}  // namespace

TORCH_LIBRARY_IMPL(brnnseg, CPU, m) {
  m.impl("sequence", &sequence_cpu);
  m.impl("sequence_backward", &sequence_backward_cpu);
}

}  // namespace brnnseg::cpu
