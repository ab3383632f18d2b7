// CPU kernels of the bidirectional line sweeps: brnnseg::sweep, sweep_backward, sweep_pair and
// sweep_pair_backward, for every cell (CELL_SWITCH). Layout and shape letters:
// include/brnnseg/conventions.h.
//
// Every (direction, tile of lines) runs its whole sequence on one thread through the CPU tile engine
// (recurrence/tile_engine.h): per step a GEMM projects the tile's inputs (read from NCHW or
// channels_last x), a GEMM applies W_hh, and the cell's vectorised step does the rest. Backward walks
// the tiles in reverse and accumulates the weight gradients per work item.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "brnnseg/checks.h"
#include "brnnseg/static_switch.h"
#include "brnnseg/sweep_geometry.h"
#include "cpu/gemm/weight_transpose.h"
#include "cpu/recurrence/tile_engine.h"
#include "cpu/recurrence/weight_grad_parts.h"
#include "cpu/runtime/cpu_tensors.h"

namespace brnnseg::cpu {
namespace {

using at::Tensor;

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
  const int64_t threads = planning_threads();
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
template <typename T, typename Y>
void scatter_tile(const StridedMap& m, int64_t l0, int64_t L, int64_t t, int64_t c0, int64_t hid, const T* src,
                  Y* dst) {
  const int64_t ls = L > 1 ? m.offset(l0 + 1, t) - m.offset(l0, t) : 1;
  if constexpr (std::is_same_v<T, float> && (std::is_same_v<Y, float> || std::is_same_v<Y, c10::BFloat16>)) {
    if (ls == 1 && m.sC != 1) {
      // NCHW output, lines adjacent (a sweep along H): unit u's values for the tile's lines are one
      // contiguous run at u * sC. The tile transposed in 16 x 16 register blocks (transpose_f32), where
      // the loop below ran one scalar load and store per value (perf, cpu-med bfloat16 LSTM under
      // no_grad: 16 % of the op's time).
      Y* base = dst + m.offset(l0, t) + c0 * m.sC;
      if constexpr (std::is_same_v<Y, float>) return transpose_f32(src, hid, L, hid, base, m.sC);
      thread_local std::vector<float> cols;
      cols.resize(hid * L);
      transpose_f32(src, hid, L, hid, cols.data(), L);
      return bf16_from_float_rows(cols.data(), L, reinterpret_cast<uint16_t*>(base), m.sC, hid, L);
    }
  }
  if constexpr (std::is_same_v<T, float> && std::is_same_v<Y, c10::BFloat16>) {
    if (m.sC == 1) {  // channels_last: each row converted into place, in one call for the tile
      const int64_t rs = m.geo.axis == 3 ? m.sH : m.sW;
      return bf16_from_float_rows(src, hid, reinterpret_cast<uint16_t*>(dst + m.offset(l0, t) + c0), rs, L, hid);
    }
  }
  if constexpr (!std::is_same_v<T, Y> && std::is_same_v<Y, c10::BFloat16>) {
    // bfloat16 output: the tile converted at once (vectorised), then its bits placed like any copy.
    thread_local std::vector<uint16_t> bits;
    bits.resize(L * hid);
    bf16_from_float(src, bits.data(), L * hid);
    return scatter_tile(m, l0, L, t, c0, hid, bits.data(), reinterpret_cast<uint16_t*>(dst));
  }
  Y* base = dst + m.offset(l0, t) + c0 * m.sC;
  if (m.sC == 1) {
    const int64_t rs = m.geo.axis == 3 ? m.sH : m.sW;
    for (int64_t l = 0; l < L; ++l) {
      if constexpr (std::is_same_v<T, Y>) {
        std::memcpy(base + l * rs, src + l * hid, hid * sizeof(T));
      } else {
        for (int64_t u = 0; u < hid; ++u) base[l * rs + u] = static_cast<Y>(src[l * hid + u]);
      }
    }
    return;
  }
  for (int64_t u = 0; u < hid; ++u) {
    Y* out = base + u * m.sC;
    for (int64_t l = 0; l < L; ++l) out[l * ls] = static_cast<Y>(src[l * hid + u]);
  }
}

// Rows read one per line, a line stride apart (a whole image row for a sweep along W): each is a cache
// miss the hardware prefetchers do not foresee, so the row kRowsAhead lines on is prefetched (as the
// backward cell step prefetches its saved slots, cell_steps_avx512.cpp).
constexpr int64_t kRowsAhead = 4;
template <typename E>
inline void prefetch_row(const E* p, int64_t n) {
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t o = 0; o < n * static_cast<int64_t>(sizeof(E)); o += 64) __builtin_prefetch(c + o);
}

// dst (L x hid, row-major) = (or +=) the transpose of hid columns of L values, ld apart.
template <bool kAdd>
void columns_to_rows(const float* cols, int64_t ld, int64_t hid, int64_t L, float* dst) {
  if (!kAdd) return transpose_f32(cols, ld, hid, L, dst, hid);
  thread_local std::vector<float> rows;
  rows.resize(L * hid);
  transpose_f32(cols, ld, hid, L, rows.data(), hid);
  for (int64_t i = 0; i < L * hid; ++i) dst[i] += rows[i];
}

// Reads a tile's rows (L x hid, row-major) from the strided tensor: dst = (or +=) src rows. For
// NCHW tensors swept along H, a channel's values for the tile's lines are adjacent in memory, so the
// loop runs along the lines of each channel (the mirror of scatter_tile) instead of across channels.
template <typename T, bool kAdd, typename Y>
void gather_rows(const StridedMap& m, int64_t l0, int64_t L, int64_t t, int64_t c0, int64_t hid, const Y* src,
                 T* dst) {
  const int64_t ls = L > 1 ? m.offset(l0 + 1, t) - m.offset(l0, t) : 0;  // between the tile's lines
  if constexpr (!std::is_same_v<T, Y> && std::is_same_v<Y, c10::BFloat16>) {
    if constexpr (std::is_same_v<T, float>) {
      if (ls == 1 && m.sC != 1) {
        // NCHW, lines adjacent: each unit's run widened, then the tile transposed in registers
        thread_local std::vector<float> cols;
        cols.resize(hid * L);
        const uint16_t* base = reinterpret_cast<const uint16_t*>(src + m.offset(l0, t) + c0 * m.sC);
        float_from_bf16_rows(base, m.sC, cols.data(), L, hid, L, false);
        return columns_to_rows<kAdd>(cols.data(), L, hid, L, dst);
      }
      if (m.sC == 1) {  // channels_last: each row widened in place, in one call for the tile
        return float_from_bf16_rows(reinterpret_cast<const uint16_t*>(src + m.offset(l0, t) + c0), ls, dst, hid, L,
                                    hid, kAdd);
      }
    }
    // bfloat16 input: the bits gathered like any copy, then widened at once (vectorised).
    thread_local std::vector<uint16_t> bits;
    bits.resize(L * hid);
    gather_rows<uint16_t, false>(m, l0, L, t, c0, hid, reinterpret_cast<const uint16_t*>(src), bits.data());
    return float_from_bf16(bits.data(), dst, L * hid, kAdd);
  }
  if constexpr (std::is_same_v<T, float> && std::is_same_v<Y, float>) {
    if (ls == 1 && m.sC != 1)  // the mirror of scatter_tile's: 16 x 16 register blocks
      return columns_to_rows<kAdd>(src + m.offset(l0, t) + c0 * m.sC, m.sC, hid, L, dst);
  }
  if (ls == 1 && m.sC != 1) {
    const Y* base = src + m.offset(l0, t) + c0 * m.sC;
    for (int64_t u = 0; u < hid; ++u) {
      const Y* in = base + u * m.sC;
      for (int64_t l = 0; l < L; ++l) {
        if (kAdd) dst[l * hid + u] += static_cast<T>(in[l]); else dst[l * hid + u] = static_cast<T>(in[l]);
      }
    }
    return;
  }
  for (int64_t l = 0; l < L; ++l) {
    const Y* in = src + m.offset(l0 + l, t) + c0 * m.sC;
    if (m.sC == 1 && l + kRowsAhead < L) prefetch_row(in + kRowsAhead * ls, hid);
    T* out = dst + l * hid;
    if (m.sC == 1) {  // channels_last: a row as it lies (the loop below, with a run-time stride, was scalar)
      if constexpr (std::is_same_v<T, Y> && !kAdd) {
        std::memcpy(out, in, hid * sizeof(T));
      } else {
        for (int64_t u = 0; u < hid; ++u) {
          if (kAdd) out[u] += static_cast<T>(in[u]); else out[u] = static_cast<T>(in[u]);
        }
      }
      continue;
    }
    for (int64_t u = 0; u < hid; ++u) {
      if (kAdd) out[u] += static_cast<T>(in[u * m.sC]); else out[u] = static_cast<T>(in[u * m.sC]);
    }
  }
}

// The dtype of the saved slots (SavedSlot, tile_engine.h): bfloat16 for bfloat16 ops, else T.
template <typename T, typename Y>
constexpr at::ScalarType saved_dtype() {
  return std::is_same_v<SavedSlot<T, Y>, T> ? c10::CppTypeToScalarType<T>::value : at::kBFloat16;
}

// Workspace layout: (2, T, lines, S*hid), time-major per direction, so the rows a tile saves (forward)
// and reads back (backward) at one step are one contiguous block, whatever the sweep axis.
template <typename T>
T* ws_block(T* ws, int d, int64_t t, int64_t line0, int64_t T_len, int64_t lines, int64_t row) {
  return ws + ((d * T_len + t) * lines + line0) * row;
}

// The tile engine's forward IO for a sweep: every line of the tile runs every step; its input rows are
// one strided matrix of the position-major x; outputs go to the strided y. Y: the dtype of x and y (T,
// or bfloat16 with T = float: the state and every sum stay float32, the saved slots are bfloat16).
template <typename T, typename Y>
struct SweepForwardIO {
  using W = SavedSlot<T, Y>;
  const SweepGeometry& geo;
  const StridedMap& ymap;
  const Y* x;      // position-major (N, H, W, C)
  Y* y;
  W* ws_base;      // nullptr when not training
  int64_t C, hid, S, T_len, lines, l0, L;
  int d;
  int64_t active(int64_t) const { return L; }
  const Y* x_rows(int64_t t, int64_t, int64_t& ld) const {
    ld = geo.line_stride() * C;
    return x + geo.pos(l0, t) * C;
  }
  W* ws(int64_t t) const { return ws_base ? ws_block(ws_base, d, t, l0, T_len, lines, S * hid) : nullptr; }
  void store(int64_t t, int64_t, const T* h) const { scatter_tile(ymap, l0, L, t, d * hid, hid, h, y); }
  void idle(int64_t, int64_t) const {}
};

template <typename Cell, typename T, typename Y = T>
std::tuple<Tensor, Tensor> sweep_forward(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                                         const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                                         int64_t axis, bool channels_last, bool training, bool bf16_products) {
  constexpr int64_t G = Cell::kGates, S = Cell::kSaved;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), hid = w_hh.size(2), Gh = G * hid;
  const SweepGeometry geo{N, H, W, static_cast<int>(axis)};
  const int64_t T_len = geo.steps(), lines = geo.lines();

  auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  Tensor y = empty_large({N, 2 * hid, H, W}, x.options(), fmt);
  const auto t_opts = x.options().dtype(c10::CppTypeToScalarType<T>::value);
  const auto ws_opts = x.options().dtype(saved_dtype<T, Y>());
  Tensor ws = training ? empty_large({2, T_len, lines, S * hid}, ws_opts) : at::empty({0}, ws_opts);
  if (geo.positions() == 0) return {y, ws};

  // Transposed weights (C x Gh, hid x Gh per direction): the per-step products are then A . B with
  // B row-major, the layout the AVX-512 GEMM streams (blas.h).
  // bfloat16 products read only the pairs below.
  const Tensor wih = bf16_products ? Tensor() : transposed_weights(w_ih);
  const Tensor whh = bf16_products ? Tensor() : transposed_weights(w_hh);
  // Position-major input (a no-op for channels_last x): the rows a tile needs at one step are then
  // one strided matrix, projected right before use instead of through a full-size gx buffer.
  const Tensor xcl = position_major(x);
  const Tensor bi = b_ih.has_value() ? b_ih->to(t_opts.dtype()).contiguous() : at::zeros({2, Gh}, t_opts);
  const Tensor bh = b_hh.has_value() ? b_hh->to(t_opts.dtype()).contiguous() : at::zeros({2, Gh}, t_opts);

