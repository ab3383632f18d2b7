// brnnseg::kernel_gemm: the GEMM the CPU kernels call per step (blas.h), as an op over whole
// matrices, so benchmarks can measure the rate the kernels' GEMMs run at on this machine and tests
// can compare it with torch.mm.
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <torch/types.h>

#include "cpu/gemm/blas.h"
#include "cpu/runtime/cpu_tensors.h"

namespace brnnseg::cpu {
namespace {

at::Tensor kernel_gemm_cpu(const at::Tensor& a_in, const at::Tensor& b_in) {
  TORCH_CHECK(a_in.dim() == 2 && b_in.dim() == 2 && a_in.size(1) == b_in.size(0),
              "kernel_gemm: a and b must be matrices (M, K) and (K, N), got ", a_in.sizes(), " and ", b_in.sizes());
  TORCH_CHECK(a_in.scalar_type() == b_in.scalar_type() && a_in.device().is_cpu() && b_in.device().is_cpu(),
              "kernel_gemm: a and b must be CPU tensors of one dtype, got ", a_in.scalar_type(), " and ",
              b_in.scalar_type());
  const at::Tensor a = a_in.contiguous(), b = b_in.contiguous();
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  at::Tensor c = at::empty({M, N}, a.options());
  dispatch_float_double("kernel_gemm", a.scalar_type(), [&](auto v) {
    using T = decltype(v);
    const T* ap = a.data_ptr<T>();
    const T* bp = b.data_ptr<T>();
    T* cp = c.data_ptr<T>();
    // Row blocks per thread, as the kernels run one GEMM per thread.
    at::parallel_for(0, M, 96, [&](int64_t r0, int64_t r1) {
      gemm(false, false, r1 - r0, N, K, T(1), ap + r0 * K, K, bp, N, T(0), cp + r0 * N, N);
    });
  });
  return c;
}

}  // namespace

TORCH_LIBRARY_IMPL(brnnseg, CPU, m) { m.impl("kernel_gemm", &kernel_gemm_cpu); }

}  // namespace brnnseg::cpu
