// The one place the CPU kernels ask which vector ISA the machine has. The extension is compiled for
// baseline x86-64 so a wheel runs anywhere; hot loops are compiled again for wider ISAs and the widest
// the CPU supports is picked at run time:
//   * the cell steps through GCC's target_clones("avx512f", "avx2", "default")
//     (cpu/recurrence/cell_steps.cpp): the compiler's resolver reads the same CPUID bits;
//   * everything else (the AVX-512 GEMM, the bfloat16 GEMM, the loss's unit loops, the FMA-peak probe)
//     through cpu_isa() and cpu_bf16_isa().
//
// BRNNSEG_CPU_ISA=baseline|avx2|avx512|avx512_bf16|amx_bf16 caps both at that level (a CPU without a level keeps
// its own, lower one): the tests force every rung of the fallback chain with it. It does not reach the
// cell steps' target_clones, whose resolver runs before any of our code.
#pragma once

#include <cstdlib>
#include <string_view>

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace brnnseg::cpu {

enum class Isa : int {
  kBaseline = 0,  // x86-64 (SSE2), or not x86
  kAvx2 = 1,      // AVX2 + FMA
  kAvx512 = 2,    // AVX-512 F + BW (+ VL, DQ: every AVX-512 CPU since Skylake-SP and Zen 4)
};

// What the bfloat16 products (cpu/gemm/gemm_bf16.cpp) run on.
enum class Bf16Isa : int {
  kNone = 0,        // no bfloat16 dot product: bfloat16 sweeps' products run in float32 (the float GEMM)
  kAvx512Bf16 = 1,  // AVX512-BF16 (vdpbf16ps: 32 products into 16 float32 lanes): Cooper Lake, Sapphire
                    // Rapids and later, Zen 4 and later
  kAmxBf16 = 2,     // AMX-BF16 tiles (tdpbf16ps: a 16 x 16 float32 tile += 16 x 32 . 32 x 16 bfloat16) for the
                    // whole 16-blocks of a product, AVX512-BF16 for its edges: Sapphire Rapids and later
};

// The cap BRNNSEG_CPU_ISA sets, as a rung: 0 baseline, 1 avx2, 2 avx512, 3 avx512_bf16, 4 amx_bf16; 4 when
// unset.
// Python checks the value at import (brnnseg_kernels._check_isa_env) and raises on an unknown one, so a
// test that meant to force a rung never silently runs another; here an unknown value leaves no cap.
inline int isa_cap() {
  static const int cap = [] {
    const char* v = std::getenv("BRNNSEG_CPU_ISA");
    if (v == nullptr || *v == '\0') return 4;
    const std::string_view s(v);
    if (s == "baseline") return 0;
    if (s == "avx2") return 1;
    if (s == "avx512") return 2;
    if (s == "avx512_bf16") return 3;
    if (s == "amx_bf16") return 4;
    return 4;
  }();
  return cap;
}

inline Isa detected_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const Isa isa = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") ? Isa::kAvx512
                         : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")       ? Isa::kAvx2
                                                                                                  : Isa::kBaseline;
  return isa;
#else
  return Isa::kBaseline;
#endif
}

inline bool detected_avx512_bf16() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has = detected_isa() == Isa::kAvx512 && __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

// AMX-BF16 tiles, with AVX512-BF16 beside them (the edges of a product run there).
inline bool detected_amx_bf16() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has = detected_avx512_bf16() && __builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16");
  return has;
#else
  return false;
#endif
}

// Linux hands a process the 8 KiB of tile state only once it asks (arch_prctl(ARCH_REQ_XCOMP_PERM,
// XFEATURE_XTILEDATA), kernel 5.16+); without it the first tile instruction faults. Asked once, where the
// CPU has the tiles; a refusal (an older kernel, a seccomp filter) leaves AVX512-BF16, and `info` says so.
inline bool amx_permitted() {
#if defined(__linux__) && defined(__x86_64__)
  static const bool ok = [] {
    if (!detected_amx_bf16()) return false;
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#else
  return false;
#endif
}

inline Isa cpu_isa() {
  const int cap = isa_cap();
  const Isa d = detected_isa();
  return static_cast<int>(d) <= cap ? d : static_cast<Isa>(cap);
}

inline Bf16Isa cpu_bf16_isa() {
  const int cap = isa_cap();
  if (cap >= 4 && amx_permitted()) return Bf16Isa::kAmxBf16;
  return detected_avx512_bf16() && cap >= 3 ? Bf16Isa::kAvx512Bf16 : Bf16Isa::kNone;
}

}  // namespace brnnseg::cpu