  const StridedMap ymap(geo, y);
  // bfloat16 ops: the same B operands in pairs (the per-step products then run in bfloat16).
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
  const Y* x_p = xcl.data_ptr<Y>();
  Y* y_p = y.data_ptr<Y>();
  auto* ws_p = training ? static_cast<SavedSlot<T, Y>*>(ws.data_ptr()) : nullptr;
  const Tiling tiling = choose_tiling(geo);

  at::parallel_for(0, tiling.items, 1, [&](int64_t begin, int64_t end) {
    ForwardScratch<T> scratch(tiling.tile, hid, Gh, Cell::kHasCellState);
    for (int64_t i = begin; i < end; ++i) {
      const auto [d, l0, L] = tiling.item(i);
      std::fill(scratch.h_a.begin(), scratch.h_a.end(), T(0));
      std::fill(scratch.c.begin(), scratch.c.end(), T(0));
      SweepForwardIO<T, Y> io{geo, ymap, x_p, y_p, ws_p, C, hid, S, T_len, lines, l0, L, d};
      forward_tile<Cell>(wts, d, L, T_len, /*h0_zero=*/true, scratch, io);
    }
  });
  return {y, ws};
}

// The tile engine's backward IO for a sweep: grad_y and h_prev come from the strided grad_y and y,
// c_prev from the workspace, dx rows go to this direction's position-major dx.
template <typename Cell, typename T, typename Y>
struct SweepBackwardIO {
  using W = SavedSlot<T, Y>;
  const SweepGeometry& geo;
  const StridedMap &ymap, &gmap;
  const Y *x, *y, *grad_y;
  const W* ws_base;
  T* dx;  // position-major (N, H, W, C) of this direction
  int64_t C, hid, S, T_len, lines, l0, L;
  int d;
  int64_t active(int64_t) const { return L; }
  void before_step(int64_t, int64_t) const {}
  bool first(int64_t t) const { return t == step_time(d, 0, T_len); }  // h_prev = c_prev = 0
  int64_t prev(int64_t t) const { return d == 0 ? t - 1 : t + 1; }
  void add_grad_y(int64_t t, int64_t, T* dh) const { gather_rows<T, true>(gmap, l0, L, t, d * hid, hid, grad_y, dh); }
  void load_prev(int64_t t, int64_t, T* hp, T* cp) const {
    if (first(t)) {
      std::fill(hp, hp + L * hid, T(0));
      if (Cell::kHasCellState) std::fill(cp, cp + L * hid, T(0));
      return;
    }
    gather_rows<T, false>(ymap, l0, L, prev(t), d * hid, hid, y, hp);
    if constexpr (Cell::kHasCellState) {
      const W* src = ws_block(ws_base, d, prev(t), l0, T_len, lines, S * hid) + Cell::kCellSlot * hid;
      for (int64_t l = 0; l < L; ++l) {
        if (l + kRowsAhead < L) prefetch_row(src + (l + kRowsAhead) * S * hid, hid);
        if constexpr (std::is_same_v<W, T>) std::memcpy(cp + l * hid, src + l * S * hid, hid * sizeof(T));
        else float_from_bf16(src + l * S * hid, cp + l * hid, hid, false);
      }
    }
  }
  const W* ws(int64_t t) const { return ws_block(ws_base, d, t, l0, T_len, lines, S * hid); }
  T* dx_rows(int64_t t, int64_t, int64_t& ld) const {
    ld = geo.line_stride() * C;
    return dx + geo.pos(l0, t) * C;  // each position is visited once per direction: the GEMM's beta = 0
  }
  void dx_done(int64_t, int64_t, const T*) const {}
  void copy_x(int64_t t, int64_t, T* dst) const {
    const int64_t p0 = geo.pos(l0, t), ls = geo.line_stride();
    for (int64_t l = 0; l < L; ++l) {
      const Y* src = x + (p0 + l * ls) * C;
      if constexpr (std::is_same_v<T, Y>) {
        std::memcpy(dst + l * C, src, C * sizeof(T));
      } else if constexpr (std::is_same_v<T, float> && std::is_same_v<Y, c10::BFloat16>) {
        float_from_bf16(reinterpret_cast<const uint16_t*>(src), dst + l * C, C, false);
      } else {
        for (int64_t c = 0; c < C; ++c) dst[l * C + c] = static_cast<T>(src[c]);
      }
    }
  }
};

