// The cell steps on AVX-512, forward and backward (see cell_steps.h): the cell's own math
// (include/brnnseg/cell/*.h, the code the CUDA kernels and the generic CPU step run) instantiated on a
// 16-lane vector type, with the activations written for the vector unit:
//   exp = 2^k p(r), k rounded by vrndscaleps (vreduceps for bfloat16 ops) and applied by vscalefps (no
//   integer exponent arithmetic);
//   sigmoid(x) = 1 / (1 + exp(-x)), tanh(x) = 2 / (1 + exp(-2x)) - 1.
// GCC's auto-vectorised generic step spends a third of its instructions on the clamps it if-converts into
// compares, masks and blends, and on pointers it spills (perf of cpu-hires LSTM: 250 instructions per 16
// units, against ~150 here, where the FMA pipes bound the step).
//
// Two accuracies of the forward (StepArgs::bf16_gates; the backward is float32-grade):
//   float32 ops: Cody-Waite reduction, the generic step's degree-6 polynomial and a true division, within
//     a few ulp of the generic step;
//   bfloat16 ops: exp2 of the reduced argument by a degree-3 fit and vrcp14ps without a Newton step:
//     relative error ~1e-4 in each gate, 40x under bfloat16's rounding of the products and of the outputs
//     (2^-9); the ops' parity tests against float64 hold it to 2x the error of PyTorch's own bfloat16.
//
// Built for AVX-512 as a whole file (the pragma comes before every include, so the cell templates
// instantiated here carry the target too); the caller runs it only where cpu/runtime/isa.h says
// AVX-512. Everything this file defines has internal linkage (the vector type lives in an anonymous
// namespace, so do the cell templates' instantiations on it), so no AVX-512 copy of an inline function
// can be chosen by the linker for code that runs on other CPUs.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma")
#define BRNNSEG_CELL_AVX512 1
#endif

#include "cpu/recurrence/cell_steps.h"

#if defined(BRNNSEG_CELL_AVX512)
#include <immintrin.h>

#include <cstdint>
// GCC 12 reports its own _mm512_max_ps / _mm512_min_ps (an undefined pass-through operand) as maybe
// uninitialised once they are inlined into the cell templates.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace brnnseg::cpu {
namespace {

// 16 float lanes. kBf16: the bfloat16-grade activations.
template <bool kBf16>
struct V {
  __m512 v;
  V() = default;
  V(__m512 x) : v(x) {}
  V(float f) : v(_mm512_set1_ps(f)) {}
};
template <bool B> inline V<B> operator+(V<B> a, V<B> b) { return _mm512_add_ps(a.v, b.v); }
template <bool B> inline V<B> operator-(V<B> a, V<B> b) { return _mm512_sub_ps(a.v, b.v); }
template <bool B> inline V<B> operator*(V<B> a, V<B> b) { return _mm512_mul_ps(a.v, b.v); }
template <bool B> inline V<B> operator/(V<B> a, V<B> b) { return _mm512_div_ps(a.v, b.v); }

// exp(s x) for a constant s. float32 ops: Cody-Waite reduction and the generic step's degree-6
// polynomial (brnnseg/cell/activations.h). bfloat16 ops: t = s x log2(e) in one product, 2^(t - round(t))
// by a degree-3 fit (relative error 7.5e-5; the product's rounding adds under 1e-5 where |t| < 126).
// The bfloat16 path has no clamp: vreduceps gives f = t - round(t) in one instruction and takes +-inf to 0,
// so k = t - f is +-inf there and vscalefps makes 2^k inf or 0, as the limits want (a NaN stays NaN).
// The clamp (max, min) is gone and vrndscaleps (two uops) became a subtraction: 7 instructions, not 9;
// cpu-med / cpu-hires bfloat16 LSTM under no_grad, 9.1-9.9 / 8.7-9.3 -> 8.3-8.9 / 7.2-7.6 ms.
template <bool kBf16>
inline __m512 vexp_scaled(__m512 x, float s) {
  if constexpr (kBf16) {
    const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(s * 1.44269504088896341f));
    const __m512 f = _mm512_reduce_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512 k = _mm512_sub_ps(t, f);
    __m512 p = _mm512_set1_ps(0.05517166480f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.24261112511f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.69326096773f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.99992805719f));
    return _mm512_scalef_ps(p, k);
  } else {
    __m512 y = _mm512_mul_ps(x, _mm512_set1_ps(s));
    y = _mm512_min_ps(_mm512_max_ps(y, _mm512_set1_ps(-88.0f)), _mm512_set1_ps(88.0f));
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(y, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693145751953125f), y);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.3981999507e-3f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
  }
}

