// What the tensor-core sweep kernels (sweep_fwd_mma_kernel.cuh, sweep_bwd_mma_kernel.cuh) share: the
// wmma operand type of each storage type, and the per-step product [16 lines x K] . [K x N] with the B
// operand (W_hh) resident in registers. Under nvcc this is <mma.h>; under the simulator the same
// source runs on the exact emulation of simt_sim_wmma.h.
#pragma once
#include "cuda/sweep_common.cuh"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

namespace brnnseg {

namespace wmma = nvcuda::wmma;

// 16-byte asynchronous copies global -> shared (cp.async.cg: bypasses L1), their groups, and the waits
// for all of a thread's outstanding ones or all but its newest N groups; emulated in the simulator as
// copies completed at the wait that covers them.
#if defined(__CUDACC__)
__device__ __forceinline__ void async_copy16(void* dst_smem, const void* src) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(dst_smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void async_copy_wait_all() {
  asm volatile("cp.async.commit_group;\ncp.async.wait_all;\n" ::: "memory");
}
// Closes this thread's open group of copies; waits until at most N of its newest groups are pending.
__device__ __forceinline__ void async_copy_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void async_copy_wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// A hint that brings a global address towards L2 for a later load (no register, no wait).
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }
#else
using ::brnnseg::sim::async_copy16;
using ::brnnseg::sim::async_copy_commit;
using ::brnnseg::sim::async_copy_wait_all;
using ::brnnseg::sim::async_copy_wait_group;
template <typename P>
inline void prefetch_l2(const P&) {}
#endif

// The wmma element type of a storage type T (c10::Half / c10::BFloat16 have the bits of __half /
// __nv_bfloat16; float runs TF32), the MMA's k, and float -> operand conversion.
template <typename T>
struct MmaOperand;

template <>
struct MmaOperand<float> {
  using elem = float;
  using frag = wmma::precision::tf32;
  static constexpr int kK = 8;
  __device__ __forceinline__ static elem from_float(float v) { return v; }
  template <typename F>
  __device__ __forceinline__ static void round(F& f) {  // TF32 operands: rounded, not truncated
    for (int i = 0; i < f.num_elements; ++i) f.x[i] = wmma::__float_to_tf32(f.x[i]);
  }
  // 3xTF32 (CUTLASS's tfloat32x3): f = big + small, big its TF32 rounding, small the TF32 rounding of
  // the exact remainder f - big. big * big' + big * small' + small * big' misses only small * small'
  // (2^-22 relative) and the accumulation's float32 rounding: float32 accuracy on TF32 tensor cores.
  template <typename F>
  __device__ __forceinline__ static void split(F& big, F& small) {
    for (int i = 0; i < big.num_elements; ++i) {
      const float v = big.x[i], hi = wmma::__float_to_tf32(v);
      big.x[i] = hi;
      small.x[i] = wmma::__float_to_tf32(v - hi);
    }
  }
};

#if defined(__CUDACC__)
template <>
struct MmaOperand<c10::Half> {
  using elem = __half;
  using frag = __half;
  static constexpr int kK = 16;
  __device__ __forceinline__ static elem from_float(float v) { return __float2half_rn(v); }
  template <typename F>
  __device__ __forceinline__ static void round(F&) {}
};
template <>
struct MmaOperand<c10::BFloat16> {
  using elem = __nv_bfloat16;
  using frag = __nv_bfloat16;
  static constexpr int kK = 16;
  __device__ __forceinline__ static elem from_float(float v) { return __float2bfloat16_rn(v); }
  template <typename F>
  __device__ __forceinline__ static void round(F&) {}
};
#elif defined(BRNNSEG_SIM_HALF_TYPES)
// The simulator build with torch's headers: c10's types themselves are the operands.
template <typename T>
struct MmaOperandHalfSim {
  using elem = T;
  using frag = T;
  static constexpr int kK = 16;
  static elem from_float(float v) { return elem(v); }
  template <typename F>
  static void round(F&) {}
};
template <>
struct MmaOperand<c10::Half> : MmaOperandHalfSim<c10::Half> {};
template <>
struct MmaOperand<c10::BFloat16> : MmaOperandHalfSim<c10::BFloat16> {};
#endif

// The recurrent product of one CTA and step. Warp w owns column tiles [n0, n0 + nt) (those < ntiles)
// and k tiles [k0, k0 + kpw) of B, held in registers from load() on; run() multiplies the A operand
// in shared memory ([16][lda], the element type of Op) by them and stores each warp's partial
// product to its k-split slice of P ([ksplit][16][ldp] floats). kSplit (float only): 3xTF32, B held
// as its high and low TF32 parts, A split as it is loaded, three products per tile: the high x high
// product (exact in float) in one accumulator, the two cross terms in a second, added at the end.
template <typename T, int kNt, int kKpw, int kGroups, int kNtiles, bool kSplit = false>
struct ResidentProduct {
  using Op = MmaOperand<T>;
  using E = typename Op::elem;
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, Op::kK, typename Op::frag, wmma::row_major>;
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, Op::kK, typename Op::frag, wmma::row_major>;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, Op::kK, float>;
  static_assert(!kSplit || sizeof(E) == 4, "3xTF32 is for float storage");

