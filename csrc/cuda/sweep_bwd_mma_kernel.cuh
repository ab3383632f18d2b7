// The tensor-core backward kernel of the line sweeps (see sweep_fwd_mma_kernel.cuh for the layout).
// CTA (tile, direction) walks its 16 lines' steps in reverse; W_hh (zero-padded per gate, G*hid_pad x
// hid_pad) is loaded once into registers as B fragments. Each step:
//   1. gate math: each thread takes (line, unit) pairs, units fastest: dh = grad_y + dh_direct + the
//      partial products of the previous step's dgates . W_hh; the
//      cell's backward (the header the CPU uses) gives the pre-activation gradients, written for the
//      host's dx / dW GEMMs and, in the operand type, to shared memory as the product's A operand;
//   2. barrier; product: dgates (16 x G*hid_pad) . W_hh on tensor cores, partial products to shared
//      memory (K is split over warps when one warp's share of W_hh would not fit its registers);
//   3. barrier.
// The next step's saved gates (one contiguous block for the CTA's 16 lines) and grad_y are requested
// into L2 (prefetch.global.L2) before the product, so the gate math's loads come from L2, not DRAM.
// Half/bfloat16: dgates rounded to that type for the product (float accumulation); float: TF32.
#pragma once
#include "cuda/sweep_mma.cuh"

