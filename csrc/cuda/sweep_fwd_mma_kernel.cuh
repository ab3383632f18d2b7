// The tensor-core forward kernel of the line sweeps, templated on the storage type, the cell and
// kt = hid_pad / 16 (hidden <= 128). CTA (tile, direction) owns kMmaLines = 16 lines for all time
// steps. W_hh^T is loaded once into registers as wmma B fragments split over the warps
// (ResidentProduct, sweep_mma.cuh); each step:
//   1. product: every warp multiplies h_prev (16 x hid_pad, the operand-type copy in shared memory)
//      by its fragments on tensor cores and stores its partial product to shared memory;
//   2. barrier; gate math: each thread takes (line, unit) pairs, units fastest, sums the partial
//      products, adds the biases and the input projections (already in shared memory), runs the
//      cell's forward (the header the CPU uses) and writes h (float state and operand copy), the
//      saved slots and, unless y is stored in step 3, y;
//   3. wait for this thread's asynchronous copies, barrier; NCHW column sweeps: y of this step is
//      stored from the float state with lines fastest (consecutive addresses) before the next product.
// The input projections are copied global -> shared with cp.async into a ring of p.gx_stages buffers
// (the host lays them out padded, (P, 2, G, hid_pad), so a line's are whole 16-byte chunks): at the
// start of step s those of step s + D (D = gx_stages - 1, BRNNSEG_MMA_PREFETCH), one cp.async group a
// step, and the end of step s waits for step s + 1's group only. D = 1: the copy issued at the start of
// a step must land within it; D = 2: within two (issue 22's candidate for the fixed cost per step).
// Half/bfloat16: operands in that type, float accumulation. Float: TF32 operands (rounded), float
// accumulation. The cell state and all gate math stay float.
#pragma once
#include "cuda/sweep_mma.cuh"

