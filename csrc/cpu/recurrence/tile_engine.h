// The CPU recurrence tile engine, shared by the sweep kernels (sweep_cpu.cpp: lines of a feature map)
// and the sequence kernels (sequence_cpu.cpp: the drop-in nn.GRU/LSTM/RNN). A tile is up to 128 lines
// (sequences) of one direction, run on one thread for all its time steps: per step a GEMM projects the
// tile's inputs, a GEMM applies W_hh to h_prev, and the cell's vectorised step (cell_steps.h) does the
// rest. Backward walks time in reverse and batches the weight-gradient GEMMs over kChunk steps.
//
// What differs between the ops -- where a tile's rows live in x, y and dx, which rows still run at a
// time step (sequence lengths), initial states -- is the caller's IO object:
//
//   forward IO                                     backward IO
//   int64_t active(t)    rows running at t,        int64_t active(t)
//                        a prefix of the tile      void before_step(t, Lt)   e.g. zero dx rows past the end
//   const X* x_rows(t, Lt, int64_t& ld)            void add_grad_y(t, Lt, T* dh)
//                        X = T, or bfloat16 (T float)
//   W* ws(t)             saved slots or nullptr    void load_prev(t, Lt, T* h_prev, T* c_prev)   (L x hid)
//   void store(t, Lt, const T* h)                  const W* ws(t)      W: T, or uint16_t (SavedSlot)
//   void idle(t, Lt)     rows [Lt, L) at t         T* dx_rows(t, Lt, int64_t& ld), void dx_done(t, Lt, const T* rows)
//                                                  void copy_x(t, Lt, T* dst)   x rows for dW_ih (Lt x C)
//
// Products: in T, or for bfloat16 ops (T = float state, TileWeights::pairs set) in bfloat16 with float32
// accumulation (gemm_bf16.h): the weights come pre-packed in pairs, the per-step operands (x rows,
// h_prev, gate gradients) are rounded to bfloat16 as they are packed. Cell math, states and sums
// stay float32, as on the GPU.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "brnnseg/sweep_geometry.h"
#include "cpu/gemm/blas.h"
#include "cpu/gemm/gemm_bf16.h"
#include "cpu/recurrence/cell_steps.h"

namespace brnnseg::cpu {

// Lines per tile: the per-step products are GEMMs with this many rows, not matrix-vector products;
// 128 measured best on the benchmark shapes (fewer, larger BLAS calls; states still fit in L2).
constexpr int64_t kMaxTile = 128;
// Backward: time steps whose weight-gradient GEMMs are batched into one.
constexpr int64_t kChunk = 8;

// One layer's weights for all directions. Forward reads the transposed ones (C x Gh, hid x Gh per
// direction: B row-major for the GEMMs, blas.h); backward the plain ones (Gh x C, Gh x hid).
template <typename T>
struct TileWeights {
  int64_t C, hid, Gh;
  const T* w_ih;    // forward: (D, C, Gh); backward: (D, Gh, C)
  const T* w_hh;    // forward: (D, hid, Gh); backward: (D, Gh, hid)
  const T* b_ih;    // forward only: (D, Gh), zeros when the layer has none
  const T* b_hh;
  // bfloat16 products (float only, weight_pairs(): the same B operands in pairs, [K2][N] per direction),
  // or nullptr: products in T.
  const uint32_t* w_ih_pairs = nullptr;  // forward: (D, ceil(C/2), Gh); backward: (D, ceil(Gh/2), C)
  const uint32_t* w_hh_pairs = nullptr;  // forward: (D, ceil(hid/2), Gh); backward: (D, ceil(Gh/2), hid)
  bool bf16() const { return w_hh_pairs != nullptr; }
};

// C (M x N) = A (M x K, row stride lda) . B [+ C], B the weight of one direction: its pairs where the
// layer runs bfloat16 products (B_pairs not null), else the T matrix (K x N, row-major).
template <typename T>
inline void weight_product(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
                           const uint32_t* B_pairs, T* C, int64_t ldc, bool accumulate) {
  if constexpr (std::is_same_v<T, float>) {
    if (B_pairs != nullptr) return gemm_bf16_packed_b(false, M, N, K, A, lda, B_pairs, C, ldc, accumulate);
  }
  gemm(false, false, M, N, K, T(1), A, lda, B, N, accumulate ? T(1) : T(0), C, ldc);
}

// The input projection with bfloat16 inputs (x rows as stored; the layer runs bfloat16 products).
template <typename T, typename X>
inline void input_product(int64_t M, int64_t N, int64_t K, const X* A, int64_t lda, const T* B,
                          const uint32_t* B_pairs, T* C, int64_t ldc) {
  if constexpr (std::is_same_v<X, T>) {
    weight_product(M, N, K, A, lda, B, B_pairs, C, ldc, false);
  } else {
    static_assert(std::is_same_v<T, float> && sizeof(X) == 2, "bfloat16 inputs run float32 state");
    if (B_pairs != nullptr)
      return gemm_bf16_rows_packed_b(M, N, K, reinterpret_cast<const uint16_t*>(A), lda, B_pairs, C, ldc, false);
    thread_local std::vector<T> rows;  // no bfloat16 products on this CPU: the rows in float32
    rows.resize(M * K);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) rows[m * K + k] = static_cast<T>(A[m * lda + k]);
    weight_product(M, N, K, rows.data(), K, B, B_pairs, C, ldc, false);
  }
}

