// nvcuda::wmma for the SIMT simulator (included by simt_sim.h): tensor-core fragments emulated exactly
// on the CPU, so kernels written with wmma run in CI.
//
// Each operation that is warp-collective on a GPU (load_matrix_sync, store_matrix_sync, mma_sync) is a
// per-warp barrier, after which each lane takes its part, and a second barrier before the warp's
// scratch area is reused:
//   * every lane must reach it (a lane that does not makes the others wait, as on the GPU, where
//     divergent wmma is undefined); a warp of fewer than 32 lanes is a fault;
//   * every lane must pass the same pointer, ldm and layout (a fault otherwise);
//   * the pointer must be 32-byte (256-bit) aligned and ldm a multiple of 16 bytes, the PTX rules for
//     wmma.load / wmma.store (a fault otherwise);
//   * shared-memory operands go through SharedPtr, so bounds and unwritten reads are checked as for
//     any other access.
// Fragment layout: which lane holds which element is unspecified for wmma, and kernels must not rely on
// it. The emulation uses a deliberately scrambled map (element e of lane l is element
// e*32 + (7l + e) mod 32 of the tile, row-major), so a kernel that assumed the layout of a GPU would
// get wrong answers here too. Elementwise operations on a fragment (the same function of every
// element, or of the same element of two fragments of one type) are layout-independent and allowed.
// Arithmetic: products of half/bfloat16 (and of TF32-truncated float) operands are exact in float;
// the sum over k runs in float from the accumulator's value, k ascending. Tensor cores add in a
// different order with their own rounding, so results agree to float rounding, not bit for bit.
// TF32: operands are truncated to TF32 (the low 13 mantissa bits dropped, as the hardware ignores
// them) unless the kernel rounded them first with __float_to_tf32 (round to nearest, ties away).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

namespace nvcuda::wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

namespace detail {

template <typename T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};

inline float tf32_truncate(float v) {
  uint32_t b;
  std::memcpy(&b, &v, 4);
  b &= 0xffffe000u;
  std::memcpy(&v, &b, 4);
  return v;
}

// cvt.rna.tf32.f32: round to the nearest TF32 value (10 mantissa bits), ties away from zero.
inline float tf32_round(float v) {
  if (!std::isfinite(v)) return v;
  uint32_t b;
  std::memcpy(&b, &v, 4);
  b = (b + 0x1000u) & 0xffffe000u;
  std::memcpy(&v, &b, 4);
  return v;
}

// Element e of lane `lane` is element element_index(lane, e) of the tile, row-major.
inline int element_index(int lane, int e) { return e * 32 + (lane * 7 + e) % 32; }

inline void fault(const std::string& what) { ::brnnseg::sim::state().arena->fault("wmma: " + what); }

// The first barrier of a collective: publishes this lane's (address, ldm, layout), waits for the
// warp, and checks the warp's rules. False when the lane must skip its part (a fault was recorded).
inline bool collective_begin(const char* op, const void* addr, unsigned ldm, int layout, size_t elem_bytes) {
  auto& s = ::brnnseg::sim::state();
  auto& w = *s.warp;
  if (w.lanes != 32) {
    fault(std::string(op) + " in a warp of " + std::to_string(w.lanes) + " lanes (a full warp of 32 is required)");
    return false;
  }
  auto* args = reinterpret_cast<uint64_t*>(&w.scratch[3 * 256]);
  static_assert(sizeof(w.scratch) >= (3 * 256 + 64) * sizeof(double));
  args[s.lane] = reinterpret_cast<uint64_t>(addr);
  args[32 + s.lane] = (uint64_t(ldm) << 8) | uint64_t(layout);
  w.barrier.arrive_and_wait();
  bool ok = true;
  if (args[s.lane] != args[0] || args[32 + s.lane] != args[32]) {
    fault(std::string(op) + ": lanes passed different pointers, ldm or layouts (they must be warp-uniform)");
    ok = false;
  } else if (addr != nullptr && reinterpret_cast<uintptr_t>(addr) % 32 != 0) {
    fault(std::string(op) + ": the pointer must be 256-bit (32-byte) aligned");
    ok = false;
  } else if (addr != nullptr && (size_t(ldm) * elem_bytes) % 16 != 0) {
    fault(std::string(op) + ": ldm " + std::to_string(ldm) + " must be a multiple of 16 bytes (" +
          std::to_string(16 / elem_bytes) + " elements)");
    ok = false;
  }
  return ok;
}

inline void collective_end() { ::brnnseg::sim::state().warp->barrier.arrive_and_wait(); }

template <typename E>
float to_f(const E& v) {
  return static_cast<float>(v);
}

// Element access through a raw (global) pointer or a checked shared-memory pointer.
template <typename E>
E read_at(const E* p, int64_t i) {
  return p[i];
}
template <typename E>
E read_at(const ::brnnseg::sim::SharedPtr<E>& p, int64_t i) {
  return E(p[i]);
}
template <typename E>
void write_at(E* p, int64_t i, const E& v) {
  p[i] = v;
}
template <typename E>
void write_at(const ::brnnseg::sim::SharedPtr<E>& p, int64_t i, const E& v) {
  p[i] = v;
}
template <typename E>
const void* address(const E* p) {
  return p;
}
template <typename E>
const void* address(const ::brnnseg::sim::SharedPtr<E>& p) {
  return p.raw();
}

}  // namespace detail

