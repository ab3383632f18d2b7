// The float32 FMA rate of this CPU, measured: the roof the benchmarks compare the kernels with.
#pragma once

namespace brnnseg::cpu {

// GFLOP/s of independent fused multiply-adds on every at::parallel_for thread at once, with the
// widest vectors this CPU has (AVX-512, else AVX2+FMA); about `seconds` of work. 0 on other CPUs.
double fma_peak_gflops(double seconds);

// The same for bfloat16 products, the roof of bfloat16 ops' GEMMs: tdpbf16ps on AMX tiles where they run
// there (8,192 multiply-adds per instruction), else vdpbf16ps chains (32); 0 where they run in float32
// (cpu_bf16_isa()).
double bf16_dot_peak_gflops(double seconds);

}  // namespace brnnseg::cpu
