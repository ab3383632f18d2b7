// The simulator's nvcuda::wmma and cp.async emulation (brnnseg/simt_sim_wmma.h, simt_sim.h), without
// torch: built by CMake plain, under ThreadSanitizer and under AddressSanitizer + UBSan. Checks:
//   * mma_sync in TF32 (m16n16k8, float operands) and in half (m16n16k16; GCC's _Float16 stands in for
//     __half) against a double loop over the same operands (TF32: the truncated ones), with row-major
//     and column-major A and B, accumulators loaded and stored both ways, several warps at once;
//   * __float_to_tf32 rounds to nearest (ties away) and the MMA truncates unrounded operands;
//   * the fragment layout is opaque: element e of lane l is not the row-major element 8l + e;
//   * planted faults, each reported by name: a misaligned pointer, an ldm that is not a multiple of 16
//     bytes, a pointer that differs between lanes, wmma in a partial warp, a misaligned cp.async, a
//     read of a cp.async destination before the wait, a thread that exits without waiting.
#include <cmath>
#include <cstdio>
#include <limits>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "brnnseg/simt_sim.h"
#include "tests/check.h"

namespace wmma = nvcuda::wmma;
using brnnseg::kH100;


// ---- D = A B + C for one 16x16 tile per warp: A [16][K], B [K][16], C/D [16][16] in global memory ----

template <typename E, typename Frag, int K, typename LA, typename LB>
__global__ void mma_kernel(const E* a, const E* b, const float* c, float* d, bool c_col, bool d_col) {
  const int warp = threadIdx.x / 32;
  wmma::fragment<wmma::matrix_a, 16, 16, K, Frag, LA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, K, Frag, LB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, K, float> acc;
  constexpr bool a_col = std::is_same_v<LA, wmma::col_major>, b_col = std::is_same_v<LB, wmma::col_major>;
  wmma::load_matrix_sync(fa, a + warp * 16 * K, a_col ? 16 : K);
  wmma::load_matrix_sync(fb, b + warp * 16 * K, b_col ? K : 16);
  wmma::load_matrix_sync(acc, c + warp * 256, 16, c_col ? wmma::mem_col_major : wmma::mem_row_major);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d + warp * 256, acc, 16, d_col ? wmma::mem_col_major : wmma::mem_row_major);
}

static float truncate_tf32(float v) { return wmma::detail::tf32_truncate(v); }

// A 64-byte aligned array (wmma pointers must be 32-byte aligned; malloc guarantees 16).
template <typename T>
struct Aligned {
  explicit Aligned(size_t n, T v = T()) : n_(n), p_(static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64))) {
    for (size_t i = 0; i < n; ++i) p_[i] = v;
  }
  ~Aligned() { std::free(p_); }
  T& operator[](size_t i) { return p_[i]; }
  T* data() { return p_; }
  T* begin() { return p_; }
  T* end() { return p_ + n_; }
  size_t n_;
  T* p_;
};

template <typename E, typename Frag, int K, typename LA, typename LB>
static void check_mma(const char* what, int warps, bool c_col, bool d_col) {
  std::mt19937 rng(K * 100 + warps);
  std::normal_distribution<float> nd(0.f, 1.f);
  Aligned<E> a(warps * 16 * K), b(warps * K * 16);
  Aligned<float> c(warps * 256), d(warps * 256, NAN);
  for (auto& v : a) v = E(nd(rng));
  for (auto& v : b) v = E(nd(rng));
  for (auto& v : c) v = nd(rng);
  BRNNSEG_LAUNCH((mma_kernel<E, Frag, K, LA, LB>), "mma_kernel", 0, dim3(1), dim3(32 * warps), 0, nullptr, a.data(),
                 b.data(), c.data(), d.data(), c_col, d_col);
  constexpr bool a_col = std::is_same_v<LA, wmma::col_major>, b_col = std::is_same_v<LB, wmma::col_major>;
  constexpr bool tf32 = std::is_same_v<Frag, wmma::precision::tf32>;
  double worst = 0;
  for (int w = 0; w < warps; ++w)
    for (int r = 0; r < 16; ++r)
      for (int col = 0; col < 16; ++col) {
        double ref = c[w * 256 + (c_col ? col * 16 + r : r * 16 + col)];
        for (int k = 0; k < K; ++k) {
          float av = float(a[w * 16 * K + (a_col ? k * 16 + r : r * K + k)]);
          float bv = float(b[w * K * 16 + (b_col ? col * K + k : k * 16 + col)]);
          if (tf32) av = truncate_tf32(av), bv = truncate_tf32(bv);
          ref += double(av) * double(bv);
        }
        const double got = d[w * 256 + (d_col ? col * 16 + r : r * 16 + col)];
        worst = std::max(worst, std::fabs(got - ref) / (1e-6 + 1e-6 * std::fabs(ref)));
      }
  CHECK(worst <= 8, "%s: mma differs from the double loop by %g x (1e-6 + 1e-6|ref|)", what, worst);
  std::printf("mma %-34s warps=%d: max error %.3g x float tolerance\n", what, warps, worst);
}

// ---- layout opacity and TF32 rounding --------------------------------------------------------------