// The shapes a GPU supports for the element types used here: m16n16k16 for half and bfloat16,
// m16n16k8 for TF32, float accumulators.
template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  using element_type = typename detail::storage<T>::type;
  static constexpr bool kTf32 = std::is_same_v<T, precision::tf32>;
  static_assert(M == 16 && N == 16 && (kTf32 ? K == 8 : std::is_same_v<Use, accumulator> ? (K == 8 || K == 16) : K == 16),
                "simt_sim wmma: only m16n16k16 (half, bfloat16) and m16n16k8 (tf32) are emulated");
  static_assert(std::is_same_v<Use, accumulator> ? (std::is_same_v<T, float> && std::is_void_v<Layout>)
                                                 : !std::is_same_v<T, float>,
                "simt_sim wmma: accumulators are float without a layout; a/b operands half, bfloat16 or tf32");
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = kRows * kCols / 32;
  element_type x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, const typename fragment<Use, M, N, K, T, Layout>::element_type& v) {
  for (auto& e : f.x) e = v;
}

// A or B operand: the layout is the fragment's.
template <typename Use, int M, int N, int K, typename T, typename Layout, typename Ptr>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const Ptr& p, unsigned ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  static_assert(!std::is_void_v<Layout>, "load_matrix_sync without a layout is for accumulators");
  constexpr int col = std::is_same_v<Layout, col_major>;
  if (detail::collective_begin("load_matrix_sync", detail::address(p), ldm, col, sizeof(typename F::element_type))) {
    const int lane = ::brnnseg::sim::state().lane;
    for (int e = 0; e < F::num_elements; ++e) {
      const int i = detail::element_index(lane, e), r = i / F::kCols, c = i % F::kCols;
      f.x[e] = detail::read_at(p, col ? int64_t(c) * ldm + r : int64_t(r) * ldm + c);
    }
  }
  detail::collective_end();
}

// Accumulator: the layout is an argument.
template <int M, int N, int K, typename Ptr>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const Ptr& p, unsigned ldm, layout_t layout) {
  using F = fragment<accumulator, M, N, K, float>;
  if (detail::collective_begin("load_matrix_sync", detail::address(p), ldm, int(layout), sizeof(float))) {
    const int lane = ::brnnseg::sim::state().lane;
    for (int e = 0; e < F::num_elements; ++e) {
      const int i = detail::element_index(lane, e), r = i / F::kCols, c = i % F::kCols;
      f.x[e] = detail::read_at(p, layout == mem_col_major ? int64_t(c) * ldm + r : int64_t(r) * ldm + c);
    }
  }
  detail::collective_end();
}

template <int M, int N, int K, typename Ptr>
void store_matrix_sync(const Ptr& p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  using F = fragment<accumulator, M, N, K, float>;
  if (detail::collective_begin("store_matrix_sync", detail::address(p), ldm, int(layout), sizeof(float))) {
    const int lane = ::brnnseg::sim::state().lane;
    for (int e = 0; e < F::num_elements; ++e) {
      const int i = detail::element_index(lane, e), r = i / F::kCols, c = i % F::kCols;
      detail::write_at(p, layout == mem_col_major ? int64_t(c) * ldm + r : int64_t(r) * ldm + c, f.x[e]);
    }
  }
  detail::collective_end();
}

// D = A B + C over the warp: each lane publishes its elements of A, B and C, then computes its own
// elements of D from the whole tiles.
template <int M, int N, int K, typename T, typename LA, typename LB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
              const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  using FA = fragment<matrix_a, M, N, K, T, LA>;
  using FB = fragment<matrix_b, M, N, K, T, LB>;
  using FC = fragment<accumulator, M, N, K, float>;
  constexpr bool tf32 = FA::kTf32;
  const bool ok = detail::collective_begin("mma_sync", nullptr, 0, 0, 4);
  auto& s = ::brnnseg::sim::state();
  double* A = s.warp->scratch;
  double* B = A + 256;
  double* C = B + 256;
  if (ok) {
    for (int e = 0; e < FA::num_elements; ++e) {
      const float v = detail::to_f(a.x[e]);
      A[detail::element_index(s.lane, e)] = tf32 ? detail::tf32_truncate(v) : v;
    }
    for (int e = 0; e < FB::num_elements; ++e) {
      const float v = detail::to_f(b.x[e]);
      B[detail::element_index(s.lane, e)] = tf32 ? detail::tf32_truncate(v) : v;
    }
    for (int e = 0; e < FC::num_elements; ++e) C[detail::element_index(s.lane, e)] = c.x[e];
  }
  s.warp->barrier.arrive_and_wait();  // every lane's parts published
  float out[FC::num_elements];
  if (ok)
    for (int e = 0; e < FC::num_elements; ++e) {
      const int i = detail::element_index(s.lane, e), r = i / N, col = i % N;
      float acc = float(C[i]);
      for (int k = 0; k < K; ++k) acc += float(A[r * K + k]) * float(B[k * N + col]);
      out[e] = acc;
    }
  detail::collective_end();  // every lane has read the tiles: the scratch may be reused
  if (ok)
    for (int e = 0; e < FC::num_elements; ++e) d.x[e] = out[e];
}

inline float __float_to_tf32(float v) { return detail::tf32_round(v); }

}  // namespace nvcuda::wmma
