// The CUDA recurrence kernels under the SIMT simulator, without torch: built by CMake plain, with
// -fsanitize=thread (a missing __syncthreads shows up as a data race) and with
// -fsanitize=address,undefined. Checks:
//   * forward and backward (dgx, dgh, dgh_first) against a float64 serial loop over the same cell
//     math, outputs NaN-filled before each launch, at small odd sizes and at hidden 64/128/256 with
//     the launch configuration the planner picks on an H100 and an A100 (W_hh wholly in shared
//     memory, split between shared memory and L2, through L2), several CTAs and a partial last tile;
//   * that all weight paths give bit-identical results;
//   * the tensor-core kernels (cuda/sweep_{fwd,bwd}_mma_kernel.cuh) in TF32 against the same reference,
//     with the host's padded layouts, so they run under ThreadSanitizer and ASan too;
//   * that the simulator refuses what a GPU refuses, and reports shared-memory faults, on planted
//     faults (out-of-bounds write, unwritten read, guard zone, missing opt-in, opt-in over the
//     limit, grid y over 65535, block over __launch_bounds__). The planted race (a removed
//     barrier) is csrc/tests/test_sim_race.cpp, which must fail under ThreadSanitizer.
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "brnnseg/simt_sim.h"
#include "tests/check.h"
#include "cuda/sweep_launch_impl.cuh"
#include "cuda/sweep_mma_launch_impl.cuh"

using namespace brnnseg;

static const float kNaN = std::numeric_limits<float>::quiet_NaN();

// max |got - ref| / (atol + rtol |ref|) over all elements; NaN counts as a failure.
static double worst(const std::vector<float>& got, const std::vector<double>& ref, double atol, double rtol) {
  double w = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double e = std::fabs(double(got[i]) - ref[i]) / (atol + rtol * std::fabs(ref[i]));
    if (!(e == e)) return std::numeric_limits<double>::infinity();
    w = std::max(w, e);
  }
  return w;
}

// Float64 forward and backward of one sweep (the kernels' outputs: y, dgx, dgh, dgh_first).
template <typename Cell>
struct Reference {
  static constexpr int G = Cell::kGates, S = Cell::kSaved;
  std::vector<double> y, dgx, dgh, first;
  Reference(const SweepGeometry& geo, int hid, const std::vector<float>& gx, const std::vector<float>& w_hh,
            const std::vector<float>& b_ih, const std::vector<float>& b_hh, const std::vector<float>& gy) {
    const int64_t P = geo.positions(), lines = geo.lines(), T = geo.steps(), H = geo.H, W = geo.W;
    const int Gh = G * hid;
    y.assign(geo.N * 2 * hid * H * W, 0.0);
    dgx.assign(P * 2 * Gh, 0.0);
    dgh.assign(P * 2 * Gh, 0.0);
    first.assign(2 * lines * Gh, 0.0);
    auto y_at = [&](int64_t p, int d, int u) -> int64_t {
      const int64_t n = p / (H * W), hw = p % (H * W);
      return (n * 2 * hid + d * hid + u) * H * W + hw;
    };
    auto W_hh = [&](int d, int j, int k) { return double(w_hh[(d * Gh + j) * hid + k]); };
    for (int d = 0; d < 2; ++d)
      for (int64_t line = 0; line < lines; ++line) {
        std::vector<std::vector<double>> h(T + 1, std::vector<double>(hid, 0.0)), c = h, saved(T, std::vector<double>(S * hid));
        std::vector<std::vector<double>> ghn(T, std::vector<double>(hid));
        for (int64_t s = 0; s < T; ++s) {
          const int64_t p = geo.pos(line, step_time(d, s, T));
          for (int u = 0; u < hid; ++u) {
            double a[4] = {0, 0, 0, 0};
            for (int g = 0; g < G; ++g) {
              for (int k = 0; k < hid; ++k) a[g] += W_hh(d, g * hid + u, k) * h[s][k];
              a[g] += b_hh[d * Gh + g * hid + u];
            }
            double x[4];
            for (int g = 0; g < G; ++g) x[g] = double(gx[(p * 2 + d) * Gh + g * hid + u]) + b_ih[d * Gh + g * hid + u];
            double sv[S], cc = c[s][u];
            h[s + 1][u] = Cell::forward(x, a, h[s][u], cc, sv);
            c[s + 1][u] = cc;
            for (int i = 0; i < S; ++i) saved[s][i * hid + u] = sv[i];
            y[y_at(p, d, u)] = h[s + 1][u];
          }
        }
        std::vector<double> dh_rec(hid, 0.0), dc(hid, 0.0), rec(Gh);
        for (int64_t s = T - 1; s >= 0; --s) {
          const int64_t p = geo.pos(line, step_time(d, s, T));
          std::vector<double> dh_prev(hid, 0.0);
          for (int u = 0; u < hid; ++u) {
            const double dh = dh_rec[u] + gy[y_at(p, d, u)];
            double sv[S], da[4], dah[4], direct, dcv = dc[u];
            for (int i = 0; i < S; ++i) sv[i] = saved[s][i * hid + u];
            Cell::backward(dh, dcv, sv, h[s][u], c[s][u], da, dah, direct);
            dc[u] = dcv;
            for (int g = 0; g < G; ++g) rec[g * hid + u] = dah[g];
            dh_prev[u] += direct;
            for (int g = 0; g < G; ++g) dgx[(p * 2 + d) * Gh + g * hid + u] = da[g];
          }
          double* slot = s == 0 ? &first[(d * lines + line) * Gh]
                                : &dgh[(geo.pos(line, step_time(d, s - 1, T)) * 2 + d) * Gh];
          for (int j = 0; j < Gh; ++j) slot[j] = rec[j];
          for (int k = 0; k < hid; ++k)
            for (int j = 0; j < Gh; ++j) dh_prev[k] += rec[j] * W_hh(d, j, k);
          dh_rec = dh_prev;
        }
      }
  }
};

