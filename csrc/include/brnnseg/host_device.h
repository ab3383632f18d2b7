// Marks functions that compile for the host (CPU kernels, SIMT simulator) and,
// under nvcc, for the device too. The cell math is written once behind it.
#pragma once

#if defined(__CUDACC__)
#define BRNNSEG_HD __host__ __device__ __forceinline__
#else
#define BRNNSEG_HD inline
#endif
