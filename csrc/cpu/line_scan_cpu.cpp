// CPU kernels of the bidirectional line sweeps (brnnseg::bigru_sweep, brnnseg::bilstm_sweep and
// their backward ops). Layout and shape letters: include/brnnseg/conventions.h.
//
// Forward: one GEMM projects every position for both directions (reads NCHW or channels_last
// without a copy); then every (direction, tile of lines) runs its whole sequence on one thread:
// per step a small GEMM h_prev (L x hid) . W_hh^T and the fused, vectorised cell math.
// Backward: the same tiles walk time in reverse and write the gate gradients; then dx, dW_ih
// and dW_hh are large GEMMs over all positions.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "blas.h"
#include "brnnseg/cell/gru_cell.h"
#include "brnnseg/cell/lstm_cell.h"
#include "brnnseg/checks.h"
#include "brnnseg/sweep_geometry.h"
#include "cell_steps.h"
#include "cpu_tensors.h"
#include "weight_grad_parts.h"
#include "weight_transpose.h"

namespace brnnseg::cpu {
namespace {

using at::Tensor;

// Lines per tile: the per-step products are GEMMs with this many rows, not matrix-vector products;
// 128 measured best on the benchmark shapes (fewer, larger BLAS calls; states still fit in L2).
constexpr int64_t kMaxTile = 128;
// Backward: time steps whose weight-gradient GEMMs are batched into one (see sweep_backward).
constexpr int64_t kChunk = 8;

// Work items are (direction, image, tile of that image's lines): lines of a tile never cross an
// image, so their positions are equally spaced and a tile's input rows form one strided matrix.
struct Tiling {
  int64_t tile, tiles_per_image, items;
  int64_t lines_per_image;
  struct Item {
    int d;
    int64_t line0, L;
  };
  Item item(int64_t i) const {
    const int d = static_cast<int>(i % 2);
    const int64_t k = i / 2, n = k / tiles_per_image, j0 = (k - n * tiles_per_image) * tile;
    return {d, n * lines_per_image + j0, std::min(tile, lines_per_image - j0)};
  }
};

Tiling choose_tiling(const SweepGeometry& geo) {
  const int64_t per_image = std::max<int64_t>(1, geo.lines_per_image());
  // Enough tiles that both directions together give every thread work.
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const int64_t want_per_dir = (threads + 1) / 2;
  const int64_t n = std::max<int64_t>(1, geo.N);
  int64_t tiles = std::max((per_image + kMaxTile - 1) / kMaxTile, (want_per_dir + n - 1) / n);
  tiles = std::min(tiles, per_image);
  const int64_t tile = (per_image + tiles - 1) / tiles;
  const int64_t tiles_per_image = (per_image + tile - 1) / tile;
  return {tile, tiles_per_image, 2 * n * tiles_per_image, per_image};
}

bool is_channels_last(const Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// Element offset of (line, t) in a strided NCHW tensor, channel 0.
struct StridedMap {
  SweepGeometry geo;
  int64_t sN, sC, sH, sW;
  StridedMap(const SweepGeometry& g, const Tensor& t)
      : geo(g), sN(t.stride(0)), sC(t.stride(1)), sH(t.stride(2)), sW(t.stride(3)) {}
  int64_t offset(int64_t line, int64_t t) const { return geo.strided_offset(line, t, sN, sH, sW); }
};

// Writes a tile's hidden states (L x hid, row-major) into the strided output. The tile's lines are
// equally spaced (one image), so for NCHW output the write runs along the lines of each channel.
template <typename T>
void scatter_tile(const StridedMap& m, int64_t l0, int64_t L, int64_t t, int64_t c0, int64_t hid, const T* src,
                  T* dst) {
  T* base = dst + m.offset(l0, t) + c0 * m.sC;
  if (m.sC == 1) {
    const int64_t ls = m.geo.axis == 3 ? m.sH : m.sW;
    for (int64_t l = 0; l < L; ++l) std::memcpy(base + l * ls, src + l * hid, hid * sizeof(T));
    return;
  }
  const int64_t ls = L > 1 ? m.offset(l0 + 1, t) - m.offset(l0, t) : 0;
  for (int64_t u = 0; u < hid; ++u) {
    T* out = base + u * m.sC;
    for (int64_t l = 0; l < L; ++l) out[l * ls] = src[l * hid + u];
  }
}

// Reads a tile's rows (L x hid, row-major) from the strided tensor: dst = (or +=) src rows. For
// NCHW tensors swept along H, a channel's values for the tile's lines are adjacent in memory, so the
// loop runs along the lines of each channel (the mirror of scatter_tile) instead of across channels.
template <typename T, bool kAdd>
void gather_rows(const StridedMap& m, int64_t l0, int64_t L, int64_t t, int64_t c0, int64_t hid, const T* src,
                 T* dst) {
  const int64_t ls = L > 1 ? m.offset(l0 + 1, t) - m.offset(l0, t) : 0;
  if (ls == 1 && m.sC != 1) {
    const T* base = src + m.offset(l0, t) + c0 * m.sC;
    for (int64_t u = 0; u < hid; ++u) {
      const T* in = base + u * m.sC;
      for (int64_t l = 0; l < L; ++l) {
        if (kAdd) dst[l * hid + u] += in[l]; else dst[l * hid + u] = in[l];
      }
    }
    return;
  }
  for (int64_t l = 0; l < L; ++l) {
    const T* in = src + m.offset(l0 + l, t) + c0 * m.sC;
    T* out = dst + l * hid;
    for (int64_t u = 0; u < hid; ++u) {
      if (kAdd) out[u] += in[u * m.sC]; else out[u] = in[u * m.sC];
    }
  }
}

template <typename Cell>
constexpr const char* cell_name() { return Cell::kGates == 3 ? "bigru_sweep" : "bilstm_sweep"; }

// Workspace layout: (2, T, lines, S*hid), time-major per direction, so the rows a tile saves (forward)
// and reads back (backward) at one step are one contiguous block, whatever the sweep axis.
template <typename T>
T* ws_block(T* ws, int d, int64_t t, int64_t line0, int64_t T_len, int64_t lines, int64_t row) {
  return ws + ((d * T_len + t) * lines + line0) * row;
}

template <typename T, typename Cell>
std::tuple<Tensor, Tensor> sweep_forward(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                                         const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                                         int64_t axis, bool channels_last, bool training) {
  constexpr int64_t G = Cell::kGates, S = Cell::kSaved;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), hid = w_hh.size(2), Gh = G * hid;
  const SweepGeometry geo{N, H, W, static_cast<int>(axis)};
  const int64_t T_len = geo.steps(), lines = geo.lines();

  auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  Tensor y = empty_large({N, 2 * hid, H, W}, x.options(), fmt);
  Tensor ws = training ? empty_large({2, T_len, lines, S * hid}, x.options()) : at::empty({0}, x.options());
  if (geo.positions() == 0) return {y, ws};

  // Transposed weights (C x Gh, hid x Gh per direction): the per-step products are then A . B with
  // B row-major, the layout the AVX-512 GEMM streams (blas.h).
  const Tensor wih = transposed_weights(w_ih);
  const Tensor whh = transposed_weights(w_hh);
  // Position-major input (a no-op for channels_last x): the rows a tile needs at one step are then
  // one strided matrix, projected right before use instead of through a full-size gx buffer.
  const Tensor xcl = x.contiguous(at::MemoryFormat::ChannelsLast);
  const Tensor bi = b_ih.has_value() ? b_ih->contiguous() : at::zeros({2, Gh}, x.options());
  const Tensor bh = b_hh.has_value() ? b_hh->contiguous() : at::zeros({2, Gh}, x.options());

  const StridedMap ymap(geo, y);
  const T* x_p = xcl.data_ptr<T>();
  const T* wih_p = wih.data_ptr<T>();
  const T* whh_p = whh.data_ptr<T>();
  const T* bi_p = bi.data_ptr<T>();
  const T* bh_p = bh.data_ptr<T>();
  T* y_p = y.data_ptr<T>();
  T* ws_p = training ? ws.data_ptr<T>() : nullptr;
  const Tiling tiling = choose_tiling(geo);
  const int64_t line_stride = geo.line_stride();

  at::parallel_for(0, tiling.items, 1, [&](int64_t begin, int64_t end) {
    const int64_t tile = tiling.tile;
    std::vector<T> h_a(tile * hid), h_b(tile * hid), c(tile * hid), gx(tile * Gh), gh(tile * Gh);
    for (int64_t i = begin; i < end; ++i) {
      const auto [d, l0, L] = tiling.item(i);
      T* h_prev = h_a.data();
      T* h_cur = h_b.data();
      std::fill(h_a.begin(), h_a.end(), T(0));
      std::fill(c.begin(), c.end(), T(0));
      const T* wih_d = wih_p + d * Gh * C;
      const T* whh_d = whh_p + d * Gh * hid;
      StepArgs<T> a{L, hid, gx.data(), gh.data(), bi_p + d * Gh, bh_p + d * Gh, nullptr};
      for (int64_t s = 0; s < T_len; ++s) {
        const int64_t t = step_time(d, s, T_len);
        const int64_t p0 = geo.pos(l0, t);
        if (C > 0) {
          gemm(false, false, L, Gh, C, T(1), x_p + p0 * C, line_stride * C, wih_d, Gh, T(0), gx.data(), Gh);
        } else {
          std::fill(gx.begin(), gx.end(), T(0));
        }
        if (s == 0) {
          std::fill(gh.begin(), gh.end(), T(0));  // h0 = 0
        } else {
          gemm(false, false, L, Gh, hid, T(1), h_prev, hid, whh_d, Gh, T(0), gh.data(), Gh);
        }
        if (ws_p) a.ws = ws_block(ws_p, d, t, l0, T_len, lines, S * hid);
        if constexpr (G == 3) {
          gru_step_forward(a, h_cur, h_prev);
        } else {
          lstm_step_forward(a, h_cur, c.data());
        }
        scatter_tile(ymap, l0, L, t, d * hid, hid, h_cur, y_p);
        std::swap(h_prev, h_cur);
      }
    }
  });
  return {y, ws};
}

// Backward of one sweep. Each (direction, tile) walks time in reverse; per step it turns the saved
// gates into pre-activation gradients and runs four small GEMMs on them: dh_prev (through W_hh), the
// tile's rows of dx (through W_ih), and its contributions to dW_ih and dW_hh (accumulated per item).
// Nothing position-sized is materialised besides one dx buffer per direction (the two directions
// run on different threads and both write every position).
template <typename T, typename Cell>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sweep_backward(const Tensor& grad_y, const Tensor& x,
                                                                  const Tensor& w_ih, const Tensor& w_hh,
                                                                  const Tensor& y, const Tensor& ws,
                                                                  int64_t axis) {
  constexpr int64_t G = Cell::kGates, S = Cell::kSaved;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), hid = w_hh.size(2), Gh = G * hid;
  const SweepGeometry geo{N, H, W, static_cast<int>(axis)};
  const int64_t T_len = geo.steps(), lines = geo.lines();