enum class Weights { kPlanned, kL2, kOneGateInSmem };

// One sweep on `dev` through the planner, forward then backward, against the float64 reference.
template <typename Cell>
static void run_case(const DeviceSpec& dev, int64_t N, int64_t H, int64_t W, int hid, int axis,
                     Weights weights = Weights::kPlanned, std::vector<float>* out = nullptr,
                     const char* expect_weights = nullptr) {
  const sim::DeviceScope scope(dev);
  const SweepGeometry geo{N, H, W, axis};
  const int64_t P = geo.positions(), lines = geo.lines(), T = geo.steps();
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int Gh = G * hid;
  std::mt19937 rng(G * 1000 + hid * 10 + axis);
  const float scale = 1.f / std::sqrt(float(hid));
  std::uniform_real_distribution<float> wd(-scale, scale);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> gx(P * 2 * Gh), w_hh(2 * Gh * hid), w_t(2 * hid * Gh), b_ih(2 * Gh), b_hh(2 * Gh);
  for (float& f : gx) f = nd(rng);
  for (auto* v : {&w_hh, &b_ih, &b_hh})
    for (float& f : *v) f = wd(rng);
  for (int d = 0; d < 2; ++d)
    for (int j = 0; j < Gh; ++j)
      for (int k = 0; k < hid; ++k) w_t[(d * hid + k) * Gh + j] = w_hh[(d * Gh + j) * hid + k];
  const int64_t sN = 2 * hid * H * W, sC = H * W, sH = W, sW = 1;  // y (N, 2*hid, H, W) contiguous
  std::vector<float> gy(N * 2 * hid * H * W);
  for (float& f : gy) f = nd(rng);
  const Reference<Cell> ref(geo, hid, gx, w_hh, b_ih, b_hh, gy);

  auto limit = [&](bool bwd) {
    if (weights != Weights::kOneGateInSmem) return dynamic_smem_budget(dev.smem_per_block_optin);
    const int tile = sweep_launch_config<float>(bwd, G, hid, lines, 1 << 30, true).tile;
    return bwd ? bwd_smem_bytes<float>(G, hid, tile, 1) : fwd_smem_bytes<float>(G, hid, tile, 1);
  };
  std::vector<float> y(ref.y.size(), kNaN), ws(2 * T * lines * S * hid, kNaN);
  SweepFwdParams<float> fp{geo, hid, 0, 0, gx.data(), w_t.data(), nullptr, b_ih.data(), b_hh.data(), y.data(), sN, sC, sH, sW,
                           ws.data()};
  const LaunchConfig fc = sweep_launch_config<float>(false, G, hid, lines, limit(false), weights == Weights::kL2);
  const LaunchConfig bc = sweep_launch_config<float>(true, G, hid, lines, limit(true), weights == Weights::kL2);
  const std::string where = fc.smem_gates == G ? "smem" : fc.smem_gates == 0 ? "l2" : "split";
  std::printf("%-5s %-4s hid=%3d axis=%d lines=%3lld T=%lld: fwd %d threads x %lld CTAs, %zu B smem (%s), "
              "bwd %zu B (%d gates)\n",
              dev.name, Cell::kName, hid, axis, (long long)lines, (long long)T, fc.threads,
              (long long)fc.blocks, fc.smem_bytes, where.c_str(), bc.smem_bytes, bc.smem_gates);
  if (expect_weights) CHECK(where == expect_weights, "planner put W_hh in %s, expected %s", where.c_str(), expect_weights);
  if (weights == Weights::kOneGateInSmem) CHECK(fc.smem_gates == 1, "partial path planned %d gates", fc.smem_gates);
  SweepBatch<SweepFwdParams<float>> fb;
  fb.sweep[0] = fp;
  set_batch_blocks(fb, fc);
  sweep_fwd_launch<Cell, float>(fb, fc, nullptr);
  double e = worst(y, ref.y, 2e-6, 1e-4);
  CHECK(e <= 1, "forward %s %s hid=%d axis=%d: %g x tolerance", dev.name, Cell::kName, hid, axis, e);

  std::vector<float> dgx(P * 2 * Gh, kNaN), dgh(P * 2 * Gh, kNaN), first(2 * lines * Gh, kNaN);
  SweepBwdParams<float> bp{geo, hid, 0, 0, w_hh.data(), nullptr, gy.data(), sN, sC, sH, sW, y.data(), sN, sC, sH, sW,
                           ws.data(), dgx.data(), dgh.data(), first.data()};
  SweepBatch<SweepBwdParams<float>> bb;
  bb.sweep[0] = bp;
  set_batch_blocks(bb, bc);
  sweep_bwd_launch<Cell, float>(bb, bc, nullptr);
  const char* names[3] = {"dgx", "dgh", "dgh_first"};
  const std::vector<float>* got[3] = {&dgx, &dgh, &first};
  const std::vector<double>* exp[3] = {&ref.dgx, &ref.dgh, &ref.first};
  for (int k = 0; k < 3; ++k) {
    e = worst(*got[k], *exp[k], 1e-5, 1e-3);
    CHECK(e <= 1, "backward %s %s %s hid=%d axis=%d: %g x tolerance", names[k], dev.name, Cell::kName, hid, axis, e);
  }
  if (out) {
    out->clear();
    for (const auto* v : got) out->insert(out->end(), v->begin(), v->end());
    out->insert(out->end(), y.begin(), y.end());
  }
}

