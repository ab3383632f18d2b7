// Persistent recurrence kernels of the line sweeps. One launch runs a whole sweep: CTA (tile,
// direction) owns `tile` lines for all time steps; W_hh stays in shared memory (or is read through
// the cache when it does not fit); hidden states stay in shared memory between steps; one
// __syncthreads per forward step, two per backward step. The cell math is the same header the CPU
// kernels use (include/brnnseg/cell/*.h).
//
// Thread layout: blockDim.x = kUnitsPad * line_groups; thread t owns hidden unit u = t % kUnitsPad
// (idle when u >= hid) of lines lg, lg + line_groups, ... (at most kLPT lines).
//
// Compiled by nvcc (csrc/cuda/line_scan_cuda.cu) and by g++ under simt_sim.h (csrc/sim/).
#pragma once
#include <cstdint>

#include "brnnseg/cell/gru_cell.h"
#include "brnnseg/cell/lstm_cell.h"
#include "brnnseg/params.h"
#include "line_scan_plan.h"

#if defined(__CUDACC__)
// Shared memory is reached through smem_ptr<T> / smem_at<T>(base, byte offset): plain pointers under
// nvcc, checked pointers under the simulator (simt_sim.h: bounds, unwritten reads).
#define BRNNSEG_DYNAMIC_SMEM(type, name) \
  extern __shared__ __align__(16) unsigned char brnnseg_smem_raw[]; \
  type* name = reinterpret_cast<type*>(brnnseg_smem_raw)
template <typename T>
using smem_ptr = T*;
template <typename T>
__device__ __forceinline__ T* smem_at(unsigned char* base, size_t byte_offset) {
  return reinterpret_cast<T*>(base + byte_offset);
}
#endif

namespace brnnseg {

template <typename T>
__device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }

// Which lines and unit a thread owns: blockDim.x = units_pad * line_groups; thread t owns hidden
// unit u = t % units_pad (idle when u >= hid) of tile lines lg, lg + line_groups, ...
struct CtaLayout {
  int64_t l0;        // first line of this CTA's tile
  int L;             // lines in the tile (the last tile may be partial)
  int u, lg, line_groups;
  bool active;
  __device__ __forceinline__ CtaLayout(const SweepGeometry& geo, int tile, int hid) {
    const int64_t lines = geo.lines();
    l0 = int64_t(blockIdx.x) * tile;
    L = static_cast<int>(lines - l0 < tile ? lines - l0 : tile);
    const int units_pad = (hid + 31) / 32 * 32;
    u = threadIdx.x % units_pad;
    lg = threadIdx.x / units_pad;
    line_groups = blockDim.x / units_pad;
    active = u < hid;
  }
};

template <typename T, int G, int kLPT>
__global__ void __launch_bounds__(kMaxThreadsPerCta) line_scan_fwd_kernel(SweepBatch<SweepFwdParams<T>> batch) {
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
  const T* w_t = p.w_hh_t + int64_t(d) * hid * Gh;  // global, [k][g*hid + u]
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

  constexpr int S = G == 3 ? GruCell::kSaved : LstmCell::kSaved;
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
      const T* gx = p.gx + (geo.pos(line, t) * 2 + d) * Gh;
      float* ws = p.ws ? p.ws + ((int64_t(d) * T_len + t) * lines + line) * (S * hid) : nullptr;
      float h;
      if constexpr (G == 3) {
        float r, z, n;
        const float ghn = acc[j][2] + b_h[2];
        h = gru_cell_forward(to_float(gx[u]) + b_x[0], to_float(gx[hid + u]) + b_x[1],
                             to_float(gx[2 * hid + u]) + b_x[2], acc[j][0] + b_h[0], acc[j][1] + b_h[1], ghn,
                             float(h_prev[l * hid + u]), r, z, n);
        if (ws) {
          ws[u] = r;
          ws[hid + u] = z;
          ws[2 * hid + u] = n;
          ws[3 * hid + u] = ghn;
        }
      } else {
        float gi, gf, gg, go, c;
        h = lstm_cell_forward(to_float(gx[u]) + b_x[0] + acc[j][0] + b_h[0],
                              to_float(gx[hid + u]) + b_x[1] + acc[j][1] + b_h[1],
                              to_float(gx[2 * hid + u]) + b_x[2] + acc[j][2] + b_h[2],
                              to_float(gx[3 * hid + u]) + b_x[3] + acc[j][3] + b_h[3], c_state[j], gi, gf, gg,
                              go, c);
        c_state[j] = c;
        if (ws) {
          ws[u] = gi;
          ws[hid + u] = gf;
          ws[2 * hid + u] = gg;
          ws[3 * hid + u] = go;
          ws[4 * hid + u] = c;
        }
      }
      h_next[l * hid + u] = h;
      p.y[geo.strided_offset(line, t, p.y_sN, p.y_sH, p.y_sW) + (int64_t(d) * hid + u) * p.y_sC] = static_cast<T>(h);
    }
    __syncthreads();  // h_next complete before any thread reads it as h_prev
  }
}

template <typename T, int G, int kLPT>
__global__ void __launch_bounds__(kMaxThreadsPerCta) line_scan_bwd_kernel(SweepBatch<SweepBwdParams<T>> batch) {
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
  constexpr int S = G == 3 ? GruCell::kSaved : LstmCell::kSaved;

  BRNNSEG_DYNAMIC_SMEM(unsigned char, smem);
  const T* w = p.w_hh + int64_t(d) * Gh * hid;  // global, [j][k]
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
      const float* ws = p.ws + ((int64_t(d) * T_len + t) * lines + line) * (S * hid);
      const float dh_in = dh[j] + to_float(p.grad_y[geo.strided_offset(line, t, p.g_sN, p.g_sH, p.g_sW) +
                                                    (int64_t(d) * hid + u) * p.g_sC]);
      float da[G], dgh_n = 0.f;
      if constexpr (G == 3) {
        const float h_prev = first ? 0.f
            : to_float(p.y[geo.strided_offset(line, t_prev, p.y_sN, p.y_sH, p.y_sW) + (int64_t(d) * hid + u) * p.y_sC]);
        float direct;
        gru_cell_backward(dh_in, ws[u], ws[hid + u], ws[2 * hid + u], ws[3 * hid + u], h_prev, da[0], da[1], da[2],
                          dgh_n, direct);
        dh[j] = direct;
      } else {
        const float c_prev = first ? 0.f
            : p.ws[((int64_t(d) * T_len + t_prev) * lines + line) * (S * hid) + 4 * hid + u];
        float dc_prev;
        lstm_cell_backward(dh_in, dc[j], ws[u], ws[hid + u], ws[2 * hid + u], ws[3 * hid + u], ws[4 * hid + u],
                           c_prev, da[0], da[1], da[2], da[3], dc_prev);
        dc[j] = dc_prev;
        dh[j] = 0.f;
      }
      float* dgx = p.dgx + (pos * 2 + d) * Gh;
      float* slot = first ? p.dgh_first + (int64_t(d) * lines + line) * Gh
                          : p.dgh + ((pos + prev_offset) * 2 + d) * Gh;
      for (int g = 0; g < G; ++g) {
        const float rec = (G == 3 && g == 2) ? dgh_n : da[g];
        dgx[g * hid + u] = da[g];
        slot[g * hid + u] = rec;
        dgh_s[l * Gh + g * hid + u] = rec;
      }
      if (s == T_len - 1) {  // h at the last step feeds no later step: its slot holds zeros
        float* last = p.dgh + (pos * 2 + d) * Gh;
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
