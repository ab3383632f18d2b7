// CUDA implementations of brnnseg::bigru_sweep / bilstm_sweep and their backward ops:
// TORCH_LIBRARY_IMPL(brnnseg, CUDA, m). Input projection and weight gradients are cuBLAS GEMMs
// through ATen; the recurrences are the persistent kernels of line_scan_kernels.cuh. Launches go on
// the current stream, each followed by C10_CUDA_KERNEL_LAUNCH_CHECK.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

// The simulator build defines the same two macros (simt_sim.h), checked against a simulated GPU.
#define BRNNSEG_LAUNCH(kernel, name, bounds, grid, block, smem, stream, ...)             \
  do {                                                                                \
    kernel<<<grid, block, smem, static_cast<cudaStream_t>(stream)>>>(__VA_ARGS__);    \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                   \
  } while (0)
#define BRNNSEG_SET_MAX_DYNAMIC_SMEM(kernel, bytes) \
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)))

#include "line_scan_host.h"

namespace brnnseg::cuda_ops {
namespace {

using at::Tensor;

size_t smem_limit_of_current_device() {
  const cudaDeviceProp* prop = at::cuda::getCurrentDeviceProperties();
  return prop->sharedMemPerBlockOptin;
}

using device::dispatch_dtype;

template <int G>
std::tuple<Tensor, Tensor> fwd(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                               const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, int64_t axis,
                               bool channels_last, bool training) {
  const char* op = G == 3 ? "bigru_sweep" : "bilstm_sweep";
  const c10::cuda::CUDAGuard guard(x.device());
  std::tuple<Tensor, Tensor> out;
  dispatch_dtype(op, x.scalar_type(), [&](auto v) {
    using T = decltype(v);
    out = device::sweep_forward<T>(op, G, x, w_ih, w_hh, b_ih, b_hh, axis, channels_last, training,
                                   smem_limit_of_current_device(), at::cuda::getCurrentCUDAStream().stream());
  });
  return out;
}

template <int G>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> bwd(const Tensor& grad_y, const Tensor& x, const Tensor& w_ih,
                                                       const Tensor& w_hh, const Tensor& y, const Tensor& ws,
                                                       int64_t axis) {
  const char* op = G == 3 ? "bigru_sweep_backward" : "bilstm_sweep_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> out;
  dispatch_dtype(op, x.scalar_type(), [&](auto v) {
    using T = decltype(v);
    out = device::sweep_backward<T>(op, G, grad_y.to(x.scalar_type()), x, w_ih, w_hh, y, ws, axis,
                                    smem_limit_of_current_device(), at::cuda::getCurrentCUDAStream().stream());
  });
  return out;
}

template <int G>
std::tuple<Tensor, Tensor, Tensor> pair_fwd(const Tensor& x, const Tensor& w_ih_r, const Tensor& w_hh_r,
                                            const std::optional<Tensor>& b_ih_r, const std::optional<Tensor>& b_hh_r,
                                            const Tensor& w_ih_c, const Tensor& w_hh_c,
                                            const std::optional<Tensor>& b_ih_c, const std::optional<Tensor>& b_hh_c,
                                            bool channels_last, bool training) {
  const char* op = G == 3 ? "bigru_sweep_pair" : "bilstm_sweep_pair";
  const c10::cuda::CUDAGuard guard(x.device());
  std::tuple<Tensor, Tensor, Tensor> out;
  dispatch_dtype(op, x.scalar_type(), [&](auto v) {
    using T = decltype(v);
    out = device::sweep_pair_forward<T>(op, G, x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, w_ih_c, w_hh_c, b_ih_c, b_hh_c,
                                        channels_last, training, smem_limit_of_current_device(),
                                        at::cuda::getCurrentCUDAStream().stream());
  });
  return out;
}

template <int G>
std::vector<Tensor> pair_bwd(const Tensor& grad_y, const Tensor& x, const Tensor& w_ih_r, const Tensor& w_hh_r,
                             const Tensor& w_ih_c, const Tensor& w_hh_c, const Tensor& y, const Tensor& ws_r,
                             const Tensor& ws_c) {
  const char* op = G == 3 ? "bigru_sweep_pair_backward" : "bilstm_sweep_pair_backward";
  const c10::cuda::CUDAGuard guard(x.device());
  std::vector<Tensor> out;
  dispatch_dtype(op, x.scalar_type(), [&](auto v) {
    using T = decltype(v);
    out = device::sweep_pair_backward<T>(op, G, grad_y.to(x.scalar_type()), x, w_ih_r, w_hh_r, w_ih_c, w_hh_c, y,
                                         ws_r, ws_c, smem_limit_of_current_device(),
                                         at::cuda::getCurrentCUDAStream().stream());
  });
  return out;
}

}  // namespace
}  // namespace brnnseg::cuda_ops

TORCH_LIBRARY_IMPL(brnnseg, CUDA, m) {
  m.impl("bigru_sweep_pair", &brnnseg::cuda_ops::pair_fwd<3>);
  m.impl("bilstm_sweep_pair", &brnnseg::cuda_ops::pair_fwd<4>);
  m.impl("bigru_sweep_pair_backward", &brnnseg::cuda_ops::pair_bwd<3>);
  m.impl("bilstm_sweep_pair_backward", &brnnseg::cuda_ops::pair_bwd<4>);
  m.impl("bigru_sweep", &brnnseg::cuda_ops::fwd<3>);
  m.impl("bilstm_sweep", &brnnseg::cuda_ops::fwd<4>);
  m.impl("bigru_sweep_backward", &brnnseg::cuda_ops::bwd<3>);
  m.impl("bilstm_sweep_backward", &brnnseg::cuda_ops::bwd<4>);
}