// Weight gradient: C (M x N) += A^T . B, A stored K x M (row stride lda), B K x N (row stride ldb).
template <typename T>
inline void grad_product(bool bf16, int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
                         int64_t ldb, T* C, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    if (bf16) return gemm_bf16(true, M, N, K, A, lda, B, ldb, C, ldc, true);
  }
  gemm(true, false, M, N, K, T(1), A, lda, B, ldb, T(1), C, ldc);
}

inline int64_t pairs_of(int64_t k) { return (k + 1) / 2; }

// The saved slots of a step, as the IO keeps them: in T, or for bfloat16 ops (T float) in bfloat16
// (uint16_t bits; see SavedSlot).
template <typename Args, typename W>
inline void set_saved(Args& a, W* ws) {
  if constexpr (std::is_same_v<std::remove_const_t<W>, uint16_t>) {
    a.ws = nullptr;
    a.ws_bf16 = ws;
  } else {
    a.ws = ws;
  }
}

// What the saved slots of an op are stored in: T, or for bfloat16 ops (X = bfloat16, T = float state)
// bfloat16 bits. They are written once per step and read back once by the backward, megabytes after:
// the backward's cell step waits on that stream (perf, cpu-hires LSTM: 80 % of its samples on the
// loads of the slots), and bfloat16 halves it. The products already round their operands to bfloat16.
template <typename T, typename X>
using SavedSlot = std::conditional_t<std::is_same_v<T, X>, T, uint16_t>;

// The x rows of a step as rows of bfloat16 pairs (gemm_bf16.h) for the summed products: bfloat16 rows
// through bf16_rows_as_pairs (in place where they can be), float rows packed into `buf`. Returns the
// rows, their stride in pairs in `stride`.
template <typename X>
inline const uint32_t* x_pairs(const X* x, int64_t L, int64_t C, int64_t lda, std::vector<uint32_t>& buf,
                               int64_t& stride) {
  if constexpr (sizeof(X) == 2) {
    return bf16_rows_as_pairs(reinterpret_cast<const uint16_t*>(x), L, C, lda, buf, stride);
  } else {
    buf.resize(L * pairs_of(C));
    pack_pairs_along_rows(x, lda, L, C, buf.data());
    stride = pairs_of(C);
    return buf.data();
  }
}

// Rows per block of the blocked forward step (summed bfloat16 products): the block's gate rows fill at
// most 32 KiB (L1 holds 32-48 KiB), in multiples of 16 (AMX tile rows), at least 16.
inline int64_t gate_block_rows(int64_t Gh, int64_t L) {
  const int64_t fit = (32768 / (Gh * 4)) & ~int64_t(15);
  return std::min<int64_t>(L, std::max<int64_t>(16, fit));
}