// num / d for d >= 1 (d = 1 + exp(.)): a division, or for bfloat16 ops vrcp14ps (relative error < 2^-14).
// A Newton step instead of the division measured slower: the FMA pipes are what the step is bound by.
template <bool kBf16>
inline __m512 vdiv(__m512 num, __m512 d) {
  if constexpr (kBf16) return _mm512_mul_ps(num, _mm512_rcp14_ps(d));
  else return _mm512_div_ps(num, d);
}

// Found by argument-dependent lookup from the cell templates (a better match than brnnseg::sigmoid<T>).
template <bool B>
inline V<B> sigmoid(V<B> x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return vdiv<B>(one, _mm512_add_ps(one, vexp_scaled<B>(x.v, -1.0f)));
}
template <bool B>
inline V<B> tanh_act(V<B> x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  return _mm512_sub_ps(vdiv<B>(_mm512_set1_ps(2.0f), _mm512_add_ps(one, vexp_scaled<B>(x.v, -2.0f))), one);
}

template <bool B>
inline V<B> load(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
template <bool B>
inline void store(float* p, V<B> x, __mmask16 m) { _mm512_mask_storeu_ps(p, m, x.v); }

// Saved slots in bfloat16 (bfloat16 ops): rounded to nearest even, as c10::BFloat16 and to_bf16_bits
// (gemm_bf16.cpp) round, NaN kept quiet; integer AVX-512F/BW, so no AVX512-BF16 is needed.
inline __m256i bf16_bits(__m512 x) {
  const __m512i b = _mm512_castps_si512(x);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(b, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_or_si512(b, _mm512_set1_epi32(0x400000)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}
inline __m512 from_bf16_bits(const uint16_t* p, __mmask16 m) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p)), 16));
}

// Where the saved slots go: nowhere (not training), float32, or bfloat16 (StepArgs::ws_bf16).
enum Save { kNoSave, kSaveF32, kSaveBf16 };

template <typename Cell, bool kBf16, Save kSave>
void forward_vec(const StepArgs<float>& a, float* __restrict h_out, const float* __restrict h_prev,
                 float* __restrict c_state) {
  using Vf = V<kBf16>;
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t hid = a.hid;
  // The saved slots are written once here and read back only by the backward, long after (megabytes per
  // sweep, out of every cache by then): non-temporal stores skip the read-for-ownership of each line.
  // Whole aligned lines only: the ws rows of a tile are 64-byte aligned when hid is a multiple of 16
  // (float32) or 32 (bfloat16, whose 16 lanes are half a line: two steps of u are joined into one
  // 64-byte store, since a half-line non-temporal store can leave the line to be merged in memory).
  const bool stream = kSave == kSaveF32   ? hid % 16 == 0 && (reinterpret_cast<uintptr_t>(a.ws) & 63) == 0
                      : kSave == kSaveBf16 ? hid % 32 == 0 && (reinterpret_cast<uintptr_t>(a.ws_bf16) & 63) == 0
                                           : false;
  [[maybe_unused]] __m256i low_half[S];  // bfloat16, streamed: the slots' first 16 lanes of the line
  for (int64_t l = 0; l < a.L; ++l) {
    const float* gx = a.gx + l * G * hid;
    const float* gh = a.gh ? a.gh + l * G * hid : nullptr;  // nullptr: every gate summed into gx
    const float* hp = h_prev + l * hid;
    float* ho = h_out + l * hid;
    float* cs = Cell::kHasCellState ? c_state + l * hid : nullptr;
    float* ws = kSave == kSaveF32 ? a.ws + l * S * hid : nullptr;
    uint16_t* ws16 = kSave == kSaveBf16 ? a.ws_bf16 + l * S * hid : nullptr;
    for (int64_t u = 0; u < hid; u += 16) {
      const __mmask16 m = hid - u >= 16 ? __mmask16(0xffff) : __mmask16((1u << (hid - u)) - 1u);
      Vf ax[G], ah[G], saved[S];
      for (int g = 0; g < G; ++g) {
        ax[g] = load<kBf16>(gx + g * hid + u, m) + load<kBf16>(a.b_ih + g * hid + u, m);
        ah[g] = g < a.summed ? load<kBf16>(a.b_hh + g * hid + u, m)  // summed into gx (StepArgs)
                             : load<kBf16>(gh + g * hid + u, m) + load<kBf16>(a.b_hh + g * hid + u, m);
      }
      Vf c = Cell::kHasCellState ? load<kBf16>(cs + u, m) : Vf(0.0f);
      const Vf h = Cell::forward(ax, ah, load<kBf16>(hp + u, m), c, saved);
      store(ho + u, h, m);
      if constexpr (Cell::kHasCellState) store(cs + u, c, m);
      if constexpr (kSave == kSaveF32) {
        if (stream) {
          for (int s = 0; s < S; ++s) _mm512_stream_ps(ws + s * hid + u, saved[s].v);
        } else {
          for (int s = 0; s < S; ++s) store(ws + s * hid + u, saved[s], m);
        }
      } else if constexpr (kSave == kSaveBf16) {
        if (stream) {
          if ((u & 16) == 0) {
            for (int s = 0; s < S; ++s) low_half[s] = bf16_bits(saved[s].v);
          } else {
            for (int s = 0; s < S; ++s)
              _mm512_stream_si512(reinterpret_cast<__m512i*>(ws16 + s * hid + u - 16),
                                  _mm512_inserti64x4(_mm512_castsi256_si512(low_half[s]), bf16_bits(saved[s].v), 1));
          }
        } else {
          for (int s = 0; s < S; ++s) _mm256_mask_storeu_epi16(ws16 + s * hid + u, m, bf16_bits(saved[s].v));
        }
      }
    }
  }
  if constexpr (kSave != kNoSave) {
    if (stream) _mm_sfence();  // the streamed lines are ordered before anything after the step
  }
}

