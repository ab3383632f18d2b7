// Tile-wide cell steps (see cell_steps.h). The math itself is the cell's header
// (include/brnnseg/cell/<name>.h), shared with the CUDA kernels; this file only loops over lines and
// units, once for every cell of BRNNSEG_FOR_EACH_CELL.
#include "cpu/recurrence/cell_steps.h"

#include <type_traits>
#include <vector>

#include "cpu/gemm/gemm_bf16.h"
#include "cpu/runtime/isa.h"

// Float steps are built for AVX-512, AVX2 and baseline x86-64 and dispatched at load time (by CPU
// features, so AMD and Intel both get their widest clone); the rest of the extension is compiled
// for the baseline so the wheel runs anywhere. The ISA levels are those of cpu/runtime/isa.h, which
// the rest of the CPU code asks (target_clones resolves them itself, from the same CPUID bits).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(BRNNSEG_NO_CLONES)
#define BRNNSEG_ISA_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BRNNSEG_ISA_CLONES
#endif
#define BRNNSEG_ALWAYS_INLINE __attribute__((always_inline)) inline

namespace brnnseg::cpu {
namespace {

// "GCC ivdep": GCC's own dependence analysis gives up on these loops (many restrict pointers in a
// target clone); the iterations are independent by construction. Not "omp simd": it privatises the
// per-unit arrays (ax, ah, saved, ...) into per-lane arrays and the loop is then not vectorised;
// without it they become scalars (the loops over gates and slots are fully unrolled first).

template <typename Cell, typename T, bool kSave, bool kSummed>
BRNNSEG_ALWAYS_INLINE void forward_impl(const StepArgs<T>& a, T* __restrict h_out, const T* __restrict h_prev,
                                        T* __restrict c_state) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t hid = a.hid;
  const T* __restrict bi = a.b_ih;
  const T* __restrict bh = a.b_hh;
  for (int64_t l = 0; l < a.L; ++l) {
    const T* __restrict gx = a.gx + l * G * hid;
    const T* __restrict gh = a.gh ? a.gh + l * G * hid : nullptr;
    const T* __restrict hp = h_prev + l * hid;
    T* __restrict ho = h_out + l * hid;
    T* __restrict cs = Cell::kHasCellState ? c_state + l * hid : nullptr;
    T* __restrict ws = kSave ? a.ws + l * S * hid : nullptr;
#pragma GCC ivdep
    for (int64_t u = 0; u < hid; ++u) {
      T ax[G], ah[G], saved[S];
      for (int g = 0; g < G; ++g) {
        ax[g] = gx[g * hid + u] + bi[g * hid + u];
        ah[g] = kSummed && g < a.summed ? bh[g * hid + u] : gh[g * hid + u] + bh[g * hid + u];
      }
      T c = Cell::kHasCellState ? cs[u] : T(0);
      ho[u] = Cell::forward(ax, ah, hp[u], c, saved);
      if constexpr (Cell::kHasCellState) cs[u] = c;
      if constexpr (kSave)
        for (int s = 0; s < S; ++s) ws[s * hid + u] = saved[s];
    }
  }
}

template <typename Cell, typename T, bool kFirst>
BRNNSEG_ALWAYS_INLINE void backward_impl(const StepBackwardArgs<T>& a, T* __restrict dh, T* __restrict dc,
                                         const T* __restrict h_prev, const T* __restrict c_prev, int64_t c_prev_ld) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  constexpr bool kSplit = Cell::kSplitRecurrentGrad;
  const int64_t hid = a.hid;
  T* __restrict dbi = a.db_ih;
  T* __restrict dbh = a.db_hh;
  for (int64_t l = 0; l < a.L; ++l) {
    const T* __restrict ws = a.ws + l * S * hid;
    const T* __restrict hp = h_prev + l * hid;
    const T* __restrict cp = (Cell::kHasCellState && !kFirst) ? c_prev + l * c_prev_ld : nullptr;
    T* __restrict dgx = a.dgx + l * G * hid;
    T* __restrict dgh = kSplit ? a.dgh + l * G * hid : nullptr;
    T* __restrict dhl = dh + l * hid;
    T* __restrict dcl = Cell::kHasCellState ? dc + l * hid : nullptr;
#pragma GCC ivdep
    for (int64_t u = 0; u < hid; ++u) {
      T saved[S], dax[G], dah[G], dh_direct;
      for (int s = 0; s < S; ++s) saved[s] = ws[s * hid + u];
      T dcv = Cell::kHasCellState ? dcl[u] : T(0);
      const T cpv = (Cell::kHasCellState && !kFirst) ? cp[u] : T(0);
      Cell::backward(dhl[u], dcv, saved, hp[u], cpv, dax, dah, dh_direct);
      for (int g = 0; g < G; ++g) {
        dgx[g * hid + u] = dax[g];
        dbi[g * hid + u] += dax[g];
        if constexpr (kSplit) {
          dgh[g * hid + u] = dah[g];
          dbh[g * hid + u] += dah[g];
        }
      }
      dhl[u] = dh_direct;
      if constexpr (Cell::kHasCellState) dcl[u] = dcv;
    }
  }
}

