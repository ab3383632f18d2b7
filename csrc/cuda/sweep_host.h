// Tensor-level host code of the device sweeps: the input-projection GEMM, buffers, the launch, and the
// weight/input-gradient GEMMs, templated on the cell and the storage type. The same code drives the
// CUDA kernels (through sweep_registration.h in sweep_cuda.cpp: CUDA tensors, cuBLAS GEMMs) and the
// simulator build of the same kernels (csrc/sim/sweep_sim.cpp: CPU tensors). It sees only the
// launchers' declarations (sweep_launch.h), never the kernels.
#pragma once
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/types.h>

#include <ATen/Context.h>

#include <cstdlib>
#include <limits>
#include <string>

#include "brnnseg/checks.h"
#include "cuda/sweep_launch.h"

namespace brnnseg::device {

using at::Tensor;

// A buffer the op allocates for the kernels (projections, workspace, outputs, gradients). Under the
// simulator (simt_sim.h) it starts poisoned -- NaNs with a payload of their own -- and registered by
// `name`: a kernel reading an element of it that nothing wrote is a fault naming the buffer, the element
// and the thread (the simulator's initcheck), and an element left unwritten fails every comparison.
inline std::string buffer_desc(const Tensor& t) {
  std::string s = "(";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + ") " + std::string(c10::toString(t.scalar_type()));
}
inline Tensor device_buffer(const char* name, Tensor t) {
#if defined(BRNNSEG_SIMT_SIM)
  if (t.numel()) {
    const auto st = t.scalar_type();
    TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, "device_buffer: unexpected dtype");
    const uint32_t pattern = st == at::kHalf ? sim::kPoisonF16 : st == at::kBFloat16 ? sim::kPoisonBF16 : sim::kPoisonF32;
    sim::poison_global(name, buffer_desc(t), t.data_ptr(), size_t(t.numel()) * size_t(t.element_size()),
                       size_t(t.element_size()), pattern);  // fresh, dense (any memory format)
  }
#else
  (void)name;
#endif
  return t;
}

inline Tensor positions_view(const Tensor& t) { return t.flatten(2).transpose(1, 2); }

// sum_n A[n]^T B[n] for A (N, P, a), B (N, P, b): one GEMM when both flatten to (N*P, .).
inline Tensor positions_tn(const Tensor& A, const Tensor& B) {
  auto flat = [](const Tensor& t) { return t.size(0) == 1 || t.stride(0) == t.size(1) * t.stride(1); };
  if (flat(A) && flat(B)) return A.reshape({-1, A.size(2)}).t().mm(B.reshape({-1, B.size(2)}));
  return at::bmm(A.transpose(1, 2), B).sum(0);
}

