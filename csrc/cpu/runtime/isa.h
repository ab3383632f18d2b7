// The one place the CPU kernels ask which vector ISA the machine has. The extension is compiled for
// baseline x86-64 so a wheel runs anywhere; hot loops are compiled again for wider ISAs and the widest
// the CPU supports is picked at run time:
//   * the cell steps through GCC's target_clones("avx512f", "avx2", "default")
//     (cpu/recurrence/cell_steps.cpp): the compiler's resolver reads the same CPUID bits;
//   * everything else (the AVX-512 GEMM, the loss's unit loops, the FMA-peak probe) through cpu_isa().
#pragma once

namespace brnnseg::cpu {

enum class Isa : int {
  kBaseline = 0,  // x86-64 (SSE2), or not x86
  kAvx2 = 1,      // AVX2 + FMA
  kAvx512 = 2,    // AVX-512 F + BW (+ VL, DQ: every AVX-512 CPU since Skylake-SP and Zen 4)
};

inline Isa cpu_isa() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const Isa isa = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") ? Isa::kAvx512
                         : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")       ? Isa::kAvx2
                                                                                                  : Isa::kBaseline;
  return isa;
#else
  return Isa::kBaseline;
#endif
}

}  // namespace brnnseg::cpu
