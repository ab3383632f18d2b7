// Tensor-level host code of the device sweeps: checks, the input-projection GEMM, buffers, the
// launch, and the weight/input-gradient GEMMs. The same code drives the CUDA kernels (included by
// line_scan_cuda.cu, CUDA tensors, cuBLAS GEMMs) and the simulator build of the same kernels
// (included by csrc/sim/line_scan_sim.cpp, CPU tensors). BRNNSEG_LAUNCH must be defined first.
#pragma once
#include <torch/types.h>

#include "brnnseg/checks.h"
#include "line_scan_launch.h"

namespace brnnseg::device {

using at::Tensor;

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

inline int saved_per_unit(int G) { return G == 3 ? GruCell::kSaved : LstmCell::kSaved; }

// Forward of one sweep. T: storage type; G: 3 (GRU) or 4 (LSTM).
template <typename T>
std::tuple<Tensor, Tensor> sweep_forward(const char* op, int G, const Tensor& x, const Tensor& w_ih,
                                         const Tensor& w_hh, const std::optional<Tensor>& b_ih,
                                         const std::optional<Tensor>& b_hh, int64_t axis, bool channels_last,
                                         bool training, size_t smem_limit, void* stream,
                                         bool force_global_weights = false) {
  check_sweep_inputs(op, x, w_ih, w_hh, b_ih, b_hh, G, axis);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), hid = w_hh.size(2), Gh = G * hid;
  const SweepGeometry geo{N, H, W, static_cast<int>(axis)};
  const int64_t lines = geo.lines(), T_len = geo.steps();
  auto fmt = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  Tensor y = at::empty({N, 2 * hid, H, W}, x.options().memory_format(fmt));
  const auto f32 = x.options().dtype(at::kFloat);
  Tensor ws = training ? at::empty({2, T_len, lines, saved_per_unit(G) * hid}, f32) : at::empty({0}, f32);
  if (geo.positions() == 0) return {y, ws};

  // Input projections of every position and both directions: one GEMM (tensor cores on a GPU)
  // reading NCHW or channels_last x in place (a transposed operand, no layout copy).
  const Tensor gx = at::matmul(positions_view(x), w_ih.reshape({2 * Gh, C}).t()).contiguous();
  const Tensor w_hh_t = w_hh.transpose(1, 2).contiguous();
  const Tensor bi = b_ih.has_value() ? b_ih->to(at::kFloat).contiguous() : at::zeros({2, Gh}, f32);
  const Tensor bh = b_hh.has_value() ? b_hh->to(at::kFloat).contiguous() : at::zeros({2, Gh}, f32);

  const LaunchConfig cfg = line_scan_config<T>(false, G, static_cast<int>(hid), lines, smem_limit, force_global_weights);
  SweepFwdParams<T> p;
  p.geo = geo;
  p.hid = static_cast<int>(hid);
  p.tile = cfg.tile;
  p.gx = gx.data_ptr<T>();
  p.w_hh_t = w_hh_t.data_ptr<T>();
  p.b_ih = bi.data_ptr<float>();
  p.b_hh = bh.data_ptr<float>();
  p.y = y.data_ptr<T>();
  p.y_sN = y.stride(0);
  p.y_sC = y.stride(1);
  p.y_sH = y.stride(2);
  p.y_sW = y.stride(3);
  p.ws = training ? ws.data_ptr<float>() : nullptr;
  launch_line_scan_fwd<T>(G, p, cfg, stream);
  return {y, ws};
}

template <typename T>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> sweep_backward(const char* op, int G, const Tensor& grad_y,
                                                                  const Tensor& x, const Tensor& w_ih,
                                                                  const Tensor& w_hh, const Tensor& y,
                                                                  const Tensor& ws, int64_t axis, size_t smem_limit,
                                                                  void* stream, bool force_global_weights = false) {
  check_sweep_inputs(op, x, w_ih, w_hh, std::nullopt, std::nullopt, G, axis);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), hid = w_hh.size(2), Gh = G * hid;
  const SweepGeometry geo{N, H, W, static_cast<int>(axis)};
  const int64_t lines = geo.lines(), T_len = geo.steps();
  const std::vector<int64_t> ws_shape{2, T_len, lines, saved_per_unit(G) * hid};
  TORCH_CHECK(ws.sizes() == ws_shape && ws.is_contiguous() && ws.scalar_type() == at::kFloat, op,
              ": workspace must be a contiguous float32 tensor of shape ", ws_shape,
              " (run the forward with training=True), got ", ws.sizes());
  TORCH_CHECK(y.sizes() == grad_y.sizes() && y.size(1) == 2 * hid, op, ": y and grad_y must have shape (N, ",
              2 * hid, ", H, W)");
  const auto f32 = x.options().dtype(at::kFloat);
  Tensor dgx = at::empty({N, H * W, 2 * Gh}, f32);
  Tensor dgh = at::empty({N, H * W, 2 * Gh}, f32);
  Tensor dgh_first = at::empty({2, lines, Gh}, f32);
  const Tensor w_hh_c = w_hh.contiguous();
  if (geo.positions() > 0) {
    const LaunchConfig cfg = line_scan_config<T>(true, G, static_cast<int>(hid), lines, smem_limit, force_global_weights);
    SweepBwdParams<T> p;
    p.geo = geo;
    p.hid = static_cast<int>(hid);
    p.tile = cfg.tile;
    p.w_hh = w_hh_c.data_ptr<T>();
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
    p.dgx = dgx.data_ptr<float>();
    p.dgh = dgh.data_ptr<float>();
    p.dgh_first = dgh_first.data_ptr<float>();
    launch_line_scan_bwd<T>(G, p, cfg, stream);
  } else {
    dgx.zero_();
    dgh.zero_();
    dgh_first.zero_();
  }
  // Weight and input gradients as large GEMMs over all positions (float32 accumulation).
  const Tensor wih = w_ih.reshape({2 * Gh, C}).to(at::kFloat);
  Tensor dx;
  if (is_channels_last(x)) {
    dx = at::matmul(dgx, wih).view({N, H, W, C}).permute({0, 3, 1, 2});
  } else {
    dx = at::matmul(wih.t(), dgx.transpose(1, 2)).view({N, C, H, W});
  }
  Tensor dw_ih = positions_tn(dgx, positions_view(x).to(at::kFloat)).view({2, Gh, C});
  const Tensor y3 = positions_view(y).to(at::kFloat);
  Tensor dw_hh = at::stack({positions_tn(dgh.narrow(2, 0, Gh), y3.narrow(2, 0, hid)),
                            positions_tn(dgh.narrow(2, Gh, Gh), y3.narrow(2, hid, hid))});
  Tensor db_ih = dgx.sum({0, 1}).view({2, Gh});
  Tensor db_hh = dgh.sum({0, 1}).view({2, Gh}) + dgh_first.sum(1);
  const auto dt = x.scalar_type();
  return {dx.to(dt), dw_ih.to(dt), dw_hh.to(dt), db_ih.to(dt), db_hh.to(dt)};
}

}  // namespace brnnseg::device