namespace brnnseg {

template <typename T, typename Cell, int kKt, bool kSplit = false>
__global__ void __launch_bounds__(MmaShape<T, Cell, kKt, true, kSplit>::kThreads, 1)
    sweep_bwd_mma_kernel(SweepBatch<SweepBwdParams<T>> batch) {
  using Sh = MmaShape<T, Cell, kKt, true, kSplit>;
  using Op = MmaOperand<T>;
  using E = typename Op::elem;
  constexpr int G = Cell::kGates, S = Cell::kSaved, HP = Sh::kHidPad, K = Sh::kK;
  constexpr int LDA = Sh::kLda, LDP = Sh::kLdp, KS = Sh::kKsplit, kPairs = Sh::kPairs;
  if (int(blockIdx.x) >= batch.blocks[blockIdx.z]) return;  // uniform per CTA: before any barrier
  const SweepBwdParams<T>& p = batch.sweep[blockIdx.z];
  const SweepGeometry& geo = p.geo;
  const int hid = p.hid, Gh = G * hid, d = blockIdx.y, threads = blockDim.x;

  BRNNSEG_DYNAMIC_SMEM(unsigned char, smem);
  const MmaCta<T, Sh, Cell::kHasCellState> cta(geo, smem);
  const int64_t lines = cta.lines, T_len = cta.steps, l0 = cta.l0;
  const int L = cta.L;
  const smem_ptr<E> a_s = cta.a;           // [16][LDA] dgates, operand type
  const smem_ptr<float> p_s = cta.part;    // [KS][16][LDP] dgates . W_hh partials
  const smem_ptr<float> dd_s = cta.state;  // [16][HP] dh_direct
  const smem_ptr<float> dc_s = cta.cell;   // [16][HP] dc (cells with a state)
  const smem_ptr<int64_t> pos0 = cta.line;                                   // [16] position of t = 0
  const smem_ptr<int64_t> y0 = pos0 + kMmaLines, g0 = pos0 + 2 * kMmaLines;  // y, grad_y offsets of t = 0
  LineOffsets::fill(pos0, geo, l0, L, p.y_sN, p.y_sH, p.y_sW, p.g_sN, p.g_sH, p.g_sW);
  const int64_t y_ts = geo.axis == 3 ? p.y_sW : p.y_sH, g_ts = geo.axis == 3 ? p.g_sW : p.g_sH;

  typename Sh::Product prod;
  prod.load(reinterpret_cast<const E*>(gmem_raw(p.w_mma)) + int64_t(d) * K * HP, HP);
  cta.zero(threads);

  // The next step's loads, requested into L2 while the product runs: the CTA's saved slots at t (16
  // lines x S*hid floats, contiguous; 128-byte lines) and each pair's grad_y.
  auto prefetch_step = [&](int64_t t) {
    const auto ws = p.ws + ((int64_t(d) * T_len + t) * lines + l0) * (S * hid);
    for (int64_t i = int64_t(threadIdx.x) * 32; i < int64_t(L) * S * hid; i += int64_t(threads) * 32) prefetch_l2(ws + i);
    for (int i = 0; i < kPairs; ++i) {
      const MmaPair q(i, threads, HP, hid, L);
      if (q.ok)
        prefetch_l2(p.grad_y + g0[q.l] + t * g_ts + (int64_t(d) * hid + q.u) * p.g_sC);
    }
  };
  __syncthreads();

  const int64_t ts = geo.time_stride();
  for (int64_t s = T_len - 1; s >= 0; --s) {
    const int64_t t = step_time(d, s, T_len);
    const bool first = s == 0;
    const int64_t t_prev = first ? t : step_time(d, s - 1, T_len);
    const int64_t prev_offset = d == 0 ? -ts : ts;
BRNNSEG_NO_UNROLL
    for (int i = 0; i < kPairs; ++i) {
      const MmaPair q(i, threads, HP, hid, L);
      if (!q.ok) continue;
      const int64_t line = l0 + q.l, pos = pos0[q.l] + t * ts;
      const int si = q.l * HP + q.u;
      float dh_in = to_float(p.grad_y[g0[q.l] + t * g_ts + (int64_t(d) * hid + q.u) * p.g_sC]) + float(dd_s[si]);
BRNNSEG_UNROLL
      for (int k = 0; k < KS; ++k) dh_in += float(p_s[(k * kMmaLines + q.l) * LDP + q.u]);
      float h_prev = 0.f, c_prev = 0.f;
      if constexpr (Cell::kBackwardReadsHPrev)
        if (!first)
          h_prev = to_float(p.y[y0[q.l] + t_prev * y_ts + (int64_t(d) * hid + q.u) * p.y_sC]);
      if constexpr (Cell::kHasCellState)
        if (!first)
          c_prev = p.ws[((int64_t(d) * T_len + t_prev) * lines + line) * (S * hid) + Cell::kCellSlot * hid + q.u];
      const auto ws = p.ws + ((int64_t(d) * T_len + t) * lines + line) * (S * hid) + q.u;
      float saved[S], dax[G], dah[G], dh_direct;
BRNNSEG_UNROLL
      for (int k = 0; k < S; ++k) saved[k] = ws[k * hid];
      float dcv = 0.f;
      if constexpr (Cell::kHasCellState) dcv = dc_s[si];
      Cell::backward(dh_in, dcv, saved, h_prev, c_prev, dax, dah, dh_direct);
      if constexpr (Cell::kHasCellState) dc_s[si] = dcv;
      dd_s[si] = dh_direct;
      const auto dgx = p.dgx + (pos * 2 + d) * Gh + q.u;
      const auto slot = (first ? p.dgh_first + (int64_t(d) * lines + line) * Gh : p.dgh + ((pos + prev_offset) * 2 + d) * Gh) + q.u;
BRNNSEG_UNROLL
      for (int g = 0; g < G; ++g) {
        dgx[g * hid] = dax[g];
        slot[g * hid] = dah[g];
        a_s[q.l * LDA + g * HP + q.u] = Op::from_float(dah[g]);
      }
      if (s == T_len - 1) {  // h at the last step feeds no later step: its slot holds zeros
        const auto last = p.dgh + (pos * 2 + d) * Gh + q.u;
BRNNSEG_UNROLL
        for (int g = 0; g < G; ++g) last[g * hid] = 0.f;
      }
    }
    if (!first) prefetch_step(t_prev);
    __syncthreads();  // dgates complete
    if (!first) prod.run(a_s, LDA, p_s, LDP);
    __syncthreads();  // partial products complete; dgates free for the next step
  }
}

}  // namespace brnnseg