// Small odd sizes: every weight path gives bit-identical results, each against the reference.
template <typename Cell>
static void paths_agree(int64_t N, int64_t H, int64_t W, int hid, int axis) {
  std::vector<float> r[3];
  run_case<Cell>(kH100, N, H, W, hid, axis, Weights::kPlanned, &r[0]);
  run_case<Cell>(kH100, N, H, W, hid, axis, Weights::kL2, &r[1]);
  run_case<Cell>(kH100, N, H, W, hid, axis, Weights::kOneGateInSmem, &r[2]);
  for (int k = 1; k < 3; ++k)
    CHECK(std::memcmp(r[0].data(), r[k].data(), r[0].size() * sizeof(float)) == 0,
          "%s hid=%d axis=%d: weight path %d differs from shared memory", Cell::kName, hid, axis, k);
}

// ---- the tensor-core kernels (TF32: float storage), so TSan and ASan see their source too ------------

template <typename T>
struct AlignedBuf {  // 64-byte aligned (wmma pointers: 32, cp.async: 16)
  explicit AlignedBuf(size_t n, T v) : n(n), p(static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64))) {
    for (size_t i = 0; i < n; ++i) p[i] = v;
  }
  ~AlignedBuf() { std::free(p); }
  std::vector<float> vec() const { return std::vector<float>(p, p + n); }
  size_t n;
  T* p;
};

