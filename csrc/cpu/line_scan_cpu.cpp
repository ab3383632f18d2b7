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

namespace brnnseg::cpu {
namespace {

using at::Tensor;

// Lines per tile. 64 keeps a step's working set (gates, states) in L2 for hid <= 128 while
// making the per-step products 64-row GEMMs instead of matrix-vector products.
constexpr int64_t kMaxTile = 64;

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

// (N, C, H, W) -> (N, H*W, C), a view for contiguous and channels_last tensors.
Tensor positions_view(const Tensor& t) { return t.flatten(2).transpose(1, 2); }

bool rows_flatten(const Tensor& t3) { return t3.size(0) == 1 || t3.stride(0) == t3.size(1) * t3.stride(1); }

// sum_n A[n]^T B[n] for A (N, P, a), B (N, P, b): one GEMM when both flatten to (N*P, .).
Tensor positions_tn(const Tensor& A, const Tensor& B) {
  if (rows_flatten(A) && rows_flatten(B))
    return A.reshape({-1, A.size(2)}).t().mm(B.reshape({-1, B.size(2)}));
  return at::bmm(A.transpose(1, 2), B).sum(0);
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
  int64_t offset(int64_t line, int64_t t) const {
    if (geo.axis == 3) {
      const int64_t n = line / geo.H, h = line - n * geo.H;
      return n * sN + h * sH + t * sW;
    }
    const int64_t n = line / geo.W, w = line - n * geo.W;
    return n * sN + t * sH + w * sW;
  }
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

template <typename T, bool kAdd>
void gather_rows(const StridedMap& m, int64_t l0, int64_t L, int64_t t, int64_t c0, int64_t hid, const T* src,
                 T* dst) {
  for (int64_t l = 0; l < L; ++l) {
    const T* in = src + m.offset(l0 + l, t) + c0 * m.sC;
    T* out = dst + l * hid;
    for (int64_t u = 0; u < hid; ++u) {
      if (kAdd) out[u] += in[u * m.sC]; else out[u] = in[u * m.sC];
    }
  }
}

// float32 and float64 (the latter for gradcheck); other dtypes get an error naming the op.
template <typename F>
void dispatch_float_double(const char* op, at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    default:
      TORCH_CHECK(false, op, ": the CPU kernel supports float32 and float64 inputs, got ", dtype);
  }
}

template <typename Cell>
constexpr const char* cell_name() { return Cell::kGates == 3 ? "bigru_sweep" : "bilstm_sweep"; }

template <typename T, typename Cell>
std::tuple<Tensor, Tensor> sweep_forward(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                                         const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                                         int64_t axis, bool channels_last, bool training) {
  constexpr int64_t G = Cell::kGates, S = Cell::kSaved;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), hid = w_hh.size(2), Gh = G * hid;
  const SweepGeometry geo{N, H, W, static_cast<int>(axis)};
  const int64_t T_len = geo.steps();

  auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  Tensor y = at::empty({N, 2 * hid, H, W}, x.options().memory_format(fmt));
  Tensor ws = training ? at::empty({N, H, W, 2, S * hid}, x.options()) : at::empty({0}, x.options());
  if (geo.positions() == 0) return {y, ws};

