// Tensor helpers shared by the CPU kernels.
#pragma once
#include <torch/types.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace brnnseg::cpu {

// at::empty, plus a transparent-huge-page hint for large buffers on Linux. These buffers (output,
// workspace, dx) are fresh memory written once per call; with 4 KiB pages the page faults cost as
// much as the writes (THP is often "madvise"-only, so the hint is what enables 2 MiB pages).
inline at::Tensor empty_large(at::IntArrayRef sizes, const at::TensorOptions& options,
                              at::MemoryFormat fmt = at::MemoryFormat::Contiguous) {
  at::Tensor t = at::empty(sizes, options.memory_format(fmt));
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const size_t bytes = t.nbytes();
  if (bytes >= 2 * kHuge) {
    const uintptr_t start = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t lo = (start + kHuge - 1) & ~(kHuge - 1), hi = (start + bytes) & ~(kHuge - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // a hint: errors ignored
  }
#endif
  return t;
}

// float32 and float64 (the latter for gradcheck); other dtypes get an error naming the op.
template <typename F>
void dispatch_float_double(const char* op, at::ScalarType dtype, F&& f) {
  switch (dtype) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    default:
      TORCH_CHECK(false, op, ": the CPU kernel supports float32 and float64 inputs, got ", dtype);
  }
}

}  // namespace brnnseg::cpu