// Backward of one sweep: each (direction, tile) walks time in reverse through the tile engine, which
// writes the tile's rows of dx and accumulates its dW_ih, dW_hh and biases per work item. Nothing
// position-sized is materialised besides one dx buffer per direction (the two directions run on
// different threads and both write every position).
template <typename Cell, typename T, typename Y = T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sweep_backward(const Tensor& grad_y, const Tensor& x,
                                                                  const Tensor& w_ih, const Tensor& w_hh,
                                                                  const Tensor& y, const Tensor& ws,
                                                                  int64_t axis, bool bf16_products) {
  constexpr int64_t G = Cell::kGates, S = Cell::kSaved;
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), hid = w_hh.size(2), Gh = G * hid;
  const SweepGeometry geo{N, H, W, static_cast<int>(axis)};
  const int64_t T_len = geo.steps(), lines = geo.lines();

  const Tensor wih = bf16_products ? Tensor() : w_ih.contiguous();  // bfloat16 products read the pairs
  const Tensor whh = bf16_products ? Tensor() : w_hh.contiguous();
  const Tensor xcl = position_major(x);
  const Tiling tiling = choose_tiling(geo);
  // dx of each direction, position-major (N, H, W, C).
  const auto t_opts = x.options().dtype(c10::CppTypeToScalarType<T>::value);
  Tensor dx_dir = empty_large({2, N, H, W, C}, t_opts);
  const WeightGradParts wgrad{2, Gh, C, hid};
  Tensor parts = wgrad.empty(tiling.items, t_opts);
  if (geo.positions() == 0) parts.zero_();  // (no work item runs to zero its part)

  if (geo.positions() > 0) {
    // y and grad_y position-major: each step's rows are then contiguous copies. Gathered in place from
    // NCHW, a step reads 2*hid channel rows H*W apart -- one L1 set when H*W*size is a multiple of 4 KiB.
    const Tensor y_pm = position_major(y), gy_pm = position_major(grad_y);
    const StridedMap ymap(geo, y_pm), gmap(geo, gy_pm);
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
    const Y* gy_p = gy_pm.data_ptr<Y>();
    const Y* y_p = y_pm.data_ptr<Y>();
    const auto* ws_p = static_cast<const SavedSlot<T, Y>*>(ws.data_ptr());
    const Y* x_p = xcl.data_ptr<Y>();
    T* dx_p = dx_dir.data_ptr<T>();
    T* parts_p = parts.data_ptr<T>();
    const int64_t P = geo.positions();

    at::parallel_for(0, tiling.items, 1, [&](int64_t begin, int64_t end) {
      BackwardScratch<T> scratch(tiling.tile, hid, Gh, C, Cell::kHasCellState, Cell::kSplitRecurrentGrad);
      for (int64_t item = begin; item < end; ++item) {
        const auto [d, l0, L] = tiling.item(item);
        std::fill(scratch.dh.begin(), scratch.dh.end(), T(0));
        std::fill(scratch.dc.begin(), scratch.dc.end(), T(0));
        wgrad.zero(parts_p, item);
        const auto [dwih, dwhh, dbih, dbhh] = wgrad.slots(parts_p, item);
        SweepBackwardIO<Cell, T, Y> io{geo, ymap, gmap, x_p, y_p, gy_p, ws_p, dx_p + d * P * C,
                                    C, hid, S, T_len, lines, l0, L, d};
        backward_tile<Cell>(wts, d, T_len, scratch, GradSlots<T>{dwih, dwhh, dbih, dbhh}, io);
      }
    });
  }

  // in the op's dtype (bfloat16 ops: cast once, from the parts)
  auto [dw_ih, dw_hh, db_ih, db_hh] = wgrad.sum(parts, Cell::kSplitRecurrentGrad, c10::CppTypeToScalarType<Y>::value);
  // dx = both directions' parts, in the memory format of x.
  Tensor dx = empty_large(x.sizes(), x.options(),
                          is_channels_last(x) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  sum_directions(dx_dir, dx);
  return {dx, dw_ih, dw_hh, db_ih, db_hh};
}