__global__ void layout_kernel(const float* m, float* lane_elems) {
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
  wmma::load_matrix_sync(acc, m, 16, wmma::mem_row_major);
  for (int e = 0; e < acc.num_elements; ++e) lane_elems[threadIdx.x * acc.num_elements + e] = acc.x[e];
}

static void check_layout_and_rounding() {
  Aligned<float> m(256), got(256, -1.f);
  for (int i = 0; i < 256; ++i) m[i] = float(i);
  BRNNSEG_LAUNCH(layout_kernel, "layout_kernel", 0, dim3(1), dim3(32), 0, nullptr, m.data(), got.data());
  int row_major_lanes = 0;
  std::vector<int> seen(256, 0);
  for (int lane = 0; lane < 32; ++lane) {
    bool row_major = true;
    for (int e = 0; e < 8; ++e) {
      row_major &= got[lane * 8 + e] == float(lane * 8 + e);
      seen[int(got[lane * 8 + e])]++;
    }
    row_major_lanes += row_major;
  }
  CHECK(row_major_lanes < 32, "fragment layout is plain row-major (it must be opaque)");
  bool each_once = true;
  for (int v : seen) each_once &= v == 1;
  CHECK(each_once, "a fragment does not hold every element of the tile exactly once");
  // 1 + 2^-11 is halfway between TF32 neighbours 1 and 1 + 2^-10: rounds away; 1 + 2^-12 rounds down.
  CHECK(wmma::__float_to_tf32(1.f + std::ldexp(1.f, -11)) == 1.f + std::ldexp(1.f, -10), "tf32 tie not away");
  CHECK(wmma::__float_to_tf32(1.f + std::ldexp(1.f, -12)) == 1.f, "tf32 round down");
  CHECK(wmma::__float_to_tf32(-1.f - 3 * std::ldexp(1.f, -12)) == -1.f - std::ldexp(1.f, -10), "tf32 negative");
  CHECK(truncate_tf32(1.f + 3 * std::ldexp(1.f, -12)) == 1.f, "tf32 truncation");
}

// ---- planted faults ----------------------------------------------------------------------------------

__global__ void misaligned_kernel(const float* m, int offset, unsigned ldm, bool per_lane) {
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
  wmma::load_matrix_sync(acc, m + offset + (per_lane ? threadIdx.x % 2 : 0) * 8, ldm, wmma::mem_row_major);
}

__global__ void async_kernel(const float* src, float* out, int mode) {
  BRNNSEG_DYNAMIC_SMEM(float, s);
  if (mode == 0) {  // clean: copy, wait, barrier, read
    brnnseg::sim::async_copy16(s + threadIdx.x * 4, src + threadIdx.x * 4);
    brnnseg::sim::async_copy_wait_all();
    __syncthreads();
    out[threadIdx.x] = s[((threadIdx.x + 1) % blockDim.x) * 4];
  } else if (mode == 1) {  // misaligned source
    brnnseg::sim::async_copy16(s + threadIdx.x * 4, src + 1);
    brnnseg::sim::async_copy_wait_all();
  } else if (mode == 2) {  // read before the wait
    brnnseg::sim::async_copy16(s + threadIdx.x * 4, src + threadIdx.x * 4);
    out[threadIdx.x] = s[threadIdx.x * 4];
    brnnseg::sim::async_copy_wait_all();
  } else {  // never waits
    brnnseg::sim::async_copy16(s + threadIdx.x * 4, src + threadIdx.x * 4);
  }
}

// Global-memory initcheck: reads through gmem_ptr of a poisoned buffer. mode 0: reads only what the host
// wrote; 1: reads an element nobody wrote; 2: cp.async from an unwritten chunk; 3: writes, then reads back.
__global__ void global_read_kernel(brnnseg::sim::GlobalPtr<float> buf, float* out, int mode) {
  BRNNSEG_DYNAMIC_SMEM(float, s);
  const int i = int(threadIdx.x);
  if (mode == 0) out[i] = buf[i];
  if (mode == 1) out[i] = buf[i + 32];
  if (mode == 2) {
    brnnseg::sim::async_copy16(s + i * 4, brnnseg::sim::GlobalPtr<const float>(buf + 32 + i * 4));
    brnnseg::sim::async_copy_wait_all();
  }
  if (mode == 3) {
    buf[32 + i] = float(i);
    out[i] = buf[32 + i];
  }
}

template <typename F>
static void expect_fault(const char* what, const char* needle, F&& f) {
  try {
    f();
    CHECK(false, "planted fault '%s' was not reported", what);
  } catch (const std::runtime_error& e) {
    CHECK(std::strstr(e.what(), needle) != nullptr, "planted '%s': message '%s' lacks '%s'", what, e.what(), needle);
    std::printf("planted %-30s -> %s\n", what, e.what());
  }
}

