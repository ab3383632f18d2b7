// Tile-wide cell steps (see cell_steps.h). The math itself is in include/brnnseg/cell/*.h, shared
// with the CUDA kernels; this file only loops over lines and units.
#include "cell_steps.h"

#include "brnnseg/cell/gru_cell.h"
#include "brnnseg/cell/lstm_cell.h"

// Float steps are built for AVX-512, AVX2 and baseline x86-64 and dispatched at load time (by CPU
// features, so AMD and Intel both get their widest clone); the rest of the extension is compiled
// for the baseline so the wheel runs anywhere.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(BRNNSEG_NO_CLONES)
#define BRNNSEG_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BRNNSEG_ISA_CLONES
#endif
#define BRNNSEG_ALWAYS_INLINE __attribute__((always_inline)) inline

namespace brnnseg::cpu {
namespace {

// "omp simd": GCC's own dependence analysis gives up on these loops (many restrict pointers in a
// target clone); the iterations are independent by construction.

template <typename T, bool kSave>
BRNNSEG_ALWAYS_INLINE void gru_fwd_impl(const StepArgs<T>& a, T* __restrict h_out, const T* __restrict h_prev) {
  const int64_t hid = a.hid;
  const T* __restrict bi = a.b_ih;
  const T* __restrict bh = a.b_hh;
  for (int64_t l = 0; l < a.L; ++l) {
    const T* __restrict gx = a.gx + l * 3 * hid;
    const T* __restrict gh = a.gh + l * 3 * hid;
    const T* __restrict hp = h_prev + l * hid;
    T* __restrict ho = h_out + l * hid;
    T* __restrict ws = kSave ? a.ws + l * 4 * hid : nullptr;
#pragma omp simd
    for (int64_t u = 0; u < hid; ++u) {
      T r, z, n;
      const T ghn = gh[2 * hid + u] + bh[2 * hid + u];
      ho[u] = gru_cell_forward(gx[u] + bi[u], gx[hid + u] + bi[hid + u], gx[2 * hid + u] + bi[2 * hid + u],
                               gh[u] + bh[u], gh[hid + u] + bh[hid + u], ghn, hp[u], r, z, n);
      if (kSave) {
        ws[u] = r;
        ws[hid + u] = z;
        ws[2 * hid + u] = n;
        ws[3 * hid + u] = ghn;
      }
    }
  }
}

template <typename T, bool kSave>
BRNNSEG_ALWAYS_INLINE void lstm_fwd_impl(const StepArgs<T>& a, T* __restrict h_out, T* __restrict c_state) {
  const int64_t hid = a.hid;
  const T* __restrict bi = a.b_ih;
  const T* __restrict bh = a.b_hh;
  for (int64_t l = 0; l < a.L; ++l) {
    const T* __restrict gx = a.gx + l * 4 * hid;
    const T* __restrict gh = a.gh + l * 4 * hid;
    T* __restrict ho = h_out + l * hid;
    T* __restrict cs = c_state + l * hid;
    T* __restrict ws = kSave ? a.ws + l * 5 * hid : nullptr;
#pragma omp simd
    for (int64_t u = 0; u < hid; ++u) {
      T i, f, g, o, c;
      ho[u] = lstm_cell_forward(gx[u] + bi[u] + gh[u] + bh[u],
                                gx[hid + u] + bi[hid + u] + gh[hid + u] + bh[hid + u],
                                gx[2 * hid + u] + bi[2 * hid + u] + gh[2 * hid + u] + bh[2 * hid + u],
                                gx[3 * hid + u] + bi[3 * hid + u] + gh[3 * hid + u] + bh[3 * hid + u],
                                cs[u], i, f, g, o, c);
      cs[u] = c;
      if (kSave) {
        ws[u] = i;
        ws[hid + u] = f;
        ws[2 * hid + u] = g;
        ws[3 * hid + u] = o;
        ws[4 * hid + u] = c;
      }
    }
  }
}

template <typename T>
BRNNSEG_ALWAYS_INLINE void gru_bwd_impl(const StepBackwardArgs<T>& a, T* __restrict dh, const T* __restrict h_prev) {
  const int64_t hid = a.hid;
  T* __restrict dbi = a.db_ih;
  T* __restrict dbh = a.db_hh;
  for (int64_t l = 0; l < a.L; ++l) {
    const T* __restrict ws = a.ws + l * 4 * hid;
    T* __restrict dgx = a.dgx + l * 3 * hid;
    T* __restrict dgh = a.dgh + l * 3 * hid;
    T* __restrict dhl = dh + l * hid;
    const T* __restrict hp = h_prev + l * hid;
#pragma omp simd
    for (int64_t u = 0; u < hid; ++u) {
      T da_r, da_z, da_n, dgh_n, dh_direct;
      gru_cell_backward(dhl[u], ws[u], ws[hid + u], ws[2 * hid + u], ws[3 * hid + u], hp[u],
                        da_r, da_z, da_n, dgh_n, dh_direct);
      dgx[u] = dgh[u] = da_r;
      dgx[hid + u] = dgh[hid + u] = da_z;
      dgx[2 * hid + u] = da_n;
      dgh[2 * hid + u] = dgh_n;
      dhl[u] = dh_direct;
      dbi[u] += da_r;
      dbi[hid + u] += da_z;
      dbi[2 * hid + u] += da_n;
      dbh[u] += da_r;
      dbh[hid + u] += da_z;
      dbh[2 * hid + u] += dgh_n;
    }
  }
}

template <typename T, bool kFirst>
BRNNSEG_ALWAYS_INLINE void lstm_bwd_impl(const StepBackwardArgs<T>& a, T* __restrict dh, T* __restrict dc,
                                         const T* __restrict c_prev, int64_t c_prev_ld) {
  const int64_t hid = a.hid;
  T* __restrict dbi = a.db_ih;
  for (int64_t l = 0; l < a.L; ++l) {
    const T* __restrict ws = a.ws + l * 5 * hid;
    const T* __restrict cp = kFirst ? nullptr : c_prev + l * c_prev_ld;
    T* __restrict dgx = a.dgx + l * 4 * hid;
    T* __restrict dhl = dh + l * hid;
    T* __restrict dcl = dc + l * hid;
#pragma omp simd
    for (int64_t u = 0; u < hid; ++u) {
      T da_i, da_f, da_g, da_o, dc_prev;
      lstm_cell_backward(dhl[u], dcl[u], ws[u], ws[hid + u], ws[2 * hid + u], ws[3 * hid + u],
                         ws[4 * hid + u], kFirst ? T(0) : cp[u], da_i, da_f, da_g, da_o, dc_prev);
      dgx[u] = da_i;
      dgx[hid + u] = da_f;
      dgx[2 * hid + u] = da_g;
      dgx[3 * hid + u] = da_o;
      dbi[u] += da_i;
      dbi[hid + u] += da_f;
      dbi[2 * hid + u] += da_g;
      dbi[3 * hid + u] += da_o;
      dhl[u] = T(0);
      dcl[u] = dc_prev;
    }
  }
}

}  // namespace

BRNNSEG_ISA_CLONES void gru_step_forward(const StepArgs<float>& a, float* h_out, const float* h_prev) {
  if (a.ws) gru_fwd_impl<float, true>(a, h_out, h_prev); else gru_fwd_impl<float, false>(a, h_out, h_prev);
}
void gru_step_forward(const StepArgs<double>& a, double* h_out, const double* h_prev) {
  if (a.ws) gru_fwd_impl<double, true>(a, h_out, h_prev); else gru_fwd_impl<double, false>(a, h_out, h_prev);
}
BRNNSEG_ISA_CLONES void lstm_step_forward(const StepArgs<float>& a, float* h_out, float* c) {
  if (a.ws) lstm_fwd_impl<float, true>(a, h_out, c); else lstm_fwd_impl<float, false>(a, h_out, c);
}
void lstm_step_forward(const StepArgs<double>& a, double* h_out, double* c) {
  if (a.ws) lstm_fwd_impl<double, true>(a, h_out, c); else lstm_fwd_impl<double, false>(a, h_out, c);
}
BRNNSEG_ISA_CLONES void gru_step_backward(const StepBackwardArgs<float>& a, float* dh, const float* h_prev) {
  gru_bwd_impl<float>(a, dh, h_prev);
}
void gru_step_backward(const StepBackwardArgs<double>& a, double* dh, const double* h_prev) {
  gru_bwd_impl<double>(a, dh, h_prev);
}
BRNNSEG_ISA_CLONES void lstm_step_backward(const StepBackwardArgs<float>& a, float* dh, float* dc,
                                           const float* c_prev, int64_t c_prev_ld) {
  if (c_prev) lstm_bwd_impl<float, false>(a, dh, dc, c_prev, c_prev_ld);
  else lstm_bwd_impl<float, true>(a, dh, dc, c_prev, c_prev_ld);
}
void lstm_step_backward(const StepBackwardArgs<double>& a, double* dh, double* dc, const double* c_prev,
                        int64_t c_prev_ld) {
  if (c_prev) lstm_bwd_impl<double, false>(a, dh, dc, c_prev, c_prev_ld);
  else lstm_bwd_impl<double, true>(a, dh, dc, c_prev, c_prev_ld);
}

}  // namespace brnnseg::cpu
