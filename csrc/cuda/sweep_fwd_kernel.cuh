// The persistent forward kernel of the line sweeps, templated on the cell (include/brnnseg/cell/).
// One launch runs a whole sweep: CTA (tile, direction) owns `tile` lines for all time steps; W_hh stays
// in shared memory (or is read through the cache when it does not fit); hidden states stay in shared
// memory between steps; one __syncthreads per step. The cell math is the cell's header, the same the
// CPU kernels use.
//
// Thread layout (CtaLayout, sweep_common.cuh): thread t owns hidden unit u = t % units_pad (idle when
// u >= hid) of lines lg, lg + line_groups, ... (at most kLPT lines).
#pragma once
#include "cuda/sweep_common.cuh"

namespace brnnseg {

template <typename T, typename Cell, int kLPT>
// __launch_bounds__(max threads, min 1 CTA per SM): stated explicitly, ptxas no longer squeezes small
// cells (the Elman cell) into 64 registers with a spill.
__global__ void __launch_bounds__(kMaxThreadsPerCta, 1) sweep_fwd_kernel(SweepBatch<SweepFwdParams<T>> batch) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  if (int(blockIdx.x) >= batch.blocks[blockIdx.z]) return;  // uniform per CTA: before any barrier
  const SweepFwdParams<T>& p = batch.sweep[blockIdx.z];
  const SweepGeometry& geo = p.geo;
  const int hid = p.hid, Gh = G * hid;
  const int d = blockIdx.y;
  const int64_t lines = geo.lines(), T_len = geo.steps();
  const CtaLayout cta(geo, p.tile, hid);
  const int64_t l0 = cta.l0;
  const int L = cta.L, u = cta.u, lg = cta.lg, line_groups = cta.line_groups;
  const bool active = cta.active;

  BRNNSEG_DYNAMIC_SMEM(unsigned char, smem);
  const auto w_t = p.w_hh_t + int64_t(d) * hid * Gh;  // global, [k][g*hid + u]
  const int sg = p.smem_gates, sgh = sg * hid;      // shared: the first sg gates, [k][g*hid + u]
  const smem_ptr<T> w_s = smem_at<T>(smem, 0);
  const smem_ptr<float> h_s = smem_at<float>(smem, smem_weight_bytes<T>(hid, sg));
  for (int i = threadIdx.x; i < sgh * hid; i += blockDim.x) w_s[i] = w_t[(i / sgh) * Gh + i % sgh];
  for (int i = threadIdx.x; i < 2 * p.tile * hid; i += blockDim.x) h_s[i] = 0.f;

  float b_x[G], b_h[G];
  for (int g = 0; g < G; ++g) {
    b_x[g] = active ? p.b_ih[d * Gh + g * hid + u] : 0.f;
    b_h[g] = active ? p.b_hh[d * Gh + g * hid + u] : 0.f;
  }
  float c_state[kLPT];
  for (int j = 0; j < kLPT; ++j) c_state[j] = 0.f;
  __syncthreads();

  for (int64_t s = 0; s < T_len; ++s) {
    const int64_t t = step_time(d, s, T_len);
    const smem_ptr<const float> h_prev = h_s + (s & 1) * p.tile * hid;
    const smem_ptr<float> h_next = h_s + ((s + 1) & 1) * p.tile * hid;
    float acc[kLPT][G];
    for (int j = 0; j < kLPT; ++j)
      for (int g = 0; g < G; ++g) acc[j][g] = 0.f;
    if (active && s > 0) {
      // W_hh h_prev for this thread's unit and lines; each weight is loaded once for all lines.
      for (int k = 0; k < hid; ++k) {
        float wv[G];
        for (int g = 0; g < G; ++g)  // g < sg is uniform across the CTA: no divergence
          wv[g] = g < sg ? to_float(T(w_s[k * sgh + g * hid + u])) : to_float(w_t[k * Gh + g * hid + u]);
        for (int j = 0; j < kLPT; ++j) {
          const int l = lg + j * line_groups;
          if (l >= L) break;
          const float hv = h_prev[l * hid + k];
          for (int g = 0; g < G; ++g) acc[j][g] += wv[g] * hv;
        }
      }
    }
    for (int j = 0; j < kLPT && active; ++j) {
      const int l = lg + j * line_groups;
      if (l >= L) break;
      const int64_t line = l0 + l;
      const auto gx = p.gx + (geo.pos(line, t) * 2 + d) * Gh;
      float ax[G], ah[G], saved[S];
      for (int g = 0; g < G; ++g) {
        ax[g] = to_float(gx[g * hid + u]) + b_x[g];
        ah[g] = acc[j][g] + b_h[g];
      }
      float c = c_state[j];
      const float h = Cell::forward(ax, ah, float(h_prev[l * hid + u]), c, saved);
      if constexpr (Cell::kHasCellState) c_state[j] = c;
      if (p.ws) {
        const auto ws = p.ws + ((int64_t(d) * T_len + t) * lines + line) * (S * hid);
        for (int i = 0; i < S; ++i) ws[i * hid + u] = saved[i];
      }
      h_next[l * hid + u] = h;
      p.y[geo.strided_offset(line, t, p.y_sN, p.y_sH, p.y_sW) + (int64_t(d) * hid + u) * p.y_sC] = static_cast<T>(h);
    }
    __syncthreads();  // h_next complete before any thread reads it as h_prev
  }
}

}  // namespace brnnseg
