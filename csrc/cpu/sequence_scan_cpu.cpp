// CPU kernels of the sequence RNN ops (brnnseg::gru_sequence, brnnseg::lstm_sequence and their
// backward ops), behind the drop-in nn.GRU / nn.LSTM. The scheme is the line sweep's
// (line_scan_cpu.cpp): every (direction, tile of sequences) runs its whole sequence on one thread,
// per step a small GEMM for the tile's inputs and one for W_hh, then the fused cell math. On top of
// that: initial and final states, one or two directions, and per-sequence lengths.
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

#include "blas.h"
#include "brnnseg/cell/gru_cell.h"
#include "brnnseg/cell/lstm_cell.h"
#include "brnnseg/sweep_geometry.h"
#include "cell_steps.h"
#include "cpu_tensors.h"
#include "weight_grad_parts.h"
#include "weight_transpose.h"

namespace brnnseg::cpu {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

constexpr int64_t kMaxTile = 128;  // as in line_scan_cpu.cpp
constexpr int64_t kChunk = 8;      // steps per weight-gradient GEMM in backward

template <typename Cell>
constexpr const char* seq_op_name() { return Cell::kGates == 3 ? "gru_sequence" : "lstm_sequence"; }

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
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
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

template <typename T, typename Cell>
std::vector<Tensor> sequence_forward(const Tensor& x_in, const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                                     const OptTensor& b_hh, const OptTensor& h0_in, const OptTensor& c0_in,
                                     const OptTensor& lengths, bool batch_first, bool training) {
  constexpr int64_t G = Cell::kGates, S = Cell::kSaved;
  const Tensor x = x_in.stride(2) == 1 ? x_in : x_in.contiguous();
  const int64_t T_len = x.size(batch_first ? 1 : 0), B = x.size(batch_first ? 0 : 1), C = x.size(2);
  const int64_t D = w_hh.size(0), hid = w_hh.size(2), Gh = G * hid;
  const SeqPlan plan = make_plan(lengths, T_len, B, D);

  Tensor y = empty_large({x.size(0), x.size(1), D * hid}, x.options());
  Tensor h_n = at::empty({D, B, hid}, x.options());
  Tensor c_n = G == 4 ? at::empty({D, B, hid}, x.options()) : Tensor();
  Tensor ws = training ? empty_large({D, T_len, B, S * hid}, x.options()) : at::empty({0}, x.options());
  // Transposed weights (C x Gh, hid x Gh per direction): B row-major for the GEMMs (blas.h).
  const Tensor wih = transposed_weights(w_ih), whh = transposed_weights(w_hh);
  const Tensor bi = b_ih.has_value() ? b_ih->contiguous() : at::zeros({D, Gh}, x.options());
  const Tensor bh = b_hh.has_value() ? b_hh->contiguous() : at::zeros({D, Gh}, x.options());
  const OptTensor h0 = h0_in.has_value() ? OptTensor(h0_in->contiguous()) : std::nullopt;
  const OptTensor c0 = c0_in.has_value() ? OptTensor(c0_in->contiguous()) : std::nullopt;

  const RowMap xm(x, batch_first), ym(y, batch_first);
  const T* x_p = x.data_ptr<T>();
  const T* wih_p = wih.data_ptr<T>();
  const T* whh_p = whh.data_ptr<T>();
  const T* h0_p = opt_ptr<T>(h0);
  const T* c0_p = opt_ptr<T>(c0);
  T* y_p = y.data_ptr<T>();
  T* ws_p = training ? ws.data_ptr<T>() : nullptr;
  T* hn_p = h_n.data_ptr<T>();
  T* cn_p = G == 4 ? c_n.data_ptr<T>() : nullptr;

  at::parallel_for(0, plan.items(), 1, [&](int64_t begin, int64_t end) {
    const int64_t tile = plan.tile;
    std::vector<T> h_a(tile * hid), h_b(tile * hid), c(tile * hid), gx(tile * Gh), gh(tile * Gh),
        xrows(plan.identity ? 0 : tile * C);
    for (int64_t i = begin; i < end; ++i) {
      const int d = static_cast<int>(i % D);
      const int64_t j0 = (i / D) * tile, L = std::min(tile, B - j0);
      T* h_prev = h_a.data();
      T* h_cur = h_b.data();
      load_state(h0_p, plan, d, j0, L, hid, h_prev);
      if (G == 4) load_state(c0_p, plan, d, j0, L, hid, c.data());
      const T* wih_d = wih_p + d * Gh * C;
      const T* whh_d = whh_p + d * Gh * hid;
      for (int64_t s = 0; s < T_len; ++s) {
        const int64_t t = step_time(d, s, T_len);
        const int64_t Lt = plan.active(j0, L, t);
        if (Lt > 0) {
          const T* xa = x_p + xm.at(t, j0);
          int64_t lda = xm.sB;
          if (!plan.identity) {  // gather the running sequences' input rows
            for (int64_t l = 0; l < Lt; ++l)
              std::memcpy(xrows.data() + l * C, x_p + xm.at(t, plan.order[j0 + l]), C * sizeof(T));
            xa = xrows.data();
            lda = C;
          }
          if (C > 0) gemm(false, false, Lt, Gh, C, T(1), xa, lda, wih_d, Gh, T(0), gx.data(), Gh);
          else std::fill(gx.begin(), gx.end(), T(0));
          if (s == 0 && !h0_p) std::fill(gh.begin(), gh.end(), T(0));
          else gemm(false, false, Lt, Gh, hid, T(1), h_prev, hid, whh_d, Gh, T(0), gh.data(), Gh);
          StepArgs<T> a{Lt, hid, gx.data(), gh.data(), bi.data_ptr<T>() + d * Gh, bh.data_ptr<T>() + d * Gh,
                        ws_p ? ws_rows(ws_p, d, t, j0, plan, S * hid) : nullptr};
          if constexpr (G == 3) gru_step_forward(a, h_cur, h_prev);
          else lstm_step_forward(a, h_cur, c.data());
          for (int64_t l = 0; l < Lt; ++l)
            std::memcpy(y_p + ym.at(t, plan.order[j0 + l]) + d * hid, h_cur + l * hid, hid * sizeof(T));
        }
        if (Lt < L) {  // finished (or not yet started) sequences keep their state, output 0
          std::memcpy(h_cur + Lt * hid, h_prev + Lt * hid, (L - Lt) * hid * sizeof(T));
          if (ws_p) {  // unused rows, zeroed so the workspace is deterministic
            T* w = ws_rows(ws_p, d, t, j0, plan, S * hid);
            std::fill(w + Lt * S * hid, w + L * S * hid, T(0));
          }
          for (int64_t l = Lt; l < L; ++l) {
            T* out = y_p + ym.at(t, plan.order[j0 + l]) + d * hid;
            std::fill(out, out + hid, T(0));
          }
        }
        std::swap(h_prev, h_cur);
      }
      store_state(h_prev, plan, d, j0, L, hid, hn_p);
      if (G == 4) store_state(c.data(), plan, d, j0, L, hid, cn_p);
    }
  });
  if (G == 4) return {y, h_n, c_n, ws};
  return {y, h_n, ws};
}

// Backward: each (direction, tile) walks its processing order in reverse. Per step the running rows
// get their output gradient, the saved gates become pre-activation gradients, and GEMMs give the
// rows of dx and dh_prev; dW_ih/dW_hh are one GEMM per kChunk steps. dh/dc left at the end are the
// gradients of h0/c0.
template <typename T, typename Cell>
std::vector<Tensor> sequence_backward(const OptTensor& grad_y_in, const OptTensor& grad_hn_in,
                                      const OptTensor& grad_cn_in, const Tensor& x_in, const Tensor& w_ih,
                                      const Tensor& w_hh, const OptTensor& h0_in, const OptTensor& c0_in,
                                      const OptTensor& lengths, const Tensor& y, const Tensor& ws,
                                      bool batch_first) {
  constexpr int64_t G = Cell::kGates, S = Cell::kSaved;
  const Tensor x = x_in.stride(2) == 1 ? x_in : x_in.contiguous();
  const int64_t T_len = x.size(batch_first ? 1 : 0), B = x.size(batch_first ? 0 : 1), C = x.size(2);
  const int64_t D = w_hh.size(0), hid = w_hh.size(2), Gh = G * hid;
  const SeqPlan plan = make_plan(lengths, T_len, B, D);

  const Tensor wih = w_ih.contiguous(), whh = w_hh.contiguous();
  auto contig = [](const OptTensor& t) { return t.has_value() ? OptTensor(t->contiguous()) : std::nullopt; };
  const OptTensor h0 = contig(h0_in), c0 = contig(c0_in), grad_hn = contig(grad_hn_in), grad_cn = contig(grad_cn_in);
  const OptTensor grad_y = grad_y_in.has_value() && grad_y_in->stride(2) != 1 ? contig(grad_y_in) : grad_y_in;

  Tensor dx_dir = empty_large({D, x.size(0), x.size(1), C}, x.options());
  Tensor dh0 = at::empty({D, B, hid}, x.options());
  Tensor dc0 = G == 4 ? at::empty({D, B, hid}, x.options()) : Tensor();
  const WeightGradParts wgrad{D, Gh, C, hid};
  Tensor parts = wgrad.zeros(plan.items(), x.options());

  const RowMap xm(x, batch_first), ym(y, batch_first), dxm(dx_dir[0], batch_first);
  const RowMap gm = grad_y.has_value() ? RowMap(*grad_y, batch_first) : ym;
  const T* x_p = x.data_ptr<T>();
  const T* y_p = y.data_ptr<T>();
  const T* gy_p = opt_ptr<T>(grad_y);
  const T* ws_p = ws.data_ptr<T>();
  const T* wih_p = wih.data_ptr<T>();
  const T* whh_p = whh.data_ptr<T>();
  const T* h0_p = opt_ptr<T>(h0);
  const T* c0_p = opt_ptr<T>(c0);
  const T* ghn_p = opt_ptr<T>(grad_hn);
  const T* gcn_p = opt_ptr<T>(grad_cn);
  T* dx_p = dx_dir.data_ptr<T>();
  T* dh0_p = dh0.data_ptr<T>();
  T* dc0_p = G == 4 ? dc0.data_ptr<T>() : nullptr;
  T* parts_p = parts.data_ptr<T>();
  const int64_t dx_dir_stride = x.numel();

  at::parallel_for(0, plan.items(), 1, [&](int64_t begin, int64_t end) {
    const int64_t tile = plan.tile, rows = kChunk * tile;
    std::vector<T> dh(tile * hid), dc(tile * hid), cp(G == 4 ? tile * hid : 0), hp(rows * hid), dgx(rows * Gh),
        dgh(G == 3 ? rows * Gh : 0), xs(rows * C), dxrows(plan.identity ? 0 : tile * C);
    for (int64_t item = begin; item < end; ++item) {
      const int d = static_cast<int>(item % D);
      const int64_t j0 = (item / D) * tile, L = std::min(tile, B - j0);
      load_state(ghn_p, plan, d, j0, L, hid, dh.data());
      if (G == 4) load_state(gcn_p, plan, d, j0, L, hid, dc.data());
      const T* wih_d = wih_p + d * Gh * C;
      const T* whh_d = whh_p + d * Gh * hid;
      const auto [dwih, dwhh, dbih, dbhh] = wgrad.slots(parts_p, item);
      T* dx_d = dx_p + d * dx_dir_stride;
      int64_t buffered = 0, steps = 0;  // rows and steps since the last weight-gradient GEMMs
      auto flush = [&] {
        if (buffered == 0) return;
        if (C > 0) gemm(true, false, Gh, C, buffered, T(1), dgx.data(), Gh, xs.data(), C, T(1), dwih, C);
        gemm(true, false, Gh, hid, buffered, T(1), G == 3 ? dgh.data() : dgx.data(), Gh, hp.data(), hid, T(1),
             dwhh, hid);
        buffered = steps = 0;
      };
      for (int64_t s = T_len - 1; s >= 0; --s) {
        const int64_t t = step_time(d, s, T_len);
        const int64_t Lt = plan.active(j0, L, t);
        for (int64_t l = Lt; l < L; ++l) {  // positions past a sequence's end get no gradient
          T* out = dx_d + dxm.at(t, plan.order[j0 + l]);
          std::fill(out, out + C, T(0));
        }
        if (Lt == 0) continue;
        const int64_t t_prev = d == 0 ? t - 1 : t + 1;
        T* hp_j = hp.data() + buffered * hid;
        T* dgx_j = dgx.data() + buffered * Gh;
        T* dgh_j = G == 3 ? dgh.data() + buffered * Gh : dgx_j;  // LSTM: recurrent side = input side
        const T* ws_t = ws_rows(ws_p, d, t, j0, plan, S * hid);
        for (int64_t l = 0; l < Lt; ++l) {
          const int64_t b = plan.order[j0 + l];
          if (gy_p) {
            const T* g = gy_p + gm.at(t, b) + d * hid;
            for (int64_t u = 0; u < hid; ++u) dh[l * hid + u] += g[u];
          }
          // The state before this step: h0/c0 at the sequence's first step, else the previous output.
          const bool first = d == 0 ? t == 0 : t_prev >= plan.len[j0 + l];
          if (first) {
            load_state(h0_p, plan, d, j0 + l, 1, hid, hp_j + l * hid);
            if (G == 4) load_state(c0_p, plan, d, j0 + l, 1, hid, cp.data() + l * hid);
          } else {
            std::memcpy(hp_j + l * hid, y_p + ym.at(t_prev, b) + d * hid, hid * sizeof(T));
            if (G == 4)
              std::memcpy(cp.data() + l * hid, ws_rows(ws_p, d, t_prev, j0 + l, plan, S * hid) + 4 * hid,
                          hid * sizeof(T));
          }
        }
        StepBackwardArgs<T> a{Lt, hid, ws_t, dgx_j, dgh_j, dbih, dbhh};
        if constexpr (G == 3) gru_step_backward(a, dh.data(), hp_j);
        else lstm_step_backward(a, dh.data(), dc.data(), cp.data(), hid);
        if (C > 0) {
          if (plan.identity) {
            gemm(false, false, Lt, C, Gh, T(1), dgx_j, Gh, wih_d, C, T(0), dx_d + dxm.at(t, j0), dxm.sB);
          } else {
            gemm(false, false, Lt, C, Gh, T(1), dgx_j, Gh, wih_d, C, T(0), dxrows.data(), C);
            for (int64_t l = 0; l < Lt; ++l)
              std::memcpy(dx_d + dxm.at(t, plan.order[j0 + l]), dxrows.data() + l * C, C * sizeof(T));
          }
          for (int64_t l = 0; l < Lt; ++l)
            std::memcpy(xs.data() + (buffered + l) * C, x_p + xm.at(t, plan.order[j0 + l]), C * sizeof(T));
        }
        gemm(false, false, Lt, hid, Gh, T(1), dgh_j, Gh, whh_d, hid, T(1), dh.data(), hid);
        buffered += Lt;
        if (++steps == kChunk) flush();
      }
      flush();
      store_state(dh.data(), plan, d, j0, L, hid, dh0_p);
      if (G == 4) store_state(dc.data(), plan, d, j0, L, hid, dc0_p);
    }
  });

  auto [dw_ih, dw_hh, db_ih, db_hh] = wgrad.sum(parts, G == 3);
  Tensor dx = D == 2 ? dx_dir[0].add_(dx_dir[1]) : dx_dir[0];
  if (G == 4) return {dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0};
  return {dx, dw_ih, dw_hh, db_ih, db_hh, dh0};
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
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64 on the CPU, got ", x.scalar_type());
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
  check_state(op, "c0", c0, x, D, B, hid);
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

template <typename Cell>
std::vector<Tensor> sequence_forward_cpu(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                                         const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& h0,
                                         const OptTensor& c0, const OptTensor& lengths, bool batch_first,
                                         bool training) {
  const char* op = seq_op_name<Cell>();
  check_sequence_inputs<Cell>(op, x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first);
  std::vector<Tensor> out;
  dispatch_float_double(op, x.scalar_type(), [&](auto v) {
    out = sequence_forward<decltype(v), Cell>(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first, training);
  });
  return out;
}

template <typename Cell>
std::vector<Tensor> sequence_backward_cpu(const OptTensor& grad_y, const OptTensor& grad_hn, const OptTensor& grad_cn,
                                          const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                                          const OptTensor& h0, const OptTensor& c0, const OptTensor& lengths,
                                          const Tensor& y, const Tensor& ws, bool batch_first) {
  const char* op = Cell::kGates == 3 ? "gru_sequence_backward" : "lstm_sequence_backward";
  check_sequence_inputs<Cell>(op, x, w_ih, w_hh, std::nullopt, std::nullopt, h0, c0, lengths, batch_first);
  const int64_t D = w_hh.size(0), hid = w_hh.size(2);
  const int64_t T = x.size(batch_first ? 1 : 0), B = x.size(batch_first ? 0 : 1);
  const std::vector<int64_t> y_shape{x.size(0), x.size(1), D * hid};
  TORCH_CHECK(y.sizes() == y_shape && y.stride(2) == 1, op, ": y must have shape ", y_shape, ", got ", y.sizes());
  if (grad_y.has_value())
    TORCH_CHECK(grad_y->sizes() == y_shape, op, ": grad_y must have shape ", y_shape, ", got ", grad_y->sizes());
  check_state(op, "grad_h_n", grad_hn, x, D, B, hid);
  check_state(op, "grad_c_n", grad_cn, x, D, B, hid);
  const std::vector<int64_t> ws_shape{D, T, B, Cell::kSaved * hid};
  TORCH_CHECK(ws.sizes() == ws_shape && ws.is_contiguous(), op, ": workspace must be a contiguous tensor of shape ",
              ws_shape, " (run the forward with training=True), got ", ws.sizes());
  for (const OptTensor& t : {grad_y, OptTensor(y), OptTensor(ws)})
    if (t.has_value())
      TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(), op,
                  ": grad_y, y and workspace must match x in dtype and device");
  std::vector<Tensor> out;
  dispatch_float_double(op, x.scalar_type(), [&](auto v) {
    out = sequence_backward<decltype(v), Cell>(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, h0, c0, lengths, y, ws,
                                               batch_first);
  });
  return out;
}

// Op signatures (the GRU ops have no cell state).
std::tuple<Tensor, Tensor, Tensor> gru_sequence(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                                                const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& h0,
                                                const OptTensor& lengths, bool batch_first, bool training) {
  auto o = sequence_forward_cpu<GruCell>(x, w_ih, w_hh, b_ih, b_hh, h0, std::nullopt, lengths, batch_first, training);
  return {o[0], o[1], o[2]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_sequence_backward(
    const OptTensor& grad_y, const OptTensor& grad_hn, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& h0, const OptTensor& lengths, const Tensor& y, const Tensor& ws, bool batch_first) {
  auto o = sequence_backward_cpu<GruCell>(grad_y, grad_hn, std::nullopt, x, w_ih, w_hh, h0, std::nullopt, lengths, y,
                                          ws, batch_first);
  return {o[0], o[1], o[2], o[3], o[4], o[5]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_sequence(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                                                         const OptTensor& b_ih, const OptTensor& b_hh,
                                                         const OptTensor& h0, const OptTensor& c0,
                                                         const OptTensor& lengths, bool batch_first, bool training) {
  auto o = sequence_forward_cpu<LstmCell>(x, w_ih, w_hh, b_ih, b_hh, h0, c0, lengths, batch_first, training);
  return {o[0], o[1], o[2], o[3]};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_sequence_backward(
    const OptTensor& grad_y, const OptTensor& grad_hn, const OptTensor& grad_cn, const Tensor& x, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& h0, const OptTensor& c0, const OptTensor& lengths, const Tensor& y,
    const Tensor& ws, bool batch_first) {
  auto o = sequence_backward_cpu<LstmCell>(grad_y, grad_hn, grad_cn, x, w_ih, w_hh, h0, c0, lengths, y, ws,
                                           batch_first);
  return {o[0], o[1], o[2], o[3], o[4], o[5], o[6]};
}

}  // namespace

TORCH_LIBRARY_IMPL(brnnseg, CPU, m) {
  m.impl("gru_sequence", &gru_sequence);
  m.impl("gru_sequence_backward", &gru_sequence_backward);
  m.impl("lstm_sequence", &lstm_sequence);
  m.impl("lstm_sequence_backward", &lstm_sequence_backward);
}

}  // namespace brnnseg::cpu
