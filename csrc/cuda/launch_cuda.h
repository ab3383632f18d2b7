// The CUDA definitions of the launch macros the kernels' launchers use (simt_sim.h defines the
// simulator's). No torch: the per-dtype instantiation files include only this and the kernels.
#pragma once
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace brnnseg {
inline void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
}  // namespace brnnseg

#define BRNNSEG_LAUNCH(kernel, name, bounds, grid, block, smem, stream, ...)          \
  do {                                                                             \
    kernel<<<grid, block, smem, static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__); \
    ::brnnseg::check_cuda(cudaGetLastError(), name);                               \
  } while (0)
#define BRNNSEG_SET_MAX_DYNAMIC_SMEM(kernel, bytes)                                                     \
  ::brnnseg::check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), \
                        "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)")