// Per-thread buffers of the forward engine. The caller puts the initial state in h0() / c().
template <typename T>
struct ForwardScratch {
  std::vector<T> h_a, h_b, c, gx, gh;
  std::vector<uint32_t> x_pairs, h_pairs;  // summed bfloat16 products: the step's operands in pairs
  ForwardScratch(int64_t tile, int64_t hid, int64_t Gh, bool cell_state)
      : h_a(tile * hid), h_b(tile * hid), c(cell_state ? tile * hid : 0), gx(tile * Gh), gh(tile * Gh) {}
  T* h0() { return h_a.data(); }
};

// Runs one tile of direction d over T_len steps; returns the final hidden state (L x hid, inside s).
// h0_zero: the initial state is zero (the first recurrent product is skipped).
template <typename Cell, typename T, typename IO>
T* forward_tile(const TileWeights<T>& w, int d, int64_t L, int64_t T_len, bool h0_zero, ForwardScratch<T>& s,
                IO& io) {
  const int64_t C = w.C, hid = w.hid, Gh = w.Gh;
  T* h_prev = s.h_a.data();
  T* h_cur = s.h_b.data();
  const T* wih_d = w.w_ih + d * Gh * C;
  const T* whh_d = w.w_hh + d * Gh * hid;
  const uint32_t* pih_d = w.w_ih_pairs ? w.w_ih_pairs + d * pairs_of(C) * Gh : nullptr;
  const uint32_t* phh_d = w.w_hh_pairs ? w.w_hh_pairs + d * pairs_of(hid) * Gh : nullptr;
  StepArgs<T> a{0, hid, s.gx.data(), s.gh.data(), w.b_ih + d * Gh, w.b_hh + d * Gh, nullptr};
  a.bf16_gates = w.bf16();  // products in bfloat16: the gate math to bfloat16's accuracy (cell_steps.h)
  // With bfloat16 products, the gates that take W_ih x + W_hh h_prev as it is (Cell::kSummedGates: all of
  // the LSTM's, the GRU's r and z) get both products in one pass into gx (on AMX one tile store per
  // block instead of two, and the step reads one buffer); the others (the GRU's n) keep two.
  constexpr int kS = Cell::kSummedGates;
  const bool summed = std::is_same_v<T, float> && w.bf16() && C > 0;
  for (int64_t step = 0; step < T_len; ++step) {
    const int64_t t = step_time(d, step, T_len);
    const int64_t Lt = io.active(t);
    if (Lt > 0) {
      int64_t lda = 0;
      const auto* xa = io.x_rows(t, Lt, lda);  // T, or bfloat16 for bfloat16 layers
      const bool first = step == 0 && h0_zero;
      auto* ws = io.ws(t);
      a.summed = summed && !first ? kS : 0;
      a.gh = a.summed == Cell::kGates ? nullptr : s.gh.data();
      if (a.summed == 0) {  // one block of Lt rows
        if (C > 0) input_product(Lt, Gh, C, xa, lda, wih_d, pih_d, s.gx.data(), Gh);
        else std::fill(s.gx.begin(), s.gx.end(), T(0));
        if (first) std::fill(s.gh.begin(), s.gh.end(), T(0));
        else weight_product(Lt, Gh, hid, h_prev, hid, whh_d, phh_d, s.gh.data(), Gh, false);
        a.L = Lt;
        set_saved(a, ws);
        step_forward(Cell{}, a, h_cur, h_prev, s.c.data());
      }
      if constexpr (std::is_same_v<T, float>) {
        if (a.summed > 0) {
          // Rows are independent within a step (each row's gates take its own x and h_prev), so the
          // summed products and the cell step run block by block: the block's gates (rows x Gh floats,
          // <= 32 KiB) are still in L1 when the step reads them, where a whole tile's went out to L2.
          int64_t sx = 0;
          const uint32_t* xp = x_pairs(xa, Lt, C, lda, s.x_pairs, sx);
          const int64_t H2 = pairs_of(hid), C2 = pairs_of(C);
          s.h_pairs.resize(Lt * H2);
          pack_pairs_along_rows(h_prev, hid, Lt, hid, s.h_pairs.data());
          const int64_t rows = gate_block_rows(Gh, Lt);
          for (int64_t r0 = 0; r0 < Lt; r0 += rows) {
            const int64_t rb = std::min(rows, Lt - r0);
            const uint32_t* xr = xp + r0 * sx;
            const uint32_t* hr = s.h_pairs.data() + r0 * H2;
            gemm_bf16_pairs_sum(rb, kS * hid, C2, xr, sx, pih_d, H2, hr, H2, phh_d, Gh, s.gx.data(), Gh);
            if constexpr (kS < Cell::kGates) {  // the rest: input and recurrent products apart
              const int64_t n = (Cell::kGates - kS) * hid, o = kS * hid;
              gemm_bf16_pairs(rb, n, C2, xr, sx, 1, pih_d + o, Gh, s.gx.data() + o, Gh, false);
              gemm_bf16_pairs(rb, n, H2, hr, H2, 1, phh_d + o, Gh, s.gh.data() + o, Gh, false);
            }
            a.L = rb;
            set_saved(a, ws ? ws + r0 * Cell::kSaved * hid : ws);
            step_forward(Cell{}, a, h_cur + r0 * hid, h_prev + r0 * hid,
                         Cell::kHasCellState ? s.c.data() + r0 * hid : s.c.data());
          }
        }
      }
      io.store(t, Lt, h_cur);
    }
    if (Lt < L) {  // finished (or not yet started) rows keep their state
      std::memcpy(h_cur + Lt * hid, h_prev + Lt * hid, (L - Lt) * hid * sizeof(T));
      io.idle(t, Lt);
    }
    std::swap(h_prev, h_cur);
  }
  return h_prev;
}