static void planted_faults() {
  alignas(64) static float m[1024] = {};
  expect_fault("misaligned wmma pointer", "256-bit", [&] {
    BRNNSEG_LAUNCH(misaligned_kernel, "misaligned_kernel", 0, dim3(1), dim3(32), 0, nullptr, m, 1, 16u, false);
  });
  expect_fault("ldm not 16 bytes", "multiple of 16 bytes", [&] {
    BRNNSEG_LAUNCH(misaligned_kernel, "misaligned_kernel", 0, dim3(1), dim3(32), 0, nullptr, m, 0, 18u, false);
  });
  expect_fault("pointer differs between lanes", "warp-uniform", [&] {
    BRNNSEG_LAUNCH(misaligned_kernel, "misaligned_kernel", 0, dim3(1), dim3(32), 0, nullptr, m, 0, 16u, true);
  });
  expect_fault("wmma in a partial warp", "full warp", [&] {
    BRNNSEG_LAUNCH(misaligned_kernel, "misaligned_kernel", 0, dim3(1), dim3(48), 0, nullptr, m, 0, 16u, false);
  });
  BRNNSEG_LAUNCH(misaligned_kernel, "misaligned_kernel", 0, dim3(2), dim3(64), 0, nullptr, m, 0, 16u, false);

  alignas(64) static float src[64 * 4];
  for (int i = 0; i < 64 * 4; ++i) src[i] = float(i);
  std::vector<float> out(64, -1.f);
  const size_t bytes = 64 * 4 * sizeof(float);
  BRNNSEG_LAUNCH(async_kernel, "async_kernel", 0, dim3(1), dim3(64), bytes, nullptr, src, out.data(), 0);
  CHECK(out[0] == 4.f && out[63] == 0.f, "cp.async clean copy gave %g, %g", out[0], out[63]);
  expect_fault("misaligned cp.async", "16-byte aligned", [&] {
    BRNNSEG_LAUNCH(async_kernel, "async_kernel", 0, dim3(1), dim3(64), bytes, nullptr, src, out.data(), 1);
  });
  expect_fault("read before cp.async wait", "no thread of the block has written", [&] {
    BRNNSEG_LAUNCH(async_kernel, "async_kernel", 0, dim3(1), dim3(64), bytes, nullptr, src, out.data(), 2);
  });
  expect_fault("cp.async never waited for", "never waited", [&] {
    BRNNSEG_LAUNCH(async_kernel, "async_kernel", 0, dim3(1), dim3(64), bytes, nullptr, src, out.data(), 3);
  });

  // A buffer of 32 + 128 floats poisoned as an op's buffer is; the host writes the first 32.
  alignas(64) static float g[160];
  brnnseg::sim::poison_global("planted", "(160) float", g, sizeof(g), 4, brnnseg::sim::kPoisonF32);
  for (int i = 0; i < 32; ++i) g[i] = float(i);
  std::vector<float> o(32, -1.f);
  BRNNSEG_LAUNCH(global_read_kernel, "global_read_kernel", 0, dim3(1), dim3(32), 512, nullptr, g, o.data(), 0);
  CHECK(o[31] == 31.f, "reading written global memory gave %g", o[31]);
  expect_fault("read of unwritten global memory", "uninitialized global memory: buffer 'planted' (160) float, element ", [&] {
    BRNNSEG_LAUNCH(global_read_kernel, "global_read_kernel", 0, dim3(1), dim3(32), 512, nullptr, g, o.data(), 1);
  });
  expect_fault("cp.async of unwritten global memory", "uninitialized global memory: buffer 'planted'", [&] {
    BRNNSEG_LAUNCH(global_read_kernel, "global_read_kernel", 0, dim3(1), dim3(32), 512, nullptr, g, o.data(), 2);
  });
  BRNNSEG_LAUNCH(global_read_kernel, "global_read_kernel", 0, dim3(1), dim3(32), 512, nullptr, g, o.data(), 3);
  CHECK(o[5] == 5.f, "a kernel's own write read back gave %g", o[5]);
  // An ordinary NaN written by the host is data, not poison: no fault.
  g[3] = std::numeric_limits<float>::quiet_NaN();
  BRNNSEG_LAUNCH(global_read_kernel, "global_read_kernel", 0, dim3(1), dim3(32), 512, nullptr, g, o.data(), 0);
  CHECK(std::isnan(o[3]), "a written NaN read back as %g", o[3]);
}

int main() {
  using R = wmma::row_major;
  using C = wmma::col_major;
  using tf32 = wmma::precision::tf32;
  check_mma<float, tf32, 8, R, R>("tf32 A row B row", 1, false, false);
  check_mma<float, tf32, 8, C, R>("tf32 A col B row, C col", 3, true, false);
  check_mma<float, tf32, 8, R, C>("tf32 A row B col, D col", 2, false, true);
#if defined(__x86_64__) && defined(__FLT16_MAX__)  // _Float16 in C++: x86-64 GCC >= 12 (not aarch64 GCC 12)
  check_mma<_Float16, _Float16, 16, R, R>("half A row B row", 4, false, false);
  check_mma<_Float16, _Float16, 16, C, C>("half A col B col, C and D col", 1, true, true);
#else
  std::printf("mma half: skipped (no _Float16 in this compiler's C++)\n");
#endif
  check_layout_and_rounding();
  planted_faults();
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("wmma and cp.async emulation: all checks passed\n");
  return 0;
}
