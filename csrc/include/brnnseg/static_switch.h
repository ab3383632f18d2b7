// Runtime values -> template arguments, in the style of flash-attention's static_switch.h:
//
//   CELL_SWITCH(op, cell_name, Cell, [&] { return run<Cell>(...); });
//   DTYPE_SWITCH(op, x.scalar_type(), T, CpuDtypes, [&] { return run<T>(...); });
//
// CELL_SWITCH covers every row of BRNNSEG_FOR_EACH_CELL (cell/cells.h); DTYPE_SWITCH covers the
// dtypes of a backend (CpuDtypes: float32/float64; DeviceDtypes: float32/float16/bfloat16, the
// CUDA kernels and their simulator build). Anything else is a ValueError naming the op, the
// argument and what was expected.
#pragma once
#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <string_view>
#include <tuple>
#include <type_traits>

#include "brnnseg/cell/cells.h"

namespace brnnseg {

template <typename... Ts>
struct DtypeList {};
using CpuDtypes = DtypeList<float, double>;
using DeviceDtypes = DtypeList<float, c10::Half, c10::BFloat16>;

template <typename F>
decltype(auto) dispatch_cell(const char* op, std::string_view name, F&& f) {
  using R = decltype(f(GruCell{}));
  if constexpr (std::is_void_v<R>) {
    const bool found = visit_cell(name, f);
    TORCH_CHECK_VALUE(found, op, ": cell must be one of ", cell_names(), ", got '", std::string(name), "'");
  } else {
    R out{};
    const bool found = visit_cell(name, [&](auto c) { out = f(c); });
    TORCH_CHECK_VALUE(found, op, ": cell must be one of ", cell_names(), ", got '", std::string(name), "'");
    return out;
  }
}

// "float32 and float64": torch's Python names, as users write them.
inline const char* python_dtype_name(c10::ScalarType t) {
  switch (t) {
    case c10::kFloat: return "float32";
    case c10::kDouble: return "float64";
    case c10::kHalf: return "float16";
    case c10::kBFloat16: return "bfloat16";
    default: return c10::toString(t);
  }
}
// "float32, float16 and bfloat16" (conj "and") or "... or ..." (conj "or").
template <typename... Ts>
std::string dtype_names(DtypeList<Ts...>, const char* conj) {
  const c10::ScalarType all[] = {c10::CppTypeToScalarType<Ts>::value...};
  const size_t n = sizeof...(Ts);
  std::string s;
  for (size_t i = 0; i < n; ++i)
    s += std::string(i == 0 ? "" : i + 1 == n ? std::string(" ") + conj + " " : ", ") + python_dtype_name(all[i]);
  return s;
}

template <typename... Ts, typename F>
decltype(auto) dispatch_dtype(const char* op, c10::ScalarType dt, DtypeList<Ts...> list, F&& f) {
  using R = decltype(f(std::tuple_element_t<0, std::tuple<Ts...>>{}));
  bool found = false;
  if constexpr (std::is_void_v<R>) {
    ((!found && dt == c10::CppTypeToScalarType<Ts>::value ? (f(Ts{}), found = true) : false), ...);
    TORCH_CHECK(found, op, ": x must be ", dtype_names(list, "or"), ", got ", python_dtype_name(dt),
                " (the kernels here support ", dtype_names(list, "and"), " inputs)");
  } else {
    R out{};
    ((!found && dt == c10::CppTypeToScalarType<Ts>::value ? (out = f(Ts{}), found = true) : false), ...);
    TORCH_CHECK(found, op, ": x must be ", dtype_names(list, "or"), ", got ", python_dtype_name(dt),
                " (the kernels here support ", dtype_names(list, "and"), " inputs)");
    return out;
  }
}

}  // namespace brnnseg

// CELL_TYPE / DTYPE_T name the type inside the body; the body is a lambda taking no arguments.
#define CELL_SWITCH(OP, NAME, CELL_TYPE, ...)                                            \
  ::brnnseg::dispatch_cell(OP, NAME, [&](auto brnnseg_cell_tag_) {                       \
    using CELL_TYPE = decltype(brnnseg_cell_tag_);                                       \
    return __VA_ARGS__();                                                                \
  })
#define DTYPE_SWITCH(OP, DTYPE, DTYPE_T, LIST, ...)                                      \
  ::brnnseg::dispatch_dtype(OP, DTYPE, ::brnnseg::LIST{}, [&](auto brnnseg_dtype_tag_) { \
    using DTYPE_T = decltype(brnnseg_dtype_tag_);                                        \
    return __VA_ARGS__();                                                                \
  })