  FragB w[kNt][kKpw];
  FragB w_lo[kSplit ? kNt : 1][kSplit ? kKpw : 1];  // 3xTF32: the low parts of w
  int n0, k0, kslice;
  static constexpr int ntiles = kNtiles;

  __device__ __forceinline__ ResidentProduct() {
    const int warp = threadIdx.x / 32;
    n0 = (warp % kGroups) * kNt;
    kslice = warp / kGroups;
    k0 = kslice * kKpw;
  }

  // B: row-major [K][ldb] in global memory (one direction's padded W_hh).
  __device__ __forceinline__ void load(const E* b, int ldb) {
BRNNSEG_UNROLL
    for (int i = 0; i < kNt; ++i)
BRNNSEG_UNROLL
      for (int k = 0; k < kKpw; ++k)
        if (n0 + i < ntiles) {  // warp-uniform
          wmma::load_matrix_sync(w[i][k], b + int64_t(k0 + k) * Op::kK * ldb + (n0 + i) * 16, ldb);
          if constexpr (kSplit)
            Op::split(w[i][k], w_lo[i][k]);
          else
            Op::round(w[i][k]);
        }
  }

  template <typename APtr, typename PPtr>
  __device__ __forceinline__ void run(const APtr& a, int lda, const PPtr& p, int ldp) const {
    Acc acc[kNt];
    Acc acc_lo[kSplit ? kNt : 1];  // 3xTF32: the cross terms, summed apart (their roundings stay 2^-11 smaller)
BRNNSEG_UNROLL
    for (int i = 0; i < kNt; ++i) {
      wmma::fill_fragment(acc[i], 0.f);
      if constexpr (kSplit) wmma::fill_fragment(acc_lo[i], 0.f);
    }
BRNNSEG_UNROLL
    for (int k = 0; k < kKpw; ++k) {
      FragA fa;
      wmma::load_matrix_sync(fa, a + (k0 + k) * Op::kK, lda);
      if constexpr (kSplit) {
        FragA fa_lo;
        Op::split(fa, fa_lo);
BRNNSEG_UNROLL
        for (int i = 0; i < kNt; ++i)
          if (n0 + i < ntiles) {  // big x big is exact in float: acc rounds as a float32 dot product
            wmma::mma_sync(acc_lo[i], fa_lo, w[i][k], acc_lo[i]);
            wmma::mma_sync(acc_lo[i], fa, w_lo[i][k], acc_lo[i]);
            wmma::mma_sync(acc[i], fa, w[i][k], acc[i]);
          }
      } else {
        Op::round(fa);
BRNNSEG_UNROLL
        for (int i = 0; i < kNt; ++i)
          if (n0 + i < ntiles) wmma::mma_sync(acc[i], fa, w[i][k], acc[i]);
      }
    }
    if constexpr (kSplit)
BRNNSEG_UNROLL
      for (int i = 0; i < kNt; ++i)  // accumulators of one shape share their element layout
        for (int e = 0; e < acc[i].num_elements; ++e) acc[i].x[e] += acc_lo[i].x[e];
BRNNSEG_UNROLL
    for (int i = 0; i < kNt; ++i)
      if (n0 + i < ntiles) wmma::store_matrix_sync(p + kslice * 16 * ldp + (n0 + i) * 16, acc[i], ldp, wmma::mem_row_major);
  }
};

// Per-line offsets of the CTA's lines at time 0 (shared memory, [3][16]): position, y and grad_y
// element offsets; time t adds t times the time stride of each.
struct LineOffsets {
  template <typename Ptr>
  __device__ __forceinline__ static void fill(const Ptr& s, const SweepGeometry& geo, int64_t l0, int L, int64_t y_sN,
                                              int64_t y_sH, int64_t y_sW, int64_t g_sN, int64_t g_sH, int64_t g_sW) {
    for (int l = threadIdx.x; l < L; l += blockDim.x) {
      s[l] = geo.pos(l0 + l, 0);
      s[kMmaLines + l] = geo.strided_offset(l0 + l, 0, y_sN, y_sH, y_sW);
      s[2 * kMmaLines + l] = geo.strided_offset(l0 + l, 0, g_sN, g_sH, g_sW);
    }
  }
};

// Compile-time shape of a tensor-core kernel instantiation (kSplit: 3xTF32, float storage only).
template <typename T, typename Cell, int kKt, bool kBackward, bool kSplit = false>
struct MmaShape {
  static constexpr int G = Cell::kGates;
  static constexpr int kHidPad = 16 * kKt;
  static constexpr int kK = kBackward ? G * kHidPad : kHidPad;
  static constexpr int kN = kBackward ? kHidPad : G * kHidPad;
  static constexpr MmaTiling kTiling =
      kBackward ? mma_bwd_tiling<T>(G, kKt, kSplit) : mma_fwd_tiling<T>(G, kKt, kSplit);
  static constexpr bool kFits = kTiling.warps > 0;
  static constexpr int kThreads = kFits ? 32 * kTiling.warps : 32;
  static constexpr int kNt = kFits ? kTiling.nt : 1, kKpw = kFits ? kTiling.kpw : 1;
  static constexpr int kGroups = kFits ? kTiling.groups() : 1, kNtiles = kTiling.ntiles, kKsplit = kTiling.ksplit;
  using Product = ResidentProduct<T, kNt, kKpw, kGroups, kNtiles, kSplit>;
  static constexpr int kLda = kK + mma_a_pad<T>(), kLdp = kN + 4;
  // (line, unit) pairs of the gate math per thread.
  static constexpr int kPairs = (kMmaLines * kHidPad + kThreads - 1) / kThreads;
  static constexpr MmaSmem kSmem = mma_smem<T>(kBackward, G, kKt, Cell::kHasCellState, 2, kSplit);
};

// The gate math's (line, unit) pair i of this thread: units fastest (coalesced gx, workspace and
// channels_last outputs).
struct MmaPair {
  int l, u;
  bool ok;
  __device__ __forceinline__ MmaPair(int i, int threads, int hid_pad, int hid, int L) {
    const int q = threadIdx.x + i * threads;
    l = q / hid_pad;
    u = q - l * hid_pad;
    ok = l < L && u < hid;
  }
};

// What both tensor-core kernels set up first: the CTA's slice of 16 lines and the shared-memory buffers
// they have in common -- the A operand (forward h_prev, backward dgates), the K-split partial products,
// the float per-unit rows (forward h, backward dh_direct), the cell rows (c / dc, cells with a state) and
// the per-line offsets (LineOffsets) -- at the offsets of the instantiation's MmaSmem.
template <typename T, typename Sh, bool kHasCellState>
struct MmaCta {
  using E = typename MmaOperand<T>::elem;
  int64_t lines, steps, l0;  // lines of the sweep, steps per line, first line of this CTA
  int L;                     // lines of this CTA (the last CTA's may be fewer than 16)
  smem_ptr<E> a;             // [16][kLda]
  smem_ptr<float> part;      // [kKsplit][16][kLdp]
  smem_ptr<float> state;     // [16][kHidPad]
  smem_ptr<float> cell;      // [16][kHidPad], cells with a state
  smem_ptr<int64_t> line;    // per-line offsets