template <typename Cell>
static void run_mma_case(int64_t N, int64_t H, int64_t W, int hid, int axis) {
  const sim::DeviceScope scope(kH100);
  const SweepGeometry geo{N, H, W, axis};
  const int64_t P = geo.positions(), lines = geo.lines(), T = geo.steps();
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int Gh = G * hid;
  std::mt19937 rng(G * 1000 + hid * 10 + axis + 7);
  const float scale = 1.f / std::sqrt(float(hid));
  std::uniform_real_distribution<float> wd(-scale, scale);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> gx(P * 2 * Gh), w_hh(2 * Gh * hid), b_ih(2 * Gh), b_hh(2 * Gh), gy(N * 2 * hid * H * W);
  for (float& f : gx) f = nd(rng);
  for (auto* v : {&w_hh, &b_ih, &b_hh})
    for (float& f : *v) f = wd(rng);
  for (float& f : gy) f = nd(rng);
  const Reference<Cell> ref(geo, hid, gx, w_hh, b_ih, b_hh, gy);
  std::string why;
  const size_t limit = dynamic_smem_budget(kH100.smem_per_block_optin);
  const LaunchConfig fc = mma_launch_config<float>(false, G, Cell::kHasCellState, hid, lines, limit, why);
  const LaunchConfig bc = mma_launch_config<float>(true, G, Cell::kHasCellState, hid, lines, limit, why);
  CHECK(fc.recurrence == Recurrence::kMma && bc.recurrence == Recurrence::kMma, "no TF32 plan at hidden %d: %s", hid,
        why.c_str());
  if (fc.recurrence != Recurrence::kMma || bc.recurrence != Recurrence::kMma) return;
  const int hp = 16 * fc.kt, N_ = G * hp;
  // The host's layouts (cuda/sweep_host.h): padded input projections and W_hh per gate.
  AlignedBuf<float> gxp(P * 2 * N_, 0.f), wf(2 * hp * N_, 0.f), wb(2 * N_ * hp, 0.f);
  for (int64_t q = 0; q < P * 2; ++q)
    for (int g = 0; g < G; ++g)
      for (int u = 0; u < hid; ++u) gxp.p[q * N_ + g * hp + u] = gx[q * Gh + g * hid + u];
  for (int d = 0; d < 2; ++d)
    for (int g = 0; g < G; ++g)
      for (int j = 0; j < hid; ++j)
        for (int k = 0; k < hid; ++k) {
          const float v = w_hh[(d * Gh + g * hid + j) * hid + k];
          wf.p[(int64_t(d) * hp + k) * N_ + g * hp + j] = v;
          wb.p[(int64_t(d) * N_ + g * hp + j) * hp + k] = v;
        }
  const int64_t sN = 2 * hid * H * W, sC = H * W, sH = W, sW = 1;
  AlignedBuf<float> y(ref.y.size(), kNaN), ws(2 * T * lines * S * hid, kNaN);
  SweepFwdParams<float> fp{geo, hid, 0, 0, gxp.p, nullptr, wf.p, b_ih.data(), b_hh.data(), y.p, sN, sC, sH, sW, ws.p};
  SweepBatch<SweepFwdParams<float>> fb;
  fb.sweep[0] = fp;
  set_batch_blocks(fb, fc);
  sweep_fwd_mma_launch<Cell, float>(fb, fc, nullptr);
  const double u = std::ldexp(1.0, -11), tol = 2 * u * std::sqrt(double(hid));
  double e = worst(y.vec(), ref.y, tol, 1e-4);
  CHECK(e <= 1, "tensor-core forward %s hid=%d axis=%d: %g x the TF32 tolerance", Cell::kName, hid, axis, e);
  AlignedBuf<float> dgx(P * 2 * Gh, kNaN), dgh(P * 2 * Gh, kNaN), first(2 * lines * Gh, kNaN);
  SweepBwdParams<float> bp{geo, hid, 0, 0, w_hh.data(), wb.p, gy.data(), sN, sC, sH, sW, y.p, sN, sC, sH, sW,
                           ws.p, dgx.p, dgh.p, first.p};
  SweepBatch<SweepBwdParams<float>> bb;
  bb.sweep[0] = bp;
  set_batch_blocks(bb, bc);
  sweep_bwd_mma_launch<Cell, float>(bb, bc, nullptr);
  const char* names[3] = {"dgx", "dgh", "dgh_first"};
  const AlignedBuf<float>* got[3] = {&dgx, &dgh, &first};
  const std::vector<double>* exp[3] = {&ref.dgx, &ref.dgh, &ref.first};
  for (int k = 0; k < 3; ++k) {
    double mx = 0;
    for (double v : *exp[k]) mx = std::max(mx, std::fabs(v));
    e = worst(got[k]->vec(), *exp[k], 4 * tol * mx, 1e-4);
    CHECK(e <= 1, "tensor-core backward %s %s hid=%d axis=%d: %g x the TF32 tolerance", names[k], Cell::kName, hid,
          axis, e);
  }
  std::printf("h100  %-4s hid=%3d axis=%d lines=%3lld T=%lld: tensor cores (TF32), kt=%d, fwd %d threads, bwd %d\n",
              Cell::kName, hid, axis, (long long)lines, (long long)T, fc.kt, fc.threads, bc.threads);
}

