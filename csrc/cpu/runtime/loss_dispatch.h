// One dtype switch for the CPU loss kernels (seg_loss_cpu.cpp, ce_dice_cpu.cpp): f(logits value, target
// value) for logits float32/float64 and the target types a loss takes. The sigmoid loss takes
// bool/uint8/int32/int64 masks and float targets; the multi-class loss also int8/int16 label maps
// (kNarrowIntegers). Anything else: an error naming the op and the dtypes it takes.
#pragma once
#include <torch/types.h>

#include <cstdint>

namespace brnnseg::cpu {

template <bool kNarrowIntegers, typename F>
void dispatch_logits_target(const char* op, const at::Tensor& logits, const at::Tensor& target,
                            const char* supported_targets, F&& f) {
  auto with_target = [&](auto tv) {
    switch (target.scalar_type()) {
      case at::kBool: return f(tv, bool{});
      case at::kByte: return f(tv, uint8_t{});
      case at::kChar:
        if constexpr (kNarrowIntegers) return f(tv, int8_t{});
        break;
      case at::kShort:
        if constexpr (kNarrowIntegers) return f(tv, int16_t{});
        break;
      case at::kInt: return f(tv, int32_t{});
      case at::kLong: return f(tv, int64_t{});
      case at::kFloat: return f(tv, float{});
      case at::kDouble: return f(tv, double{});
      default: break;
    }
    TORCH_CHECK(false, op, ": target dtype ", target.scalar_type(), " is not supported (", supported_targets, ")");
  };
  switch (logits.scalar_type()) {
    case at::kFloat: return with_target(float{});
    case at::kDouble: return with_target(double{});
    default:
      TORCH_CHECK(false, op, ": the CPU kernel supports float32 and float64 logits, got ", logits.scalar_type());
  }
}

}  // namespace brnnseg::cpu