namespace brnnseg {

template <typename T, typename Cell, int kKt, bool kSplit = false>
__global__ void __launch_bounds__(MmaShape<T, Cell, kKt, false, kSplit>::kThreads, 1)
    sweep_fwd_mma_kernel(SweepBatch<SweepFwdParams<T>> batch) {
  using Sh = MmaShape<T, Cell, kKt, false, kSplit>;
  using Op = MmaOperand<T>;
  using E = typename Op::elem;
  constexpr int G = Cell::kGates, S = Cell::kSaved, HP = Sh::kHidPad, N = Sh::kN;
  constexpr int LDA = Sh::kLda, LDP = Sh::kLdp, KS = Sh::kKsplit, kPairs = Sh::kPairs;
  if (int(blockIdx.x) >= batch.blocks[blockIdx.z]) return;  // uniform per CTA: before any barrier
  const SweepFwdParams<T>& p = batch.sweep[blockIdx.z];
  const SweepGeometry& geo = p.geo;
  const int hid = p.hid, Gh = G * hid, d = blockIdx.y, threads = blockDim.x;

  BRNNSEG_DYNAMIC_SMEM(unsigned char, smem);
  const MmaCta<T, Sh, Cell::kHasCellState> cta(geo, smem);
  const int64_t lines = cta.lines, T_len = cta.steps, l0 = cta.l0;
  const int L = cta.L;
  const smem_ptr<E> a_s = cta.a;          // [16][LDA] h_prev, operand type
  const smem_ptr<float> p_s = cta.part;   // [KS][16][LDP] partial products
  const smem_ptr<float> h_s = cta.state;  // [16][HP] h, float
  const smem_ptr<float> c_s = cta.cell;   // [16][HP] c (cells with a state)
  const smem_ptr<float> b_s = smem_at<float>(smem, Sh::kSmem.bias);  // [2][N]: b_ih, b_hh per padded column
  const smem_ptr<T> gx_s = smem_at<T>(smem, Sh::kSmem.gx);            // [stages][16][N] input projections
  const smem_ptr<int64_t> pos0 = cta.line;                            // [16] position of t = 0
  const smem_ptr<int64_t> y0 = pos0 + kMmaLines;                      // [16] y offset of t = 0

  typename Sh::Product prod;
  prod.load(reinterpret_cast<const E*>(gmem_raw(p.w_mma)) + int64_t(d) * HP * N, N);
  cta.zero(threads);
  for (int i = threadIdx.x; i < N; i += threads) {
    const int g = i / HP, u = i - g * HP;
    b_s[i] = u < hid ? p.b_ih[d * Gh + g * hid + u] : 0.f;
    b_s[N + i] = u < hid ? p.b_hh[d * Gh + g * hid + u] : 0.f;
  }

  LineOffsets::fill(pos0, geo, l0, L, p.y_sN, p.y_sH, p.y_sW, p.y_sN, p.y_sH, p.y_sW);
  const int64_t ts = geo.time_stride(), y_ts = geo.axis == 3 ? p.y_sW : p.y_sH;
  __syncthreads();  // line offsets complete

  // y is stored from shared memory with lines fastest when neighbouring lines are neighbours in memory
  // (NCHW column sweeps); otherwise by the gate math, units fastest (channels_last: contiguous).
  const int64_t y_line_stride = geo.axis == 3 ? p.y_sH : p.y_sW;
  const bool y_lines_fastest = y_line_stride == 1 && p.y_sC != 1;

  // Waits until at most `pending` (0 or 1) of this thread's newest copy groups are in flight.
  auto wait_gx_groups = [](int pending) {
    if (pending == 0)
      async_copy_wait_group<0>();
    else
      async_copy_wait_group<1>();
  };
  // The input projections of the CTA's lines at step t into buffer `buf`: (P, 2, N) padded rows of N
  // elements, 16-byte chunks, asynchronously.
  constexpr int kChunks = N * int(sizeof(T)) / 16;  // per line
  auto copy_gx = [&](int64_t t, int buf) {
    for (int i = threadIdx.x; i < L * kChunks; i += threads) {
      const int l = i / kChunks, c = i - l * kChunks;
      const auto src = p.gx + ((pos0[l] + t * ts) * 2 + d) * N + c * (16 / int(sizeof(T)));
      async_copy16(gx_s + (buf * kMmaLines + l) * N + c * (16 / int(sizeof(T))), src);
    }
  };
  const int stages = p.gx_stages, ahead = stages - 1;  // 2 or 3 buffers; prefetch distance 1 or 2
  for (int k = 0; k < ahead; ++k) {  // steps 0 .. ahead-1, one group each (empty past the end)
    if (k < T_len) copy_gx(step_time(d, k, T_len), k);
    async_copy_commit();
  }
  wait_gx_groups(ahead - 1);  // step 0's
  __syncthreads();

  for (int64_t s = 0; s < T_len; ++s) {
    const int64_t t = step_time(d, s, T_len);
    const int buf = int(s % stages);
    // Step s + ahead's projections into the buffer step s - 1 read (every thread is past its gate math:
    // the barrier that ended step s - 1). One group a step, empty at the end, so the waits count evenly.
    if (s + ahead < T_len) copy_gx(step_time(d, s + ahead, T_len), int((s + ahead) % stages));
    async_copy_commit();
    if (s > 0) prod.run(a_s, LDA, p_s, LDP);  // s = 0: h_prev = 0, p_s holds zeros
    __syncthreads();  // partial products complete
BRNNSEG_NO_UNROLL
    for (int i = 0; i < kPairs; ++i) {
      const MmaPair q(i, threads, HP, hid, L);
      if (!q.ok) continue;
      const int64_t line = l0 + q.l;
      float ax[G], ah[G], saved[S];
BRNNSEG_UNROLL
      for (int g = 0; g < G; ++g) {
        const int col = g * HP + q.u;
        float acc = 0.f;
BRNNSEG_UNROLL
        for (int k = 0; k < KS; ++k) acc += p_s[(k * kMmaLines + q.l) * LDP + col];
        ax[g] = to_float(T(gx_s[(buf * kMmaLines + q.l) * N + col])) + b_s[col];
        ah[g] = acc + b_s[N + col];
      }
      const int si = q.l * HP + q.u;
      float c = 0.f;
      if constexpr (Cell::kHasCellState) c = c_s[si];
      const float h = Cell::forward(ax, ah, float(h_s[si]), c, saved);
      if constexpr (Cell::kHasCellState) c_s[si] = c;
      h_s[si] = h;
      a_s[q.l * LDA + q.u] = Op::from_float(h);
      if (p.ws) {
        const auto ws = p.ws + ((int64_t(d) * T_len + t) * lines + line) * (S * hid) + q.u;
BRNNSEG_UNROLL
        for (int k = 0; k < S; ++k) ws[k * hid] = saved[k];
      }
      if (!y_lines_fastest) p.y[y0[q.l] + t * y_ts + (int64_t(d) * hid + q.u) * p.y_sC] = static_cast<T>(h);
    }
    wait_gx_groups(ahead - 1);  // this thread's copies of step s + 1 (step s + 2's may stay in flight)
    __syncthreads();            // h and the next input projections complete before anyone reads them
    if (y_lines_fastest)
      for (int i = threadIdx.x; i < kMmaLines * HP; i += threads) {
        const int u = i / kMmaLines, l = i - u * kMmaLines;
        if (l < L && u < hid)
          p.y[y0[l] + t * y_ts + (int64_t(d) * hid + u) * p.y_sC] = static_cast<T>(float(h_s[l * HP + u]));
      }
  }
}

}  // namespace brnnseg