  const Tensor wih = w_ih.contiguous();
  const Tensor whh = w_hh.contiguous();
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
    std::vector<int64_t> pos(tile);
    for (int64_t i = begin; i < end; ++i) {
      const auto [d, l0, L] = tiling.item(i);
      T* h_prev = h_a.data();
      T* h_cur = h_b.data();
      std::fill(h_a.begin(), h_a.end(), T(0));
      std::fill(c.begin(), c.end(), T(0));
      const T* wih_d = wih_p + d * Gh * C;
      const T* whh_d = whh_p + d * Gh * hid;
      StepArgs<T> a{L, hid, pos.data(), gx.data(), Gh, gh.data(), bi_p + d * Gh, bh_p + d * Gh,
                    ws_p ? ws_p + d * S * hid : nullptr, 2 * S * hid};
      for (int64_t s = 0; s < T_len; ++s) {
        const int64_t t = step_time(d, s, T_len);
        const int64_t p0 = geo.pos(l0, t);
        for (int64_t l = 0; l < L; ++l) pos[l] = p0 + l * line_stride;
        if (C > 0) {
          gemm(false, true, L, Gh, C, T(1), x_p + p0 * C, line_stride * C, wih_d, C, T(0), gx.data(), Gh);
        } else {
          std::fill(gx.begin(), gx.end(), T(0));
        }
        if (s == 0) {
          std::fill(gh.begin(), gh.end(), T(0));  // h0 = 0
        } else {
          gemm(false, true, L, Gh, hid, T(1), h_prev, hid, whh_d, hid, T(0), gh.data(), Gh);
        }
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

template <typename T, typename Cell>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sweep_backward(const Tensor& grad_y, const Tensor& x,
                                                                  const Tensor& w_ih, const Tensor& w_hh,
                                                                  const Tensor& y, const Tensor& ws,
                                                                  int64_t axis) {
  constexpr int64_t G = Cell::kGates, S = Cell::kSaved;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), hid = w_hh.size(2), Gh = G * hid;
  const SweepGeometry geo{N, H, W, static_cast<int>(axis)};
  const int64_t T_len = geo.steps(), HW = H * W;

  const Tensor wih = w_ih.contiguous().view({2 * Gh, C});
  const Tensor whh = w_hh.contiguous();
  // Gate gradients per position: input side (dgx) and recurrent side (dgh). dgh of step t is
  // stored at the position of the h_prev it multiplies ("slot"), so that
  // dW_hh = sum_p dgh[p]^T h[p] is one GEMM against the output itself.
  Tensor dgx = at::empty({N, HW, 2 * Gh}, x.options());
  Tensor dgh = at::empty({N, HW, 2 * Gh}, x.options());
  const Tiling tiling = choose_tiling(geo);
  Tensor db = at::zeros({tiling.items, 2, Gh}, x.options());  // per work item: (ih, hh)

  const StridedMap ymap(geo, y), gmap(geo, grad_y);
  const T* gy_p = grad_y.data_ptr<T>();
  const T* y_p = y.data_ptr<T>();
  const T* ws_p = ws.data_ptr<T>();
  const T* whh_p = whh.data_ptr<T>();
  T* dgx_p = dgx.data_ptr<T>();
  T* dgh_p = dgh.data_ptr<T>();
  T* db_p = db.data_ptr<T>();
  const int64_t ts = geo.time_stride();

  if (geo.positions() > 0) {
    at::parallel_for(0, tiling.items, 1, [&](int64_t begin, int64_t end) {
      const int64_t tile = tiling.tile;
      std::vector<T> dh(tile * hid), dc(tile * hid), hp(tile * hid), dgh_tile(tile * Gh);
      std::vector<int64_t> pos(tile);
      for (int64_t item = begin; item < end; ++item) {
        const auto [d, l0, L] = tiling.item(item);
        std::fill(dh.begin(), dh.end(), T(0));
        std::fill(dc.begin(), dc.end(), T(0));
        const T* whh_d = whh_p + d * Gh * hid;
        // Position offset from step t to the step before it in this direction's order.
        const int64_t prev_offset = d == 0 ? -ts : ts;
        StepBackwardArgs<T> a{L, hid, pos.data(), ws_p + d * S * hid, 2 * S * hid, dgx_p + d * Gh, 2 * Gh,
                              dgh_tile.data(), db_p + item * 2 * Gh, db_p + item * 2 * Gh + Gh};
        for (int64_t s = T_len - 1; s >= 0; --s) {
          const int64_t t = step_time(d, s, T_len);
          const bool first = s == 0;  // first step of the forward pass: h_prev = c_prev = 0
          for (int64_t l = 0; l < L; ++l) pos[l] = geo.pos(l0 + l, t);
          gather_rows<T, true>(gmap, l0, L, t, d * hid, hid, gy_p, dh.data());
          if constexpr (G == 3) {
            if (first) {
              std::fill(hp.begin(), hp.end(), T(0));
            } else {
              gather_rows<T, false>(ymap, l0, L, step_time(d, s - 1, T_len), d * hid, hid, y_p, hp.data());
            }
            gru_step_backward(a, dh.data(), hp.data());
          } else {
            lstm_step_backward(a, dh.data(), dc.data(), prev_offset, first);
          }
          for (int64_t l = 0; l < L; ++l) {
            if (s == T_len - 1)  // h at the last step feeds no later step
              std::memset(dgh_p + pos[l] * 2 * Gh + d * Gh, 0, Gh * sizeof(T));
            if (!first)
              std::memcpy(dgh_p + (pos[l] + prev_offset) * 2 * Gh + d * Gh, dgh_tile.data() + l * Gh,
                          Gh * sizeof(T));
          }
          if (!first) gemm(false, false, L, hid, Gh, T(1), dgh_tile.data(), Gh, whh_d, hid, T(1), dh.data(), hid);
        }
      }
    });
  }

  // dx = dgx . W_ih, produced in the memory format of x.
  Tensor dx;
  if (is_channels_last(x)) {
    dx = at::matmul(dgx, wih).view({N, H, W, C}).permute({0, 3, 1, 2});
  } else {
    dx = at::matmul(wih.t(), dgx.transpose(1, 2)).view({N, C, H, W});
  }
  Tensor dw_ih = positions_tn(dgx, positions_view(x)).view({2, Gh, C});
  const Tensor y3 = positions_view(y);
  Tensor dw_hh = at::stack({positions_tn(dgh.narrow(2, 0, Gh), y3.narrow(2, 0, hid)),
                            positions_tn(dgh.narrow(2, Gh, Gh), y3.narrow(2, hid, hid))});
  // Bias gradients: sum the per-item partials of each direction (items alternate directions).
  Tensor db_dir = db.view({tiling.items / 2, 2, 2, Gh}).sum(0);  // (direction, ih/hh, Gh)
  Tensor db_ih = db_dir.select(1, 0).contiguous();
  Tensor db_hh = G == 3 ? db_dir.select(1, 1).contiguous() : db_ih.clone();
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
  const std::vector<int64_t> ws_shape{x.size(0), x.size(2), x.size(3), 2, Cell::kSaved * hid};
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

}  // namespace

TORCH_LIBRARY_IMPL(brnnseg, CPU, m) {
  m.impl("bigru_sweep", &sweep_forward_cpu<GruCell>);
  m.impl("bigru_sweep_backward", &sweep_backward_cpu<GruCell>);
  m.impl("bilstm_sweep", &sweep_forward_cpu<LstmCell>);
  m.impl("bilstm_sweep_backward", &sweep_backward_cpu<LstmCell>);
}

}  // namespace brnnseg::cpu