// The backward step: the cell's backward on vectors (float32 accuracy; only the LSTM has an activation,
// tanh of the saved cell state). As the generic step: dgx (and dgh where the cell splits) written, the
// bias gradients accumulated, dh replaced by the part that bypasses W_hh, dc by dc_prev.
// The saved slots of line l + kAhead are prefetched while line l is computed. The hardware prefetchers
// did not keep up: perf put 75-80 % of the step's samples on the first load of each line's slots, and
// halving their bytes (bfloat16 slots) did not change the time, so the loads wait on latency, not on
// bandwidth. With the prefetch, one sweep's backward at cpu-hires: LSTM bf16 11.6 -> 10.3 ms, GRU bf16
// 9.7 -> 8.3, LSTM f32 19.1 -> 15.7; cpu-med LSTM bf16 14.0 -> 12.5; cpu-wide (32 lines a tile)
// unchanged. 2 and 8 lines ahead measured the same as 4.
constexpr int64_t kAhead = 4;
template <typename Cell, bool kFirst, bool kSaved16>
void backward_vec(const StepBackwardArgs<float>& a, float* __restrict dh, float* __restrict dc,
                  const float* __restrict h_prev, const float* __restrict c_prev, int64_t c_prev_ld) {
  using Vf = V<false>;
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  constexpr bool kSplit = Cell::kSplitRecurrentGrad;
  const int64_t hid = a.hid;
  for (int64_t l = 0; l < a.L; ++l) {
    const float* ws = kSaved16 ? nullptr : a.ws + l * S * hid;
    const uint16_t* ws16 = kSaved16 ? a.ws_bf16 + l * S * hid : nullptr;
    if (l + kAhead < a.L) {
      const char* next = kSaved16 ? reinterpret_cast<const char*>(ws16 + kAhead * S * hid)
                                  : reinterpret_cast<const char*>(ws + kAhead * S * hid);
      const int64_t bytes = S * hid * (kSaved16 ? 2 : 4);
      for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
    }
    const float* hp = h_prev + l * hid;
    const float* cp = (Cell::kHasCellState && !kFirst) ? c_prev + l * c_prev_ld : nullptr;
    float* dgx = a.dgx + l * G * hid;
    float* dgh = kSplit ? a.dgh + l * G * hid : nullptr;
    float* dhl = dh + l * hid;
    float* dcl = Cell::kHasCellState ? dc + l * hid : nullptr;
    for (int64_t u = 0; u < hid; u += 16) {
      const __mmask16 m = hid - u >= 16 ? __mmask16(0xffff) : __mmask16((1u << (hid - u)) - 1u);
      Vf saved[S], dax[G], dah[G], dh_direct;
      if constexpr (kSaved16) {
        for (int s = 0; s < S; ++s) saved[s] = from_bf16_bits(ws16 + s * hid + u, m);
      } else {
        for (int s = 0; s < S; ++s) saved[s] = load<false>(ws + s * hid + u, m);
      }
      Vf dcv = Cell::kHasCellState ? load<false>(dcl + u, m) : Vf(0.0f);
      const Vf cpv = (Cell::kHasCellState && !kFirst) ? load<false>(cp + u, m) : Vf(0.0f);
      Cell::backward(load<false>(dhl + u, m), dcv, saved, load<false>(hp + u, m), cpv, dax, dah, dh_direct);
      for (int g = 0; g < G; ++g) {
        store(dgx + g * hid + u, dax[g], m);
        store(a.db_ih + g * hid + u, load<false>(a.db_ih + g * hid + u, m) + dax[g], m);
        if constexpr (kSplit) {
          store(dgh + g * hid + u, dah[g], m);
          store(a.db_hh + g * hid + u, load<false>(a.db_hh + g * hid + u, m) + dah[g], m);
        }
      }
      store(dhl + u, dh_direct, m);
      if constexpr (Cell::kHasCellState) store(dcl + u, dcv, m);
    }
  }
}