inline bool is_channels_last(const Tensor& t) {
  return !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// ---- which recurrence kernel runs ---------------------------------------------------------------
// BRNNSEG_CUDA_RECURRENCE = auto (default) | fma | mma, read at every call (plan_recurrence in
// sweep_plan.h). float32 runs TF32 tensor cores under `auto` when torch.backends.cuda.matmul.allow_tf32
// is set: the flag that governs our other float32 GEMMs (the input projections, the weight gradients),
// and off by default, so float32 results stay float32-accurate unless the user opts in. (cuDNN's RNNs
// follow torch.backends.cudnn.allow_tf32, on by default; the benchmark states both.)
// force_global_weights (a simulator switch for the FP32-core kernels' L2 path) implies fma.
template <typename Cell, typename T>
LaunchConfig plan_sweep(bool backward, int hid, int64_t lines, size_t smem_limit, bool force_global_weights) {
  const char* env = std::getenv("BRNNSEG_CUDA_RECURRENCE");
  return plan_recurrence<T>(env && *env ? env : "auto", at::globalContext().allowTF32CuBLAS(), backward,
                            Cell::kGates, Cell::kHasCellState, hid, lines, smem_limit, force_global_weights);
}

// The B operand of the tensor-core kernels, zero-padded per gate to hid_pad = 16 * kt:
// forward (2, hid_pad, G*hid_pad) = W_hh^T, backward (2, G*hid_pad, hid_pad) = W_hh.
inline Tensor mma_weights(const Tensor& w_hh, int G, int kt, bool backward) {
  const int64_t hid = w_hh.size(2), hp = 16 * kt;
  Tensor w = at::constant_pad_nd(w_hh.reshape({2, G, hid, hid}), {0, hp - hid, 0, hp - hid});  // (2, G, j, k)
  w = backward ? w.reshape({2, G * hp, hp}) : w.permute({0, 3, 1, 2}).reshape({2, hp, G * hp});
  return w.contiguous();
}

// Tensors one sweep's kernel parameters point into (alive until the launch is queued).
struct FwdBuffers {
  Tensor gx, w_hh_t, w_mma, bi, bh;
};

// Parameters of one forward sweep of x writing channels [channel0, channel0 + 2*hid) of y.
template <typename Cell, typename T>
SweepFwdParams<T> fwd_params(const Tensor& x, const Tensor& w_ih, const Tensor& w_hh,
                             const std::optional<Tensor>& b_ih, const std::optional<Tensor>& b_hh, int64_t axis,
                             const Tensor& y, int64_t channel0, const Tensor& ws, const LaunchConfig& cfg,
                             FwdBuffers& keep) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), hid = w_hh.size(2);
  const int64_t Gh = Cell::kGates * hid;
  const auto f32 = x.options().dtype(at::kFloat);
  // Input projections of every position and both directions: one GEMM (tensor cores on a GPU)
  // reading NCHW or channels_last x in place (a transposed operand, no layout copy).
  if (cfg.recurrence == Recurrence::kMma) {
    // The tensor-core kernel copies each line's projections in 16-byte chunks: rows padded per gate to
    // hid_pad, (P, 2, G, hid_pad), from W_ih padded with zero rows (the padding costs GEMM work only).
    const int64_t hp = 16 * cfg.kt;
    const Tensor w_pad = at::constant_pad_nd(w_ih.reshape({2, Cell::kGates, hid, C}), {0, 0, 0, hp - hid});
    keep.gx = device_buffer("gx", at::empty({N, H * W, 2 * Cell::kGates * hp}, x.options()));
    at::matmul_out(keep.gx, positions_view(x), w_pad.reshape({2 * Cell::kGates * hp, C}).t());
  } else {
    keep.gx = device_buffer("gx", at::empty({N, H * W, 2 * Gh}, x.options()));
    at::matmul_out(keep.gx, positions_view(x), w_ih.reshape({2 * Gh, C}).t());
  }
  if (cfg.recurrence == Recurrence::kMma)
    keep.w_mma = mma_weights(w_hh, Cell::kGates, cfg.kt, false);
  else
    keep.w_hh_t = w_hh.transpose(1, 2).contiguous();
  keep.bi = b_ih.has_value() ? b_ih->to(at::kFloat).contiguous() : at::zeros({2, Gh}, f32);
  keep.bh = b_hh.has_value() ? b_hh->to(at::kFloat).contiguous() : at::zeros({2, Gh}, f32);
  SweepFwdParams<T> p;
  p.geo = SweepGeometry{N, H, W, static_cast<int>(axis)};
  p.hid = static_cast<int>(hid);
  p.tile = 0;
  p.smem_gates = 0;
  p.gx_stages = 2;
  p.gx = keep.gx.data_ptr<T>();
  p.w_hh_t = keep.w_hh_t.defined() ? keep.w_hh_t.data_ptr<T>() : nullptr;
  p.w_mma = keep.w_mma.defined() ? keep.w_mma.data_ptr<T>() : nullptr;
  p.b_ih = keep.bi.data_ptr<float>();
  p.b_hh = keep.bh.data_ptr<float>();
  p.y = y.data_ptr<T>() + channel0 * y.stride(1);
  p.y_sN = y.stride(0);
  p.y_sC = y.stride(1);
  p.y_sH = y.stride(2);
  p.y_sW = y.stride(3);
  p.ws = ws.numel() ? ws.data_ptr<float>() : nullptr;
  return p;
}

