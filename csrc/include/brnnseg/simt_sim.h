// A small SIMT simulator: runs CUDA kernel source on the CPU, compiled by g++, so CI can execute
// the CUDA kernels without a GPU (in the spirit of Numba's CUDA simulator).
//   * every CUDA thread of a block is an OS thread; blocks run one after another
//   * __syncthreads() is a std::barrier shared by the block's threads
//   * threadIdx / blockIdx / blockDim / gridDim are thread-local
//   * dynamic shared memory comes from a per-block arena (BRNNSEG_DYNAMIC_SMEM)
// Build the simulator with -fsanitize=thread and a missing __syncthreads() shows up as a data race.
// Not modelled: warp-synchronous execution (kernels must not rely on it), tensor-core mma, async
// copies, atomics ordering beyond std::atomic_ref. Kernels keep those behind switches.
#pragma once
#if defined(__CUDACC__)
#error "simt_sim.h is for host builds of the kernels; nvcc builds use the real CUDA runtime"
#endif

#include <barrier>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace brnnseg::sim {

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

struct ThreadState {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
  std::barrier<>* barrier = nullptr;
  unsigned char* shared = nullptr;
};

inline ThreadState& state() {
  thread_local ThreadState s;
  return s;
}

// The simulator's limit on threads per block (CUDA's is 1024; OS threads are costlier).
constexpr unsigned kMaxThreadsPerBlock = 1024;

// Runs kernel(args...) over the grid. Blocks run sequentially; the threads of a block concurrently.
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t shared_bytes, Kernel kernel, Args... args) {
  const unsigned nthreads = block.x * block.y * block.z;
  if (nthreads == 0 || nthreads > kMaxThreadsPerBlock)
    throw std::invalid_argument("simt_sim: block of " + std::to_string(nthreads) + " threads");
  // 16-byte aligned arena; poisoned so reads of unwritten shared memory give garbage, not zeros.
  std::unique_ptr<unsigned char[]> arena(new unsigned char[shared_bytes + 16]);
  unsigned char* smem = reinterpret_cast<unsigned char*>((reinterpret_cast<uintptr_t>(arena.get()) + 15) & ~uintptr_t(15));
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::memset(smem, 0x7f, shared_bytes);
        std::barrier<> bar(nthreads);
        std::vector<std::thread> threads;
        threads.reserve(nthreads);
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx)
              threads.emplace_back([&, tx, ty, tz] {
                ThreadState& s = state();
                s.thread_idx = dim3(tx, ty, tz);
                s.block_idx = dim3(bx, by, bz);
                s.block_dim = block;
                s.grid_dim = grid;
                s.barrier = &bar;
                s.shared = smem;
                kernel(args...);
              });
        for (auto& t : threads) t.join();
      }
}

}  // namespace brnnseg::sim

// CUDA spellings, mapped onto the simulator.
using dim3 = ::brnnseg::sim::dim3;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define threadIdx (::brnnseg::sim::state().thread_idx)
#define blockIdx (::brnnseg::sim::state().block_idx)
#define blockDim (::brnnseg::sim::state().block_dim)
#define gridDim (::brnnseg::sim::state().grid_dim)
#define __syncthreads() (::brnnseg::sim::state().barrier->arrive_and_wait())
#define __ldg(p) (*(p))
#define BRNNSEG_DYNAMIC_SMEM(type, name) type* name = reinterpret_cast<type*>(::brnnseg::sim::state().shared)
#define BRNNSEG_LAUNCH(kernel, grid, block, smem, stream, ...) \
  ::brnnseg::sim::launch(grid, block, smem, kernel, __VA_ARGS__)