template <typename Cell, typename T>
BRNNSEG_ALWAYS_INLINE void forward_dispatch(const StepArgs<T>& a, T* h_out, const T* h_prev, T* c) {
  if (a.summed > 0) {  // gates whose gx holds both products (StepArgs::summed)
    if (a.ws) forward_impl<Cell, T, true, true>(a, h_out, h_prev, c);
    else forward_impl<Cell, T, false, true>(a, h_out, h_prev, c);
    return;
  }
  if (a.ws) forward_impl<Cell, T, true, false>(a, h_out, h_prev, c);
  else forward_impl<Cell, T, false, false>(a, h_out, h_prev, c);
}

template <typename Cell, typename T>
BRNNSEG_ALWAYS_INLINE void backward_dispatch(const StepBackwardArgs<T>& a, T* dh, T* dc, const T* h_prev,
                                             const T* c_prev, int64_t c_prev_ld) {
  if (c_prev) backward_impl<Cell, T, false>(a, dh, dc, h_prev, c_prev, c_prev_ld);
  else backward_impl<Cell, T, true>(a, dh, dc, h_prev, c_prev, c_prev_ld);
}

}  // namespace

// The float steps: the generic ones (target clones), or the AVX-512 ones (cell_steps_avx512.cpp) for the
// cells they cover where cpu/runtime/isa.h says AVX-512.
#define BRNNSEG_DEFINE_GENERIC_FORWARD(C)                                                                    \
  BRNNSEG_ISA_CLONES void step_forward_generic(C, const StepArgs<float>& a, float* h_out, const float* h_prev, \
                                               float* c) {                                                      \
    forward_dispatch<C>(a, h_out, h_prev, c);                                                                 \
  }
BRNNSEG_FOR_EACH_CELL(BRNNSEG_DEFINE_GENERIC_FORWARD)
#undef BRNNSEG_DEFINE_GENERIC_FORWARD
#define BRNNSEG_DEFINE_GENERIC_BACKWARD(C)                                                                   \
  BRNNSEG_ISA_CLONES void step_backward_generic(C, const StepBackwardArgs<float>& a, float* dh, float* dc,   \
                                                const float* h_prev, const float* c_prev, int64_t c_prev_ld) { \
    backward_dispatch<C>(a, dh, dc, h_prev, c_prev, c_prev_ld);                                              \
  }
BRNNSEG_FOR_EACH_CELL(BRNNSEG_DEFINE_GENERIC_BACKWARD)
#undef BRNNSEG_DEFINE_GENERIC_BACKWARD

