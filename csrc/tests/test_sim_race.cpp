// A planted race for the simulator under ThreadSanitizer: a kernel that lacks the __syncthreads()
// between a shared-memory write and another thread's read of it. Every slot is written before the
// first barrier, so the simulator's unwritten-read check stays quiet and only the race remains:
// ctest runs this built with -fsanitize=thread and expects it to FAIL (WILL_FAIL). If it ever
// passes, ThreadSanitizer no longer sees a missing barrier in simulated kernels.
#include <cstdio>
#include <vector>

#include "brnnseg/simt_sim.h"

__global__ void missing_barrier(float* out) {
  BRNNSEG_DYNAMIC_SMEM(float, s);
  s[threadIdx.x] = 0.f;
  __syncthreads();
  s[threadIdx.x] = float(threadIdx.x) + 1.f;
  // __syncthreads();  <- removed: the read below races with its neighbour's write above
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}

int main() {
  std::vector<float> out(32);
  BRNNSEG_LAUNCH(missing_barrier, "missing_barrier", 32, dim3(1), dim3(32), 32 * sizeof(float), nullptr, out.data());
  std::printf("ran; ThreadSanitizer should have reported a data race\n");
  return 0;
}