template <typename Cell>
Tensor new_workspace(const Tensor& x, int64_t hid, int64_t axis, bool training) {
  const SweepGeometry geo{x.size(0), x.size(2), x.size(3), static_cast<int>(axis)};
  const auto f32 = x.options().dtype(at::kFloat);
  return training ? device_buffer("workspace", at::empty({2, geo.steps(), geo.lines(), Cell::kSaved * hid}, f32))
                  : at::empty({0}, f32);
}

template <typename Cell, typename T>
void launch_forward(SweepBatch<SweepFwdParams<T>>& b, const LaunchConfig& cfg, void* stream) {
  if (b.sweep[0].geo.positions() == 0) return;
  set_batch_blocks(b, cfg);
  if (cfg.recurrence == Recurrence::kMma)
    sweep_fwd_mma_launch<Cell, T>(b, cfg, stream);
  else
    sweep_fwd_launch<Cell, T>(b, cfg, stream);
}

// Forward of one sweep. T: storage type.
template <typename Cell, typename T>
std::tuple<Tensor, Tensor> sweep_forward(const Tensor& x, const Tensor& w_ih,
                                         const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                         const std::optional<Tensor>& b_hh, int64_t axis, bool channels_last,
                                         bool training, size_t smem_limit, void* stream,
                                         bool force_global_weights = false) {
  const int64_t hid = w_hh.size(2);
  auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  Tensor y = device_buffer("y", at::empty({x.size(0), 2 * hid, x.size(2), x.size(3)}, x.options().memory_format(fmt)));
  Tensor ws = new_workspace<Cell>(x, hid, axis, training);
  const SweepGeometry geo{x.size(0), x.size(2), x.size(3), static_cast<int>(axis)};
  const LaunchConfig cfg = plan_sweep<Cell, T>(false, static_cast<int>(hid), geo.lines(), smem_limit, force_global_weights);
  FwdBuffers keep;
  SweepBatch<SweepFwdParams<T>> b;
  b.sweep[0] = fwd_params<Cell, T>(x, w_ih, w_hh, b_ih, b_hh, axis, y, 0, ws, cfg, keep);
  launch_forward<Cell, T>(b, cfg, stream);
  return {y, ws};
}

// mode="parallel": the row sweep and the column sweep of the same input in one launch, writing
// channels [0, 2*hid) and [2*hid, 4*hid) of one output.
template <typename Cell, typename T>
std::tuple<Tensor, Tensor, Tensor> sweep_pair_forward(const Tensor& x, const Tensor& w_ih_r,
                                                      const Tensor& w_hh_r, const std::optional<Tensor>& b_ih_r,
                                                      const std::optional<Tensor>& b_hh_r, const Tensor& w_ih_c,
                                                      const Tensor& w_hh_c, const std::optional<Tensor>& b_ih_c,
                                                      const std::optional<Tensor>& b_hh_c, bool channels_last,
                                                      bool training, size_t smem_limit, void* stream,
                                                      bool force_global_weights = false) {
  const int64_t hid = w_hh_r.size(2);
  auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  Tensor y = device_buffer("y", at::empty({x.size(0), 4 * hid, x.size(2), x.size(3)}, x.options().memory_format(fmt)));
  Tensor ws_r = new_workspace<Cell>(x, hid, 3, training), ws_c = new_workspace<Cell>(x, hid, 2, training);
  // One plan for both sweeps (the rows' line count: the plan depends on it only through the CTA count).
  const LaunchConfig cfg =
      plan_sweep<Cell, T>(false, static_cast<int>(hid), x.size(0) * x.size(2), smem_limit, force_global_weights);
  FwdBuffers keep_r, keep_c;
  SweepBatch<SweepFwdParams<T>> b;
  b.count = 2;
  b.sweep[0] = fwd_params<Cell, T>(x, w_ih_r, w_hh_r, b_ih_r, b_hh_r, 3, y, 0, ws_r, cfg, keep_r);
  b.sweep[1] = fwd_params<Cell, T>(x, w_ih_c, w_hh_c, b_ih_c, b_hh_c, 2, y, 2 * hid, ws_c, cfg, keep_c);
  launch_forward<Cell, T>(b, cfg, stream);
  return {y, ws_r, ws_c};
}