  template <typename SmemBase>  // unsigned char* under nvcc, the simulator's checked pointer under g++
  __device__ __forceinline__ MmaCta(const SweepGeometry& geo, SmemBase smem)
      : lines(geo.lines()),
        steps(geo.steps()),
        l0(int64_t(blockIdx.x) * kMmaLines),
        L(static_cast<int>(lines - l0 < kMmaLines ? lines - l0 : kMmaLines)),
        a(smem_at<E>(smem, Sh::kSmem.a)),
        part(smem_at<float>(smem, Sh::kSmem.p)),
        state(smem_at<float>(smem, Sh::kSmem.state)),
        cell(smem_at<float>(smem, Sh::kSmem.cell)),
        line(smem_at<int64_t>(smem, Sh::kSmem.line)) {}

  // Zeroes the operand, the partial products and the per-unit rows (padding included: the product reads
  // the padded columns, the gate math never writes them). A barrier must follow before they are read.
  __device__ __forceinline__ void zero(int threads) const {
    for (int i = threadIdx.x; i < kMmaLines * Sh::kLda; i += threads) a[i] = MmaOperand<T>::from_float(0.f);
    for (int i = threadIdx.x; i < Sh::kKsplit * kMmaLines * Sh::kLdp; i += threads) part[i] = 0.f;
    for (int i = threadIdx.x; i < kMmaLines * Sh::kHidPad; i += threads) {
      state[i] = 0.f;
      if constexpr (kHasCellState) cell[i] = 0.f;
    }
  }
};

}  // namespace brnnseg