namespace {
#define BRNNSEG_IS_VECTOR_CELL(V) std::is_same_v<C, V> ||
template <typename C>
constexpr bool kVectorCell = BRNNSEG_FOR_EACH_VECTOR_CELL(BRNNSEG_IS_VECTOR_CELL) false;
#undef BRNNSEG_IS_VECTOR_CELL

// Decided once: the CPU (as capped by BRNNSEG_CPU_ISA) runs AVX-512 and this build has the steps.
bool use_avx512_steps() {
  static const bool use = cpu_isa() == Isa::kAvx512 && avx512_steps_built();
  return use;
}

// Saved slots in bfloat16 (StepArgs::ws_bf16) on the generic step: the step saves into (or reads from)
// this thread's float32 rows, converted after (before) it. The AVX-512 steps convert in registers.
float* saved_rows(int64_t n) {
  thread_local std::vector<float> rows;
  if (static_cast<int64_t>(rows.size()) < n) rows.resize(n);
  return rows.data();
}

template <typename C>
void float_forward(const StepArgs<float>& a, float* h_out, const float* h_prev, float* c) {
  if constexpr (kVectorCell<C>) {
    if (use_avx512_steps()) return step_forward_avx512(C{}, a, h_out, h_prev, c);
  }
  if (a.ws_bf16 == nullptr) return step_forward_generic(C{}, a, h_out, h_prev, c);
  const int64_t n = a.L * C::kSaved * a.hid;
  StepArgs<float> f = a;
  f.ws = saved_rows(n);
  f.ws_bf16 = nullptr;
  step_forward_generic(C{}, f, h_out, h_prev, c);
  bf16_from_float(f.ws, a.ws_bf16, n);
}

template <typename C>
void float_backward(const StepBackwardArgs<float>& a, float* dh, float* dc, const float* h_prev, const float* c_prev,
                    int64_t c_prev_ld) {
  if constexpr (kVectorCell<C>) {
    if (use_avx512_steps()) return step_backward_avx512(C{}, a, dh, dc, h_prev, c_prev, c_prev_ld);
  }
  if (a.ws_bf16 == nullptr) return step_backward_generic(C{}, a, dh, dc, h_prev, c_prev, c_prev_ld);
  const int64_t n = a.L * C::kSaved * a.hid;
  float* rows = saved_rows(n);
  float_from_bf16(a.ws_bf16, rows, n, false);
  StepBackwardArgs<float> f = a;
  f.ws = rows;
  f.ws_bf16 = nullptr;
  step_backward_generic(C{}, f, dh, dc, h_prev, c_prev, c_prev_ld);
}
}  // namespace

#define BRNNSEG_DEFINE_CELL_STEPS(C)                                                                           \
  void step_forward(C, const StepArgs<float>& a, float* h_out, const float* h_prev, float* c) {                \
    float_forward<C>(a, h_out, h_prev, c);                                                                     \
  }                                                                                                            \
  void step_forward(C, const StepArgs<double>& a, double* h_out, const double* h_prev, double* c) {            \
    forward_dispatch<C>(a, h_out, h_prev, c);                                                                  \
  }                                                                                                            \
  void step_backward(C, const StepBackwardArgs<float>& a, float* dh, float* dc, const float* h_prev,           \
                     const float* c_prev, int64_t c_prev_ld) {                                                 \
    float_backward<C>(a, dh, dc, h_prev, c_prev, c_prev_ld);                                                   \
  }                                                                                                            \
  void step_backward(C, const StepBackwardArgs<double>& a, double* dh, double* dc, const double* h_prev,       \
                     const double* c_prev, int64_t c_prev_ld) {                                                \
    backward_dispatch<C>(a, dh, dc, h_prev, c_prev, c_prev_ld);                                                \
  }
BRNNSEG_FOR_EACH_CELL(BRNNSEG_DEFINE_CELL_STEPS)
#undef BRNNSEG_DEFINE_CELL_STEPS

}  // namespace brnnseg::cpu
