// CUDA registration of the sweep ops (brnnseg::sweep, sweep_backward, sweep_pair, sweep_pair_backward):
// the shared op code of sweep_registration.h with the CUDA backend -- a device guard, the current
// stream and the device's opt-in shared-memory limit. Input projection and weight gradients are cuBLAS
// GEMMs through ATen; the recurrences are the kernels instantiated in sweep_{fwd,bwd}_{dtype}.cu. Host
// code only: compiled by the host compiler, no kernels here.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/sweep_registration.h"

namespace brnnseg::cuda_ops {

struct CudaBackend {
  static constexpr const char* kNamespace = "brnnseg";
  struct Scope {
    c10::cuda::CUDAGuard guard;
    size_t smem_limit;
    void* stream;
    bool global_weights = false;
    explicit Scope(const at::Tensor& x)
        : guard(x.device()),
          smem_limit(dynamic_smem_budget(at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin)),
          stream(at::cuda::getCurrentCUDAStream().stream()) {}
  };
};

}  // namespace brnnseg::cuda_ops

TORCH_LIBRARY_IMPL(brnnseg, CUDA, m) { brnnseg::device::register_sweep_ops<brnnseg::cuda_ops::CudaBackend>(m); }