  const Tensor wih = w_ih.contiguous();
  const Tensor whh = w_hh.contiguous();
  const Tensor xcl = x.contiguous(at::MemoryFormat::ChannelsLast);
  const Tiling tiling = choose_tiling(geo);
  // dx of each direction, position-major (N, H, W, C).
  Tensor dx_dir = empty_large({2, N, H, W, C}, x.options());
  const WeightGradParts wgrad{2, Gh, C, hid};
  Tensor parts = wgrad.zeros(tiling.items, x.options());

  if (geo.positions() > 0) {
    const StridedMap ymap(geo, y), gmap(geo, grad_y);
    const T* gy_p = grad_y.data_ptr<T>();
    const T* y_p = y.data_ptr<T>();
    const T* ws_p = ws.data_ptr<T>();
    const T* x_p = xcl.data_ptr<T>();
    const T* wih_p = wih.data_ptr<T>();
    const T* whh_p = whh.data_ptr<T>();
    T* dx_p = dx_dir.data_ptr<T>();
    T* parts_p = parts.data_ptr<T>();
    const int64_t line_stride = geo.line_stride(), P = geo.positions();

    at::parallel_for(0, tiling.items, 1, [&](int64_t begin, int64_t end) {
      const int64_t tile = tiling.tile;
      // The weight gradients are accumulated every kChunk steps, from buffers holding those steps'
      // gate gradients and inputs: one GEMM with kChunk*L rows instead of kChunk GEMMs with L rows.
      const int64_t rows = kChunk * tile;
      std::vector<T> dh(tile * hid), dc(tile * hid), hp(rows * hid), dgx(rows * Gh), dgh(G == 3 ? rows * Gh : 0),
          xs(rows * C);
      for (int64_t item = begin; item < end; ++item) {
        const auto [d, l0, L] = tiling.item(item);
        std::fill(dh.begin(), dh.end(), T(0));
        std::fill(dc.begin(), dc.end(), T(0));
        const T* wih_d = wih_p + d * Gh * C;
        const T* whh_d = whh_p + d * Gh * hid;
        const auto [dwih, dwhh, dbih, dbhh] = wgrad.slots(parts_p, item);
        T* dx_d = dx_p + d * P * C;
        int64_t j = 0;  // steps buffered since the last weight-gradient GEMMs
        for (int64_t s = T_len - 1; s >= 0; --s) {
          const int64_t t = step_time(d, s, T_len);
          const bool first = s == 0;  // first step of the forward pass: h_prev = c_prev = 0
          const int64_t t_prev = first ? t : step_time(d, s - 1, T_len);
          const int64_t p0 = geo.pos(l0, t);
          T* hp_j = hp.data() + j * L * hid;
          T* dgx_j = dgx.data() + j * L * Gh;
          // For LSTM the recurrent-side gradients equal the input-side ones.
          T* dgh_j = G == 3 ? dgh.data() + j * L * Gh : dgx_j;
          StepBackwardArgs<T> a{L, hid, ws_block(ws_p, d, t, l0, T_len, lines, S * hid), dgx_j, dgh_j, dbih, dbhh};
          gather_rows<T, true>(gmap, l0, L, t, d * hid, hid, gy_p, dh.data());
          if (first) {
            std::fill(hp_j, hp_j + L * hid, T(0));
          } else {
            gather_rows<T, false>(ymap, l0, L, t_prev, d * hid, hid, y_p, hp_j);
          }
          if constexpr (G == 3) {
            gru_step_backward(a, dh.data(), hp_j);
          } else {
            const T* c_prev = first ? nullptr : ws_block(ws_p, d, t_prev, l0, T_len, lines, S * hid) + 4 * hid;
            lstm_step_backward(a, dh.data(), dc.data(), c_prev, S * hid);
          }
          if (C > 0) {
            // dx rows of this step (each position is visited once per direction: beta = 0).
            gemm(false, false, L, C, Gh, T(1), dgx_j, Gh, wih_d, C, T(0), dx_d + p0 * C, line_stride * C);
            for (int64_t l = 0; l < L; ++l)
              std::memcpy(xs.data() + (j * L + l) * C, x_p + (p0 + l * line_stride) * C, C * sizeof(T));
          }
          if (!first) gemm(false, false, L, hid, Gh, T(1), dgh_j, Gh, whh_d, hid, T(1), dh.data(), hid);
          if (++j == kChunk || first) {
            // h_prev rows of the first step are zeros, so including them adds nothing to dW_hh.
            if (C > 0) gemm(true, false, Gh, C, j * L, T(1), dgx.data(), Gh, xs.data(), C, T(1), dwih, C);
            gemm(true, false, Gh, hid, j * L, T(1), G == 3 ? dgh.data() : dgx.data(), Gh, hp.data(), hid, T(1),
                 dwhh, hid);
            j = 0;
          }
        }
      }
    });
  }