// Buffers of one sweep's backward: gate gradients written by the kernel.
struct BwdBuffers {
  Tensor dgx, dgh, dgh_first, w_hh, w_mma;
};

template <typename Cell, typename T>
SweepBwdParams<T> bwd_params(const Tensor& grad_y, const Tensor& x, const Tensor& w_hh, const Tensor& y,
                             const Tensor& ws, int64_t axis, const LaunchConfig& cfg, BwdBuffers& keep) {
  const int64_t N = x.size(0), H = x.size(2), W = x.size(3), hid = w_hh.size(2), Gh = Cell::kGates * hid;
  const SweepGeometry geo{N, H, W, static_cast<int>(axis)};
  const auto f32 = x.options().dtype(at::kFloat);
  keep.dgx = device_buffer("dgx", at::empty({N, H * W, 2 * Gh}, f32));
  keep.dgh = device_buffer("dgh", at::empty({N, H * W, 2 * Gh}, f32));
  keep.dgh_first = device_buffer("dgh_first", at::empty({2, geo.lines(), Gh}, f32));
  keep.w_hh = w_hh.contiguous();
  if (cfg.recurrence == Recurrence::kMma) keep.w_mma = mma_weights(w_hh, Cell::kGates, cfg.kt, true);
  SweepBwdParams<T> p;
  p.geo = geo;
  p.hid = static_cast<int>(hid);
  p.tile = 0;
  p.smem_gates = 0;
  p.w_hh = keep.w_hh.data_ptr<T>();
  p.w_mma = keep.w_mma.defined() ? keep.w_mma.data_ptr<T>() : nullptr;
  p.grad_y = grad_y.data_ptr<T>();
  p.g_sN = grad_y.stride(0);
  p.g_sC = grad_y.stride(1);
  p.g_sH = grad_y.stride(2);
  p.g_sW = grad_y.stride(3);
  p.y = y.data_ptr<T>();
  p.y_sN = y.stride(0);
  p.y_sC = y.stride(1);
  p.y_sH = y.stride(2);
  p.y_sW = y.stride(3);
  p.ws = ws.data_ptr<float>();
  p.dgx = keep.dgx.data_ptr<float>();
  p.dgh = keep.dgh.data_ptr<float>();
  p.dgh_first = keep.dgh_first.data_ptr<float>();
  return p;
}

// Weight and input gradients of one sweep as large GEMMs over all positions (float32 accumulation).
template <typename Cell>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> finish_backward(const Tensor& x, const Tensor& w_ih,
                                                                         const Tensor& y, int64_t hid,
                                                                         BwdBuffers& k) {
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), Gh = Cell::kGates * hid;
  if (N * H * W == 0) {  // the kernel did not run
    k.dgx.zero_();
    k.dgh.zero_();
    k.dgh_first.zero_();
  }
  const Tensor wih = w_ih.reshape({2 * Gh, C}).to(at::kFloat);
  Tensor dx;
  if (is_channels_last(x)) {
    dx = at::matmul(k.dgx, wih).view({N, H, W, C}).permute({0, 3, 1, 2});
  } else {
    dx = at::matmul(wih.t(), k.dgx.transpose(1, 2)).view({N, C, H, W});
  }
  Tensor dw_ih = positions_tn(k.dgx, positions_view(x).to(at::kFloat)).view({2, Gh, C});
  const Tensor y3 = positions_view(y).to(at::kFloat);
  Tensor dw_hh = at::stack({positions_tn(k.dgh.narrow(2, 0, Gh), y3.narrow(2, 0, hid)),
                            positions_tn(k.dgh.narrow(2, Gh, Gh), y3.narrow(2, hid, hid))});
  // at::IntArrayRef spelled out: a bare {0, 1} is ambiguous under torch 2.11 (OptionalIntArrayRef vs
  // DimnameList); python/check_torch_floor.py (make test) compiles this file against that torch.
  Tensor db_ih = k.dgx.sum(at::IntArrayRef{0, 1}).view({2, Gh});
  Tensor db_hh = k.dgh.sum(at::IntArrayRef{0, 1}).view({2, Gh}) + k.dgh_first.sum(1);
  const auto dt = x.scalar_type();
  return {dx.to(dt), dw_ih.to(dt), dw_hh.to(dt), db_ih.to(dt), db_hh.to(dt)};
}

