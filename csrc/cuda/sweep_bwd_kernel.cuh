// The persistent backward kernel of the line sweeps, templated on the cell (include/brnnseg/cell/).
// CTA (tile, direction) walks its lines' time steps in reverse: the cell's backward math turns the
// saved slots into pre-activation gradients (written for the host's dx / dW GEMMs), and dh_prev gets
// dgh . W_hh, with W_hh in shared memory where it fits. Two __syncthreads per step.
#pragma once
#include "cuda/sweep_common.cuh"

namespace brnnseg {

template <typename T, typename Cell, int kLPT>
__global__ void __launch_bounds__(kMaxThreadsPerCta, 1) sweep_bwd_kernel(SweepBatch<SweepBwdParams<T>> batch) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  if (int(blockIdx.x) >= batch.blocks[blockIdx.z]) return;  // uniform per CTA: before any barrier
  const SweepBwdParams<T>& p = batch.sweep[blockIdx.z];
  const SweepGeometry& geo = p.geo;
  const int hid = p.hid, Gh = G * hid;
  const int d = blockIdx.y;
  const int64_t lines = geo.lines(), T_len = geo.steps();
  const CtaLayout cta(geo, p.tile, hid);
  const int64_t l0 = cta.l0;
  const int L = cta.L, u = cta.u, lg = cta.lg, line_groups = cta.line_groups;
  const bool active = cta.active;

  BRNNSEG_DYNAMIC_SMEM(unsigned char, smem);
  const auto w = p.w_hh + int64_t(d) * Gh * hid;  // global, [j][k]
  const int sgh = p.smem_gates * hid;           // shared: rows j < sgh (the first smem_gates gates)
  const smem_ptr<T> w_s = smem_at<T>(smem, 0);
  const smem_ptr<float> dgh_s = smem_at<float>(smem, smem_weight_bytes<T>(hid, p.smem_gates));
  for (int i = threadIdx.x; i < sgh * hid; i += blockDim.x) w_s[i] = w[i];
  float dh[kLPT], dc[kLPT];
  for (int j = 0; j < kLPT; ++j) dh[j] = dc[j] = 0.f;
  __syncthreads();

  const int64_t ts = geo.time_stride();
  for (int64_t s = T_len - 1; s >= 0; --s) {
    const int64_t t = step_time(d, s, T_len);
    const bool first = s == 0;
    const int64_t t_prev = first ? t : step_time(d, s - 1, T_len);
    const int64_t prev_offset = d == 0 ? -ts : ts;
    for (int j = 0; j < kLPT && active; ++j) {
      const int l = lg + j * line_groups;
      if (l >= L) break;
      const int64_t line = l0 + l, pos = geo.pos(line, t);
      const auto ws = p.ws + ((int64_t(d) * T_len + t) * lines + line) * (S * hid);
      const float dh_in = dh[j] + to_float(p.grad_y[geo.strided_offset(line, t, p.g_sN, p.g_sH, p.g_sW) +
                                                    (int64_t(d) * hid + u) * p.g_sC]);
      float h_prev = 0.f, c_prev = 0.f;
      if constexpr (Cell::kBackwardReadsHPrev)
        if (!first)
          h_prev = to_float(p.y[geo.strided_offset(line, t_prev, p.y_sN, p.y_sH, p.y_sW) +
                                (int64_t(d) * hid + u) * p.y_sC]);
      if constexpr (Cell::kHasCellState)
        if (!first) c_prev = p.ws[((int64_t(d) * T_len + t_prev) * lines + line) * (S * hid) + Cell::kCellSlot * hid + u];
      float saved[S], dax[G], dah[G], dh_direct;
      for (int i = 0; i < S; ++i) saved[i] = ws[i * hid + u];
      float dcv = dc[j];
      Cell::backward(dh_in, dcv, saved, h_prev, c_prev, dax, dah, dh_direct);
      dc[j] = dcv;
      dh[j] = dh_direct;
      const auto dgx = p.dgx + (pos * 2 + d) * Gh;
      const auto slot = first ? p.dgh_first + (int64_t(d) * lines + line) * Gh
                          : p.dgh + ((pos + prev_offset) * 2 + d) * Gh;
      for (int g = 0; g < G; ++g) {
        dgx[g * hid + u] = dax[g];
        slot[g * hid + u] = dah[g];
        dgh_s[l * Gh + g * hid + u] = dah[g];
      }
      if (s == T_len - 1) {  // h at the last step feeds no later step: its slot holds zeros
        const auto last = p.dgh + (pos * 2 + d) * Gh;
        for (int g = 0; g < G; ++g) last[g * hid + u] = 0.f;
      }
    }
    __syncthreads();  // dgh_s complete
    if (!first && active) {
      // dh_prev[l][u] += sum_j dgh[l][j] * W_hh[j][u]; each weight loaded once for all lines.
      for (int jj = 0; jj < Gh; ++jj) {
        const float wv = jj < sgh ? to_float(T(w_s[jj * hid + u])) : to_float(w[jj * hid + u]);
        for (int j = 0; j < kLPT; ++j) {
          const int l = lg + j * line_groups;
          if (l >= L) break;
          dh[j] += dgh_s[l * Gh + jj] * wv;
        }
      }
    }
    __syncthreads();  // dgh_s free for the next step
  }
}

}  // namespace brnnseg
