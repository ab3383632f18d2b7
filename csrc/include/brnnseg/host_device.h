// Marks functions that compile for the host (CPU kernels, SIMT simulator) and,
// under nvcc, for the device too. The cell math is written once behind it.
#pragma once

#if defined(__CUDACC__)
#define BRNNSEG_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// always_inline: the CPU steps are compiled per ISA (target_clones); the cell math must be
// inlined into each clone to be vectorised with it.
#define BRNNSEG_HD inline __attribute__((always_inline))
#else
#define BRNNSEG_HD inline
#endif

// Loop unrolling hints, spelled for the compiler at hand (nvcc: #pragma unroll; g++ compiling the
// kernels for the simulator: GCC unroll).
#if defined(__CUDACC__)
#define BRNNSEG_UNROLL _Pragma("unroll")
#define BRNNSEG_NO_UNROLL _Pragma("unroll 1")
#else
#define BRNNSEG_UNROLL _Pragma("GCC unroll 16")
#define BRNNSEG_NO_UNROLL _Pragma("GCC unroll 1")
#endif