template <typename Cell, typename T>
void launch_backward(SweepBatch<SweepBwdParams<T>>& b, const LaunchConfig& cfg, void* stream) {
  if (b.sweep[0].geo.positions() == 0) return;
  set_batch_blocks(b, cfg);
  if (cfg.recurrence == Recurrence::kMma)
    sweep_bwd_mma_launch<Cell, T>(b, cfg, stream);
  else
    sweep_bwd_launch<Cell, T>(b, cfg, stream);
}

template <typename Cell, typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sweep_backward(const Tensor& grad_y,
                                                                  const Tensor& x, const Tensor& w_ih,
                                                                  const Tensor& w_hh, const Tensor& y,
                                                                  const Tensor& ws, int64_t axis, size_t smem_limit,
                                                                  void* stream, bool force_global_weights = false) {
  const SweepGeometry geo{x.size(0), x.size(2), x.size(3), static_cast<int>(axis)};
  const LaunchConfig cfg =
      plan_sweep<Cell, T>(true, static_cast<int>(w_hh.size(2)), geo.lines(), smem_limit, force_global_weights);
  BwdBuffers keep;
  SweepBatch<SweepBwdParams<T>> b;
  b.sweep[0] = bwd_params<Cell, T>(grad_y, x, w_hh, y, ws, axis, cfg, keep);
  launch_backward<Cell, T>(b, cfg, stream);
  return finish_backward<Cell>(x, w_ih, y, w_hh.size(2), keep);
}

// Backward of sweep_pair_forward: both recurrences in one launch; dx sums the two sweeps'.
template <typename Cell, typename T>
std::vector<Tensor> sweep_pair_backward(const Tensor& grad_y, const Tensor& x,
                                        const Tensor& w_ih_r, const Tensor& w_hh_r, const Tensor& w_ih_c,
                                        const Tensor& w_hh_c, const Tensor& y, const Tensor& ws_r,
                                        const Tensor& ws_c, size_t smem_limit, void* stream,
                                        bool force_global_weights = false) {
  const int64_t hid = w_hh_r.size(2);
  const Tensor gy_r = grad_y.narrow(1, 0, 2 * hid), gy_c = grad_y.narrow(1, 2 * hid, 2 * hid);
  const Tensor y_r = y.narrow(1, 0, 2 * hid), y_c = y.narrow(1, 2 * hid, 2 * hid);
  const LaunchConfig cfg =
      plan_sweep<Cell, T>(true, static_cast<int>(hid), x.size(0) * x.size(2), smem_limit, force_global_weights);
  BwdBuffers keep_r, keep_c;
  SweepBatch<SweepBwdParams<T>> b;
  b.count = 2;
  b.sweep[0] = bwd_params<Cell, T>(gy_r, x, w_hh_r, y_r, ws_r, 3, cfg, keep_r);
  b.sweep[1] = bwd_params<Cell, T>(gy_c, x, w_hh_c, y_c, ws_c, 2, cfg, keep_c);
  launch_backward<Cell, T>(b, cfg, stream);
  auto [dx_r, dwi_r, dwh_r, dbi_r, dbh_r] = finish_backward<Cell>(x, w_ih_r, y_r, hid, keep_r);
  auto [dx_c, dwi_c, dwh_c, dbi_c, dbh_c] = finish_backward<Cell>(x, w_ih_c, y_c, hid, keep_c);
  return {dx_r.add_(dx_c), dwi_r, dwh_r, dbi_r, dbh_r, dwi_c, dwh_c, dbi_c, dbh_c};
}

}  // namespace brnnseg::device