// ---- the ops: checks, then CELL_SWITCH / DTYPE_SWITCH to the templates above ----

std::tuple<Tensor, Tensor> sweep_cpu(c10::string_view cell, const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                                     const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh,
                                     int64_t axis, bool channels_last, bool training) {
  constexpr const char* op = "brnnseg::sweep";
  return CELL_SWITCH(op, cell, Cell, [&] {
    check_sweep_inputs(op, x, w_ih, w_hh, b_ih, b_hh, Cell::kGates, axis);
    TORCH_CHECK(x.device().is_cpu(), op, ": CPU kernel called with x on ", x.device());
    if (x.scalar_type() == at::kBFloat16) {  // float32 state, bfloat16 products (tile_engine.h)
      const BFloat16Op b;  // x and y stay bfloat16: read and written by the kernel
      return sweep_forward<Cell, float, c10::BFloat16>(x, b.weight(w_ih), b.weight(w_hh), b.in(b_ih), b.in(b_hh), axis,
                                                       channels_last, training, b.products);
    }
    return DTYPE_SWITCH(op, x.scalar_type(), T, CpuDtypes, [&] {
      return sweep_forward<Cell, T>(x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training, false);
    });
  });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sweep_backward_cpu(c10::string_view cell, const Tensor& grad_y,
                                                                      const Tensor& x, const Tensor& w_ih,
                                                                      const Tensor& w_hh, const Tensor& y,
                                                                      const Tensor& ws, int64_t axis) {
  constexpr const char* op = "brnnseg::sweep_backward";
  return CELL_SWITCH(op, cell, Cell, [&] {
    check_sweep_inputs(op, x, w_ih, w_hh, std::nullopt, std::nullopt, Cell::kGates, axis);
    const Tensor gy = grad_y.to(x.scalar_type());
    const bool bf16 = x.scalar_type() == at::kBFloat16;
    check_sweep_backward_inputs(op, Cell::kSaved, gy, x, w_hh, y, ws, axis, bf16 ? at::kBFloat16 : x.scalar_type());
    if (bf16) {
      const BFloat16Op b;
      auto [dx, dwi, dwh, dbi, dbh] = sweep_backward<Cell, float, c10::BFloat16>(gy, x, b.weight(w_ih), b.weight(w_hh), y,
                                                                                 ws, axis, b.products);
      return std::make_tuple(dx, b.out(dwi), b.out(dwh), b.out(dbi), b.out(dbh));
    }
    return DTYPE_SWITCH(op, x.scalar_type(), T, CpuDtypes,
                        [&] { return sweep_backward<Cell, T>(gy, x, w_ih, w_hh, y, ws, axis, false); });
  });
}

// mode="parallel" on the CPU: the two sweeps one after the other (each already uses every thread),
// written into the two channel halves of one output.
std::tuple<Tensor, Tensor, Tensor> sweep_pair_cpu(c10::string_view cell, const Tensor& x, const Tensor& w_ih_r,
                                                  const Tensor& w_hh_r, const std::optional<Tensor>& b_ih_r,
                                                  const std::optional<Tensor>& b_hh_r, const Tensor& w_ih_c,
                                                  const Tensor& w_hh_c, const std::optional<Tensor>& b_ih_c,
                                                  const std::optional<Tensor>& b_hh_c, bool channels_last,
                                                  bool training) {
  TORCH_CHECK(w_hh_r.dim() == 3 && w_hh_c.dim() == 3 && w_hh_r.size(2) == w_hh_c.size(2),
              "brnnseg::sweep_pair: both sweeps must have the same hidden size, got w_hh_rows ", w_hh_r.sizes(),
              " and w_hh_cols ", w_hh_c.sizes());
  auto [y_r, ws_r] = sweep_cpu(cell, x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, 3, channels_last, training);
  auto [y_c, ws_c] = sweep_cpu(cell, x, w_ih_c, w_hh_c, b_ih_c, b_hh_c, 2, channels_last, training);
  const auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  Tensor y = at::empty({x.size(0), 2 * y_r.size(1), x.size(2), x.size(3)}, x.options().memory_format(fmt));
  y.narrow(1, 0, y_r.size(1)).copy_(y_r);
  y.narrow(1, y_r.size(1), y_c.size(1)).copy_(y_c);
  return {y, ws_r, ws_c};
}

std::vector<Tensor> sweep_pair_backward_cpu(c10::string_view cell, const Tensor& grad_y, const Tensor& x,
                                            const Tensor& w_ih_r, const Tensor& w_hh_r, const Tensor& w_ih_c,
                                            const Tensor& w_hh_c, const Tensor& y, const Tensor& ws_r,
                                            const Tensor& ws_c) {
  TORCH_CHECK(w_hh_r.dim() == 3, "brnnseg::sweep_pair_backward: w_hh_rows must be 3-D, got ", w_hh_r.sizes());
  const int64_t h2 = 2 * w_hh_r.size(2);
  TORCH_CHECK(y.dim() == 4 && y.size(1) == 2 * h2 && grad_y.sizes() == y.sizes(),
              "brnnseg::sweep_pair_backward: y and grad_y must have shape (N, ", 2 * h2, ", H, W), got ", y.sizes(),
              " and ", grad_y.sizes());
  auto [dx_r, dwi_r, dwh_r, dbi_r, dbh_r] =
      sweep_backward_cpu(cell, grad_y.narrow(1, 0, h2), x, w_ih_r, w_hh_r, y.narrow(1, 0, h2), ws_r, 3);
  auto [dx_c, dwi_c, dwh_c, dbi_c, dbh_c] =
      sweep_backward_cpu(cell, grad_y.narrow(1, h2, h2), x, w_ih_c, w_hh_c, y.narrow(1, h2, h2), ws_c, 2);
  return {dx_r.add_(dx_c), dwi_r, dwh_r, dbi_r, dbh_r, dwi_c, dwh_c, dbi_c, dbh_c};
}

}  // namespace

TORCH_LIBRARY_IMPL(brnnseg, CPU, m) {
  m.impl("sweep", &sweep_cpu);
  m.impl("sweep_backward", &sweep_backward_cpu);
  m.impl("sweep_pair", &sweep_pair_cpu);
  m.impl("sweep_pair_backward", &sweep_pair_backward_cpu);
}

}  // namespace brnnseg::cpu