// Per-thread buffers of the backward engine. The caller puts the gradients reaching the final
// state in dh / dc (zeros for the sweeps) and finds those of the initial state there at the end.
template <typename T>
struct BackwardScratch {
  std::vector<T> dh, dc, cp, hp, dgx, dgh, xs;
  std::vector<uint32_t> gate_pairs;  // bfloat16 products: the buffered gate gradients, transposed, in pairs
  std::vector<uint32_t> step_pairs;  // and one step's (cells without a split: the A of dx and of dh_prev)
  BackwardScratch(int64_t tile, int64_t hid, int64_t Gh, int64_t C, bool cell_state, bool split)
      : dh(tile * hid), dc(cell_state ? tile * hid : 0), cp(cell_state ? tile * hid : 0),
        hp(kChunk * tile * hid), dgx(kChunk * tile * Gh), dgh(split ? kChunk * tile * Gh : 0),
        xs(kChunk * tile * C) {}
};

// Weight-gradient accumulators of one work item (weight_grad_parts.h).
template <typename T>
struct GradSlots {
  T *w_ih, *w_hh, *b_ih, *b_hh;
};

template <typename Cell, typename T, typename IO>
void backward_tile(const TileWeights<T>& w, int d, int64_t T_len, BackwardScratch<T>& s, const GradSlots<T>& g,
                   IO& io) {
  constexpr bool kSplit = Cell::kSplitRecurrentGrad;
  const int64_t C = w.C, hid = w.hid, Gh = w.Gh;
  const T* wih_d = w.w_ih + d * Gh * C;
  const T* whh_d = w.w_hh + d * Gh * hid;
  const uint32_t* pih_d = w.w_ih_pairs ? w.w_ih_pairs + d * pairs_of(Gh) * C : nullptr;
  const uint32_t* phh_d = w.w_hh_pairs ? w.w_hh_pairs + d * pairs_of(Gh) * hid : nullptr;
  const bool bf16 = w.bf16();
  int64_t buffered = 0, steps = 0;  // rows and steps since the last weight-gradient GEMMs
  auto flush = [&] {
    if (buffered == 0) return;
    if constexpr (std::is_same_v<T, float>) {
      if (bf16) {  // dgx^T packed once (as rows of pairs, [Gh][K2]: AMX tiles read it as it lies): it is
                   // the A of dW_ih and (cells without a split) of dW_hh
        const int64_t K2 = pairs_of(buffered);
        s.gate_pairs.resize(K2 * Gh);
        uint32_t* ap = s.gate_pairs.data();
        pack_pairs_transposed(s.dgx.data(), Gh, buffered, Gh, ap);
        if (C > 0) gemm_bf16_packed_a(Gh, C, buffered, ap, K2, 1, s.xs.data(), C, g.w_ih, C, true);
        if (kSplit) pack_pairs_transposed(s.dgh.data(), Gh, buffered, Gh, ap);
        gemm_bf16_packed_a(Gh, hid, buffered, ap, K2, 1, s.hp.data(), hid, g.w_hh, hid, true);
        buffered = steps = 0;
        return;
      }
    }
    if (C > 0) grad_product(bf16, Gh, C, buffered, s.dgx.data(), Gh, s.xs.data(), C, g.w_ih, C);
    grad_product(bf16, Gh, hid, buffered, kSplit ? s.dgh.data() : s.dgx.data(), Gh, s.hp.data(), hid, g.w_hh, hid);
    buffered = steps = 0;
  };
  for (int64_t step = T_len - 1; step >= 0; --step) {
    const int64_t t = step_time(d, step, T_len);
    const int64_t Lt = io.active(t);
    io.before_step(t, Lt);
    if (Lt == 0) continue;
    T* hp_j = s.hp.data() + buffered * hid;
    T* dgx_j = s.dgx.data() + buffered * Gh;
    T* dgh_j = kSplit ? s.dgh.data() + buffered * Gh : dgx_j;  // else the recurrent side = the input side
    io.add_grad_y(t, Lt, s.dh.data());
    io.load_prev(t, Lt, hp_j, s.cp.data());
    StepBackwardArgs<T> a{Lt, hid, nullptr, dgx_j, dgh_j, g.b_ih, g.b_hh};
    set_saved(a, io.ws(t));
    step_backward(Cell{}, a, s.dh.data(), s.dc.data(), hp_j, Cell::kHasCellState ? s.cp.data() : nullptr, hid);
    // Cells without a split: dx and dh_prev take the same A (dgx), packed into pairs once for both.
    const uint32_t* gp = nullptr;
    if constexpr (!kSplit && std::is_same_v<T, float>) {
      if (bf16) {
        s.step_pairs.resize(Lt * pairs_of(Gh));
        pack_pairs_along_rows(dgx_j, Gh, Lt, Gh, s.step_pairs.data());
        gp = s.step_pairs.data();
      }
    }
    // dst (Lt x N) [+]= A . B, A the gate gradients of this step: from their pairs where packed above.
    auto product = [&](const T* A, int64_t N, const T* B, const uint32_t* B_pairs, T* dst, int64_t ld, bool acc) {
      if constexpr (std::is_same_v<T, float>) {
        if (gp) return gemm_bf16_pairs(Lt, N, pairs_of(Gh), gp, pairs_of(Gh), 1, B_pairs, N, dst, ld, acc);
      }
      weight_product(Lt, N, Gh, A, Gh, B, B_pairs, dst, ld, acc);
    };
    if (C > 0) {
      int64_t ld = 0;
      T* dst = io.dx_rows(t, Lt, ld);
      product(dgx_j, C, wih_d, pih_d, dst, ld, false);
      io.dx_done(t, Lt, dst);
      io.copy_x(t, Lt, s.xs.data() + buffered * C);
    }
    product(dgh_j, hid, whh_d, phh_d, s.dh.data(), hid, true);
    buffered += Lt;
    if (++steps == kChunk) flush();
  }
  flush();
}

}  // namespace brnnseg::cpu