// ---- planted faults: each must be reported by the simulator -----------------------------------------

__global__ void fault_oob_write(int n) {
  BRNNSEG_DYNAMIC_SMEM(float, s);
  s[threadIdx.x + n] = 1.f;  // n = blockDim.x: one past the end for the last thread... and beyond
}
__global__ void fault_unwritten_read(float* out) {
  BRNNSEG_DYNAMIC_SMEM(float, s);
  if (threadIdx.x > 0) s[threadIdx.x] = 1.f;  // thread 0's slot is never written
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}
__global__ void fault_guard(int n) {
  BRNNSEG_DYNAMIC_SMEM(float, s);
  if (threadIdx.x == 0) s.raw()[n] = 2.f;  // a raw store past the end (what an unchecked pointer would do)
}
__global__ void clean_kernel(float* out) {
  BRNNSEG_DYNAMIC_SMEM(float, s);
  s[threadIdx.x] = float(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[blockDim.x - 1 - threadIdx.x];
}

template <typename E, typename F>
static void expect_error(const char* what, const char* needle, F&& f) {
  try {
    f();
    CHECK(false, "planted fault '%s' was not reported", what);
  } catch (const E& e) {
    CHECK(std::strstr(e.what(), needle) != nullptr, "planted fault '%s': message '%s' lacks '%s'", what, e.what(),
          needle);
    std::printf("planted %-28s -> %s\n", what, e.what());
  }
}

static void planted_faults() {
  std::vector<float> out(64, 0.f);
  const size_t small = 64 * sizeof(float);
  BRNNSEG_LAUNCH(clean_kernel, "clean_kernel", 64, dim3(2), dim3(64), small, nullptr, out.data());
  CHECK(out[0] == 63.f && out[63] == 0.f, "clean kernel gave wrong results");
  expect_error<std::runtime_error>("out-of-bounds shared write", "out-of-bounds shared-memory write", [&] {
    BRNNSEG_LAUNCH(fault_oob_write, "fault_oob_write", 64, dim3(1), dim3(64), small, nullptr, 1);
  });
  expect_error<std::runtime_error>("unwritten shared read", "no thread of the block has written", [&] {
    BRNNSEG_LAUNCH(fault_unwritten_read, "fault_unwritten_read", 64, dim3(1), dim3(64), small, nullptr, out.data());
  });
  expect_error<std::runtime_error>("guard zone", "guard zone after", [&] {
    BRNNSEG_LAUNCH(fault_guard, "fault_guard", 64, dim3(1), dim3(64), small, nullptr, 64 + 3);
  });
  sim::reset_func_attributes();
  const size_t big = 64 * 1024;
  expect_error<std::invalid_argument>("missing opt-in", "cudaFuncSetAttribute", [&] {
    BRNNSEG_LAUNCH(clean_kernel, "clean_kernel", 64, dim3(1), dim3(64), big, nullptr, out.data());
  });
  BRNNSEG_SET_MAX_DYNAMIC_SMEM(clean_kernel, big);  // with the opt-in the same launch runs
  BRNNSEG_LAUNCH(clean_kernel, "clean_kernel", 64, dim3(1), dim3(64), big, nullptr, out.data());
  {
    const sim::DeviceScope a100(kA100);
    expect_error<std::invalid_argument>("opt-in over the A100 limit", "opt-in limit", [&] {
      BRNNSEG_SET_MAX_DYNAMIC_SMEM(clean_kernel, 200 * 1024);
    });
    expect_error<std::invalid_argument>("launch over the A100 limit", "opt-in limit", [&] {
      BRNNSEG_LAUNCH(clean_kernel, "clean_kernel", 64, dim3(1), dim3(64), 200 * 1024, nullptr, out.data());
    });
  }
  expect_error<std::invalid_argument>("grid y over the limit", "grid (1, 65536, 1)", [&] {
    BRNNSEG_LAUNCH(clean_kernel, "clean_kernel", 64, dim3(1, 65536), dim3(64), small, nullptr, out.data());
  });
  expect_error<std::invalid_argument>("block over launch bounds", "__launch_bounds__(32)", [&] {
    BRNNSEG_LAUNCH(clean_kernel, "clean_kernel", 32, dim3(1), dim3(64), small, nullptr, out.data());
  });
  expect_error<std::invalid_argument>("block over 1024 threads", "not a valid block", [&] {
    BRNNSEG_LAUNCH(clean_kernel, "clean_kernel", 0, dim3(1), dim3(1025), small, nullptr, out.data());
  });
}

int main() {
  planted_faults();
  // Small odd sizes: several lines per CTA, partial tiles, T = 1, hidden just over a warp.
  for (int axis : {2, 3}) {
    paths_agree<GruCell>(2, 5, 3, 3, axis);
    paths_agree<LstmCell>(1, 4, 6, 5, axis);
    paths_agree<GruCell>(1, 1, 7, 2, axis);
    paths_agree<LstmCell>(1, 3, 2, 33, axis);
  }
  // The GPU benchmark shapes' hidden sizes with the configuration the planner picks on each GPU
  // (tile = 16/8/4 lines at hidden 64/128/256): 2 full CTAs + a partial one, T = 3 (rows) or 2 (cols).
  struct Real {
    const DeviceSpec* dev;
    int hid;
    const char* gru_where;
    const char* lstm_where;
  };
  const Real real[] = {{&kH100, 64, "smem", "smem"},  {&kH100, 128, "smem", "split"}, {&kH100, 256, "l2", "l2"},
                       {&kA100, 64, "smem", "smem"},  {&kA100, 128, "split", "split"}, {&kA100, 256, "l2", "l2"}};
  for (const Real& r : real) {
    const int tile = sweep_launch_config<float>(false, 3, r.hid, 1, 1 << 30, true).tile;
    run_case<GruCell>(*r.dev, 1, 2 * tile + 1, 3, r.hid, 3, Weights::kPlanned, nullptr, r.gru_where);
    run_case<LstmCell>(*r.dev, 1, 2, 2 * tile + 1, r.hid, 2, Weights::kPlanned, nullptr, r.lstm_where);
  }
  // The tensor-core kernels in TF32: several CTAs and a partial one, hidden not a multiple of 16, both axes.
  run_mma_case<GruCell>(1, 17, 3, 5, 3);
  run_mma_case<LstmCell>(2, 4, 9, 20, 2);
  run_mma_case<GruCell>(1, 2, 17, 40, 2);
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("simulated CUDA kernels: all checks passed\n");
  return 0;
}