template <typename Cell>
void forward_dispatch(const StepArgs<float>& a, float* h_out, const float* h_prev, float* c) {
  if (a.bf16_gates) {
    if (a.ws_bf16) forward_vec<Cell, true, kSaveBf16>(a, h_out, h_prev, c);
    else if (a.ws) forward_vec<Cell, true, kSaveF32>(a, h_out, h_prev, c);
    else forward_vec<Cell, true, kNoSave>(a, h_out, h_prev, c);
  } else {
    if (a.ws_bf16) forward_vec<Cell, false, kSaveBf16>(a, h_out, h_prev, c);
    else if (a.ws) forward_vec<Cell, false, kSaveF32>(a, h_out, h_prev, c);
    else forward_vec<Cell, false, kNoSave>(a, h_out, h_prev, c);
  }
}

template <typename Cell>
void backward_dispatch(const StepBackwardArgs<float>& a, float* dh, float* dc, const float* h_prev,
                       const float* c_prev, int64_t c_prev_ld) {
  if (a.ws_bf16) {
    if (c_prev) backward_vec<Cell, false, true>(a, dh, dc, h_prev, c_prev, c_prev_ld);
    else backward_vec<Cell, true, true>(a, dh, dc, h_prev, c_prev, c_prev_ld);
  } else {
    if (c_prev) backward_vec<Cell, false, false>(a, dh, dc, h_prev, c_prev, c_prev_ld);
    else backward_vec<Cell, true, false>(a, dh, dc, h_prev, c_prev, c_prev_ld);
  }
}

}  // namespace

#define BRNNSEG_DEFINE_AVX512_STEP(C)                                                                       \
  void step_forward_avx512(C, const StepArgs<float>& a, float* h_out, const float* h_prev, float* c) {     \
    forward_dispatch<C>(a, h_out, h_prev, c);                                                              \
  }                                                                                                        \
  void step_backward_avx512(C, const StepBackwardArgs<float>& a, float* dh, float* dc, const float* h_prev, \
                            const float* c_prev, int64_t c_prev_ld) {                                      \
    backward_dispatch<C>(a, dh, dc, h_prev, c_prev, c_prev_ld);                                            \
  }
BRNNSEG_FOR_EACH_VECTOR_CELL(BRNNSEG_DEFINE_AVX512_STEP)
#undef BRNNSEG_DEFINE_AVX512_STEP

bool avx512_steps_built() { return true; }

}  // namespace brnnseg::cpu

#else  // not GCC on x86-64: empty definitions, never called (avx512_steps_built() is false)

namespace brnnseg::cpu {
bool avx512_steps_built() { return false; }
#define BRNNSEG_DEFINE_AVX512_STEP(C)                                                 \
  void step_forward_avx512(C, const StepArgs<float>&, float*, const float*, float*) {} \
  void step_backward_avx512(C, const StepBackwardArgs<float>&, float*, float*, const float*, const float*, int64_t) {}
BRNNSEG_FOR_EACH_VECTOR_CELL(BRNNSEG_DEFINE_AVX512_STEP)
#undef BRNNSEG_DEFINE_AVX512_STEP
}  // namespace brnnseg::cpu

#endif
