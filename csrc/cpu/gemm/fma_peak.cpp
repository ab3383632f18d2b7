// FMA peak probe (fma_peak.h). Each thread runs 16 independent FMA chains -- enough to cover the
// FMA latency on the pipes of current x86 cores -- so the loop runs at the issue rate, the ceiling
// no GEMM can beat. The GEMM and the kernels' GFLOP/s are reported against it by the benchmarks.
#include "cpu/gemm/fma_peak.h"
#include "cpu/gemm/amx_config.h"
#include "cpu/runtime/isa.h"

#include <ATen/Parallel.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>

namespace brnnseg::cpu {
namespace {

constexpr int kChains = 16;
// Multiply-adds per iteration and chain of the AMX loop, as peak_gflops counts them (width x kChains):
// 4 tdpbf16ps x 8,192 = 32,768.
constexpr int kAmxWidth = 4 * 16 * 16 * 32 / kChains;

#if defined(__x86_64__) && defined(__GNUC__)
typedef float F32x16 __attribute__((vector_size(64)));
typedef float F32x8 __attribute__((vector_size(32)));

// The loop, once for both widths; inlined into a caller compiled for the ISA, where GCC contracts
// acc * a + b into one FMA. Returns a value that depends on every chain, which start from a
// run-time seed (g_sink below).
template <typename V, int kLanes>
__attribute__((always_inline)) inline float chains(int64_t iters, float seed) {
  V acc[kChains];
  for (int i = 0; i < kChains; ++i)
    for (int j = 0; j < kLanes; ++j) acc[i][j] = seed + 1e-3f * i;
  V a, b;
  for (int j = 0; j < kLanes; ++j) a[j] = 0.999999f, b[j] = 1e-6f;
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = acc[i] * a + b;
  }
  float s = 0;
  for (int i = 0; i < kChains; ++i)
    for (int j = 0; j < kLanes; ++j) s += acc[i][j];
  return s;
}

__attribute__((target("avx512f"))) float chains_avx512(int64_t iters, float seed) {
  return chains<F32x16, 16>(iters, seed);
}
__attribute__((target("avx2,fma"))) float chains_avx2(int64_t iters, float seed) {
  return chains<F32x8, 8>(iters, seed);
}

// Vector width in floats, and the loop for it; 0 when the CPU has neither.
int lanes() {
  switch (cpu_isa()) {
    case Isa::kAvx512: return 16;
    case Isa::kAvx2: return 8;
    default: return 0;
  }
}
float run_chains(int width, int64_t iters, float seed) {
  return width == 16 ? chains_avx512(iters, seed) : chains_avx2(iters, seed);
}
// vdpbf16ps chains: 32 bfloat16 products summed into 16 float32 lanes per instruction.
__attribute__((target("avx512f,avx512bf16"))) float chains_bf16(int64_t iters, float seed) {
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(seed + 1e-3f * i);
  const __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.5f));
  const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-6f), _mm512_set1_ps(1e-6f));
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 16
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  }
  float s = 0;
  for (int i = 0; i < kChains; ++i) s += _mm512_reduce_add_ps(acc[i]);
  return s;
}
// tdpbf16ps chains on AMX: four accumulator tiles (16 x 16 float32), each += a 16 x 32 by 32 x 16 bfloat16
// product per instruction (8,192 multiply-adds), fed by two A and two B tiles loaded once: the tiles'
// issue rate with no memory traffic, as the GEMM's 2 x 2 blocks use them (gemm_bf16.cpp).
__attribute__((target("amx-tile,amx-bf16"))) float chains_amx(int64_t iters, float seed) {
  const AmxConfig cfg;
  alignas(64) static thread_local uint16_t ops[16 * 32];
  alignas(64) static thread_local float out[4][16 * 16];
  for (int i = 0; i < 16 * 32; ++i) ops[i] = 0x3f00;  // 0.5 in bfloat16
  _tile_loadconfig(&cfg);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ops, 64);
  _tile_loadd(5, ops, 64);
  _tile_loadd(6, ops, 64);
  _tile_loadd(7, ops, 64);
  for (int64_t it = 0; it < iters; ++it) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out[0], 64);
  _tile_stored(1, out[1], 64);
  _tile_stored(2, out[2], 64);
  _tile_stored(3, out[3], 64);
  _tile_release();
  return seed + out[0][0] + out[1][17] + out[2][34] + out[3][255];
}
#else
int lanes() { return 0; }
float run_chains(int, int64_t, float) { return 0; }
float chains_bf16(int64_t, float) { return 0; }
float chains_amx(int64_t, float) { return 0; }
#endif

// The chains' results land here and their seeds come from here: a volatile the compiler can
// neither predict nor skip, so no chain is folded or dropped.
volatile float g_sink = 0.0f;

// Seconds for `iters` iterations on every thread at once (the slowest thread counts); width 32: the
// bfloat16 dot-product chains; kAmxWidth: the tile chains.
double timed_run(int width, int64_t iters) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  const auto t0 = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      g_sink = width == kAmxWidth ? chains_amx(iters, 1.0f + g_sink * 1e-30f)
               : width == 32      ? chains_bf16(iters, 1.0f + g_sink * 1e-30f)
                                  : run_chains(width, iters, 1.0f + g_sink * 1e-30f);
  });
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Products per instruction and chain: `width`. Calibrate the iteration count to about `seconds`,
// then keep the best of three runs.
double peak_gflops(int width, double seconds) {
  if (width == 0 || seconds <= 0) return 0.0;
  int64_t iters = 1 << 16;
  double t = timed_run(width, iters);
  iters = std::max<int64_t>(iters, static_cast<int64_t>(iters * (seconds / 3) / std::max(t, 1e-6)));
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    t = timed_run(width, iters);
    const double flops = 2.0 * width * kChains * static_cast<double>(iters) * std::max(1, at::get_num_threads());
    best = std::max(best, flops / t / 1e9);
  }
  return best;
}

}  // namespace

double fma_peak_gflops(double seconds) { return peak_gflops(lanes(), seconds); }

double bf16_dot_peak_gflops(double seconds) {
  switch (cpu_bf16_isa()) {
    case Bf16Isa::kAmxBf16: return peak_gflops(kAmxWidth, seconds);
    case Bf16Isa::kAvx512Bf16: return peak_gflops(32, seconds);
    default: return 0.0;
  }
}

}  // namespace brnnseg::cpu
