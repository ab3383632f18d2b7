// Instantiates every recurrence-kernel variant the launcher can pick (float, half, bfloat16 x GRU,
// LSTM x forward, backward) so tests/test_cuda_build.py can
// compile it with `ptxas -v` and check registers, spills and shared memory without torch's
// headers (only c10's Half/BFloat16).
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda/line_scan_kernels.cuh"

namespace brnnseg {
#define BRNNSEG_INSTANTIATE(T, G)                                                             \
  template __global__ void __launch_bounds__(kMaxThreadsPerCta) line_scan_fwd_kernel<T, G, 4>(SweepBatch<SweepFwdParams<T>>);      \
  template __global__ void __launch_bounds__(kMaxThreadsPerCta) line_scan_bwd_kernel<T, G, 4>(SweepBatch<SweepBwdParams<T>>);
#define BRNNSEG_INSTANTIATE_T(T) BRNNSEG_INSTANTIATE(T, 3) BRNNSEG_INSTANTIATE(T, 4)
BRNNSEG_INSTANTIATE_T(float)
BRNNSEG_INSTANTIATE_T(c10::Half)
BRNNSEG_INSTANTIATE_T(c10::BFloat16)
}  // namespace brnnseg