  auto [dw_ih, dw_hh, db_ih, db_hh] = wgrad.sum(parts, G == 3);
  // dx = both directions' parts, in the memory format of x.
  Tensor dx = empty_large(x.sizes(), x.options(),
                          is_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  at::add_out(dx, dx_dir[0].permute({0, 3, 1, 2}), dx_dir[1].permute({0, 3, 1, 2}));
  return {dx, dw_ih, dw_hh, db_ih, db_hh};
}

template <typename Cell>
std::tuple<Tensor, Tensor> sweep_forward_cpu(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                                             const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                                             int64_t axis, bool channels_last, bool training) {
  check_sweep_inputs(cell_name<Cell>(), x, w_ih, w_hh, b_ih, b_hh, Cell::kGates, axis);
  TORCH_CHECK(x.device().is_cpu(), cell_name<Cell>(), ": CPU kernel called with x on ", x.device());
  std::tuple<Tensor, Tensor> out;
  dispatch_float_double(cell_name<Cell>(), x.scalar_type(), [&](auto v) {
    using scalar_t = decltype(v);
    out = sweep_forward<scalar_t, Cell>(x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training);
  });
  return out;
}

template <typename Cell>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sweep_backward_cpu(const Tensor& grad_y, const Tensor& x,
                                                                      const Tensor& w_ih, const Tensor& w_hh,
                                                                      const Tensor& y, const Tensor& ws,
                                                                      int64_t axis) {
  const char* op = Cell::kGates == 3 ? "bigru_sweep_backward" : "bilstm_sweep_backward";
  check_sweep_inputs(op, x, w_ih, w_hh, std::nullopt, std::nullopt, Cell::kGates, axis);
  const int64_t hid = w_hh.size(2);
  const std::vector<int64_t> y_shape{x.size(0), 2 * hid, x.size(2), x.size(3)};
  TORCH_CHECK(y.sizes() == y_shape, op, ": y must have shape ", y_shape, ", got ", y.sizes());
  TORCH_CHECK(grad_y.sizes() == y_shape, op, ": grad_y must have shape ", y_shape, ", got ", grad_y.sizes());
  const SweepGeometry geo{x.size(0), x.size(2), x.size(3), static_cast<int>(axis)};
  const std::vector<int64_t> ws_shape{2, geo.steps(), geo.lines(), Cell::kSaved * hid};
  TORCH_CHECK(ws.sizes() == ws_shape && ws.is_contiguous(), op, ": workspace must be a contiguous tensor of shape ",
              ws_shape, " (run the forward with training=True), got ", ws.sizes());
  for (const auto* t : {&grad_y, &y, &ws})
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(), op,
                ": grad_y, y and workspace must match x in dtype and device");
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> out;
  dispatch_float_double(op, x.scalar_type(), [&](auto v) {
    using scalar_t = decltype(v);
    out = sweep_backward<scalar_t, Cell>(grad_y, x, w_ih, w_hh, y, ws, axis);
  });
  return out;
}

// mode="parallel" on the CPU: the two sweeps one after the other (each already uses every thread),
// written into the two channel halves of one output.
template <typename Cell>
std::tuple<Tensor, Tensor, Tensor> sweep_pair_forward_cpu(
    const Tensor& x, const Tensor& w_ih_r, const Tensor& w_hh_r, const std::optional<Tensor>& b_ih_r,
    const std::optional<Tensor>& b_hh_r, const Tensor& w_ih_c, const Tensor& w_hh_c,
    const std::optional<Tensor>& b_ih_c, const std::optional<Tensor>& b_hh_c, bool channels_last, bool training) {
  auto [y_r, ws_r] = sweep_forward_cpu<Cell>(x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, 3, channels_last, training);
  auto [y_c, ws_c] = sweep_forward_cpu<Cell>(x, w_ih_c, w_hh_c, b_ih_c, b_hh_c, 2, channels_last, training);
  TORCH_CHECK(y_r.size(1) == y_c.size(1), cell_name<Cell>(), "_pair: both sweeps must have the same hidden size");
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  Tensor y = at::empty({x.size(0), 2 * y_r.size(1), x.size(2), x.size(3)}, x.options().memory_format(fmt));
  y.narrow(1, 0, y_r.size(1)).copy_(y_r);
  y.narrow(1, y_r.size(1), y_c.size(1)).copy_(y_c);
  return {y, ws_r, ws_c};
}

template <typename Cell>
std::vector<Tensor> sweep_pair_backward_cpu(const Tensor& grad_y, const Tensor& x, const Tensor& w_ih_r,
                                            const Tensor& w_hh_r, const Tensor& w_ih_c, const Tensor& w_hh_c,
                                            const Tensor& y, const Tensor& ws_r, const Tensor& ws_c) {
  const int64_t h2 = 2 * w_hh_r.size(2);
  TORCH_CHECK(y.dim() == 4 && y.size(1) == 2 * h2 && grad_y.sizes() == y.sizes(), cell_name<Cell>(),
              "_pair_backward: y and grad_y must have shape (N, ", 2 * h2, ", H, W)");
  auto [dx_r, dwi_r, dwh_r, dbi_r, dbh_r] =
      sweep_backward_cpu<Cell>(grad_y.narrow(1, 0, h2), x, w_ih_r, w_hh_r, y.narrow(1, 0, h2), ws_r, 3);
  auto [dx_c, dwi_c, dwh_c, dbi_c, dbh_c] =
      sweep_backward_cpu<Cell>(grad_y.narrow(1, h2, h2), x, w_ih_c, w_hh_c, y.narrow(1, h2, h2), ws_c, 2);
  return {dx_r.add_(dx_c), dwi_r, dwh_r, dbi_r, dbh_r, dwi_c, dwh_c, dbi_c, dbh_c};
}

}  // namespace

TORCH_LIBRARY_IMPL(brnnseg, CPU, m) {
  m.impl("bigru_sweep_pair", &sweep_pair_forward_cpu<GruCell>);
  m.impl("bilstm_sweep_pair", &sweep_pair_forward_cpu<LstmCell>);
  m.impl("bigru_sweep_pair_backward", &sweep_pair_backward_cpu<GruCell>);
  m.impl("bilstm_sweep_pair_backward", &sweep_pair_backward_cpu<LstmCell>);
  m.impl("bigru_sweep", &sweep_forward_cpu<GruCell>);
  m.impl("bigru_sweep_backward", &sweep_backward_cpu<GruCell>);
  m.impl("bilstm_sweep", &sweep_forward_cpu<LstmCell>);
  m.impl("bilstm_sweep_backward", &sweep_backward_cpu<LstmCell>);
}

}  // namespace brnnseg::cpu
