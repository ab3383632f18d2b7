// The CPU cell steps against the same cells in double (cell_steps.h): the AVX-512 forward at both
// accuracies (float32 ops; bfloat16 ops, StepArgs::bf16_gates) and step_forward, the entry point (run a
// second time by ctest under BRNNSEG_CPU_ISA=avx2, where it takes the generic step), every
// cell it covers, hidden sizes with and without a 16-lane tail, saved slots, pre-activations from the
// linear range to saturation (|a| up to 1e30, and infinite); the AVX-512 backward and step_backward likewise. Stores
// past the last unit must not happen (a guard band after every output is checked). Saved slots in
// bfloat16 (bfloat16 ops), forward and backward, on both paths.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "check.h"
#include "cpu/recurrence/cell_steps.h"
#include "cpu/runtime/isa.h"

using namespace brnnseg;
using namespace brnnseg::cpu;

namespace {

constexpr float kGuard = -12345.0f;
constexpr int64_t kPad = 16;

struct Rng {
  uint64_t s;
  double next() {  // uniform in [0, 1)
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<double>(s >> 11) / 9007199254740992.0;
  }
};

template <typename Cell>
void check_cell(const char* name, int64_t hid, bool vector, bool bf16_gates, bool save, double tol, uint64_t seed) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t L = 5, Gh = G * hid;
  Rng rng{seed};
  std::vector<float> gx(L * Gh), gh(L * Gh), bi(Gh), bh(Gh), hp(L * hid), c0(L * hid);
  for (int64_t i = 0; i < L * Gh; ++i) {
    const double r = rng.next();
    // mostly the working range, some saturation, a few far beyond exp's range or infinite (the
    // bfloat16-grade exp has no clamp: vreduceps takes an infinity to 0, and 2^k does the rest)
    gx[i] = r < 0.01 ? (r < 0.005 ? INFINITY : -INFINITY)
            : r < 0.04 ? (r < 0.02 ? 1e30f : -1e30f)
            : r < 0.1  ? (r < 0.07 ? 95.0f : -95.0f)
                       : static_cast<float>(24 * rng.next() - 12);
    gh[i] = static_cast<float>(4 * rng.next() - 2);
  }
  for (auto& v : bi) v = static_cast<float>(rng.next() - 0.5);
  for (auto& v : bh) v = static_cast<float>(rng.next() - 0.5);
  for (auto& v : hp) v = static_cast<float>(2 * rng.next() - 1);
  for (auto& v : c0) v = static_cast<float>(6 * rng.next() - 3);

  std::vector<float> h(L * hid + kPad, kGuard), c(c0), ws_buf(L * S * hid + kPad + 16, kGuard);
  c.resize(L * hid + kPad, kGuard);
  // 64-byte aligned, as the kernels' workspaces are: the AVX-512 step streams whole aligned vectors there
  float* ws = ws_buf.data();
  while (reinterpret_cast<uintptr_t>(ws) & 63) ++ws;
  StepArgs<float> a{L, hid, gx.data(), gh.data(), bi.data(), bh.data(), save ? ws : nullptr};
  a.bf16_gates = bf16_gates;
  if (vector) step_forward_avx512(Cell{}, a, h.data(), hp.data(), c.data());
  else step_forward(Cell{}, a, h.data(), hp.data(), c.data());

  std::vector<double> gxd(gx.begin(), gx.end()), ghd(gh.begin(), gh.end()), bid(bi.begin(), bi.end()),
      bhd(bh.begin(), bh.end()), hpd(hp.begin(), hp.end()), cd(c0.begin(), c0.end()), hd(L * hid), wsd(L * S * hid);
  StepArgs<double> ad{L, hid, gxd.data(), ghd.data(), bid.data(), bhd.data(), wsd.data()};
  step_forward(Cell{}, ad, hd.data(), hpd.data(), cd.data());

  double worst = 0;
  auto compare = [&](const float* got, const double* want, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      const double err = std::fabs(got[i] - want[i]) / (1.0 + std::fabs(want[i]));
      if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err;
    }
  };
  compare(h.data(), hd.data(), L * hid);
  if (Cell::kHasCellState) compare(c.data(), cd.data(), L * hid);
  if (save) compare(ws, wsd.data(), L * S * hid);
  const char* path = vector ? (bf16_gates ? "avx512 bf16-grade" : "avx512 float32") : "step_forward";
  CHECK(worst <= tol, "%s %s hid %lld save %d: error %.3g over %.3g", name, path, (long long)hid, (int)save, worst,
        tol);
  bool guard_ok = true;
  for (int64_t i = 0; i < kPad; ++i) {
    guard_ok &= h[L * hid + i] == kGuard;
    if (Cell::kHasCellState) guard_ok &= c[L * hid + i] == kGuard;
    if (save) guard_ok &= ws[L * S * hid + i] == kGuard;
  }
  CHECK(guard_ok, "%s %s hid %lld: a store past the last unit", name, path, (long long)hid);
}

// The backward step: gate gradients, bias sums (onto non-zero sums), dh and dc, with and without c_prev.
template <typename Cell>
void check_backward(const char* name, int64_t hid, bool vector, bool first, uint64_t seed) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t L = 5, Gh = G * hid;
  Rng rng{seed};
  auto fill = [&](std::vector<float>& v, double lo, double hi) {
    for (auto& x : v) x = static_cast<float>(lo + (hi - lo) * rng.next());
  };
  std::vector<float> ws(L * S * hid), dh(L * hid), dc(L * hid), hp(L * hid), cp(L * hid), dbi(Gh), dbh(Gh);
  fill(ws, 0.02, 0.98);  // gates in (0, 1); the tanh slots and c are in range too
  fill(dh, -1, 1), fill(dc, -1, 1), fill(hp, -1, 1), fill(cp, -3, 3), fill(dbi, -1, 1), fill(dbh, -1, 1);
  std::vector<double> wsd(ws.begin(), ws.end()), dhd(dh.begin(), dh.end()), dcd(dc.begin(), dc.end()),
      hpd(hp.begin(), hp.end()), cpd(cp.begin(), cp.end()), dbid(dbi.begin(), dbi.end()), dbhd(dbh.begin(), dbh.end()),
      dgxd(L * Gh), dghd(L * Gh);
  std::vector<float> dgx(L * Gh + kPad, kGuard), dgh(L * Gh + kPad, kGuard);
  const StepBackwardArgs<float> b{L, hid, ws.data(), dgx.data(), dgh.data(), dbi.data(), dbh.data()};
  const StepBackwardArgs<double> bd{L, hid, wsd.data(), dgxd.data(), dghd.data(), dbid.data(), dbhd.data()};
  if (vector) step_backward_avx512(Cell{}, b, dh.data(), dc.data(), hp.data(), first ? nullptr : cp.data(), hid);
  else step_backward(Cell{}, b, dh.data(), dc.data(), hp.data(), first ? nullptr : cp.data(), hid);
  step_backward(Cell{}, bd, dhd.data(), dcd.data(), hpd.data(), first ? nullptr : cpd.data(), hid);
  double worst = 0;
  auto compare = [&](const std::vector<float>& got, const std::vector<double>& want, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
      const double err = std::fabs(got[i] - want[i]) / (1.0 + std::fabs(want[i]));
      if (!(err <= worst)) worst = std::isnan(err) ? INFINITY : err;
    }
  };
  compare(dgx, dgxd, L * Gh), compare(dbi, dbid, Gh), compare(dh, dhd, L * hid);
  if (Cell::kSplitRecurrentGrad) compare(dgh, dghd, L * Gh), compare(dbh, dbhd, Gh);
  if (Cell::kHasCellState) compare(dc, dcd, L * hid);
  const char* path = vector ? "avx512 backward" : "step_backward";
  CHECK(worst <= 2e-6, "%s %s hid %lld first %d: error %.3g", name, path, (long long)hid, (int)first, worst);
  bool guard_ok = true;
  for (int64_t i = 0; i < kPad; ++i) guard_ok &= dgx[L * Gh + i] == kGuard && dgh[L * Gh + i] == kGuard;
  CHECK(guard_ok, "%s %s hid %lld: a store past the last gate", name, path, (long long)hid);
}

// Saved slots in bfloat16 (StepArgs::ws_bf16, bfloat16 ops): the forward's h and c are those of the
// float32-slot run, bit for bit, and each slot is that run's value rounded to nearest (within half a
// bfloat16 ulp; values under FLT_MIN may flush to zero: vcvtneps2bf16 treats them as zero); nothing
// stored past the last unit. The backward from bfloat16 slots is the backward from their float32
// widening, bit for bit.
template <typename Cell>
void check_saved_bf16(const char* name, int64_t hid, bool vector, bool bf16_gates, uint64_t seed) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  constexpr uint16_t kGuard16 = 0xABCD;
  const int64_t L = 5, Gh = G * hid, n = L * S * hid;
  Rng rng{seed};
  std::vector<float> gx(L * Gh), gh(L * Gh), bi(Gh), bh(Gh), hp(L * hid), c0(L * hid);
  for (auto& v : gx) v = static_cast<float>(rng.next() < 0.05 ? 200 * rng.next() - 100 : 12 * rng.next() - 6);
  for (auto& v : gh) v = static_cast<float>(4 * rng.next() - 2);
  for (auto& v : bi) v = static_cast<float>(rng.next() - 0.5);
  for (auto& v : bh) v = static_cast<float>(rng.next() - 0.5);
  for (auto& v : hp) v = static_cast<float>(2 * rng.next() - 1);
  for (auto& v : c0) v = static_cast<float>(6 * rng.next() - 3);
  auto run = [&](float* ws, uint16_t* ws16, std::vector<float>& h, std::vector<float>& c) {
    h.assign(L * hid, 0.0f);
    c = c0;
    StepArgs<float> a{L, hid, gx.data(), gh.data(), bi.data(), bh.data(), ws};
    a.bf16_gates = bf16_gates;
    a.ws_bf16 = ws16;
    if (vector) step_forward_avx512(Cell{}, a, h.data(), hp.data(), c.data());
    else step_forward(Cell{}, a, h.data(), hp.data(), c.data());
  };
  std::vector<float> ws(n), h32, c32, h16, c16;
  run(ws.data(), nullptr, h32, c32);
  std::vector<uint16_t> buf(n + kPad + 32, kGuard16);
  uint16_t* ws16 = buf.data();  // 64-byte aligned, as the kernels' workspaces: the streamed path
  while (reinterpret_cast<uintptr_t>(ws16) & 63) ++ws16;
  run(nullptr, ws16, h16, c16);
  auto widen = [](uint16_t b) {
    const uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  const char* path = vector ? (bf16_gates ? "avx512 bf16-grade" : "avx512 float32") : "step_forward";
  int bad = 0;
  for (int64_t i = 0; i < L * hid; ++i) bad += h16[i] != h32[i] || (Cell::kHasCellState && c16[i] != c32[i]);
  CHECK(bad == 0, "%s %s hid %lld bf16 slots: %d states differ from the float32-slot run", name, path,
        (long long)hid, bad);
  bad = 0;  // half an ulp: 2^-8 of the value at most (8 significant bits), 2^-134 for subnormals
  for (int64_t i = 0; i < n; ++i) {
    const float got = widen(ws16[i]), want = ws[i];
    const bool flushed = got == 0.0f && std::fabs(want) < 1.17549435e-38f;
    const float half_ulp = std::max(std::ldexp(std::fabs(want), -8), std::ldexp(1.0f, -134));  // subnormals: 2^-134
    const bool ok = std::fabs(got - want) <= half_ulp || flushed;
    if (!ok) std::printf("  slot %lld: %.9g rounded to %.9g\n", (long long)i, want, got);
    bad += !ok;
  }
  CHECK(bad == 0, "%s %s hid %lld: %d bf16 slots not the float32 slots rounded to nearest", name, path,
        (long long)hid, bad);
  bad = 0;
  for (int64_t i = 0; i < kPad; ++i) bad += ws16[n + i] != kGuard16;
  CHECK(bad == 0, "%s %s hid %lld: a bf16 slot stored past the last unit", name, path, (long long)hid);

  // backward from the bf16 slots against the backward from their widening
  std::vector<float> wide(n), dh(L * hid), dc(L * hid), cp(L * hid), dbi(Gh), dbh(Gh);
  for (int64_t i = 0; i < n; ++i) wide[i] = widen(ws16[i]);
  for (auto* v : {&dh, &dc, &cp, &dbi, &dbh})
    for (auto& x : *v) x = static_cast<float>(2 * rng.next() - 1);
  auto back = [&](const float* w32, const uint16_t* w16, std::vector<float>& dgx, std::vector<float>& dhv,
                  std::vector<float>& dcv, std::vector<float>& dbiv) {
    dgx.assign(L * Gh + kPad, kGuard);
    std::vector<float> dgh(L * Gh + kPad, kGuard), dbhv(dbh);
    dhv = dh, dcv = dc, dbiv = dbi;
    StepBackwardArgs<float> b{L, hid, w32, dgx.data(), dgh.data(), dbiv.data(), dbhv.data()};
    b.ws_bf16 = w16;
    if (vector) step_backward_avx512(Cell{}, b, dhv.data(), dcv.data(), hp.data(), cp.data(), hid);
    else step_backward(Cell{}, b, dhv.data(), dcv.data(), hp.data(), cp.data(), hid);
  };
  std::vector<float> g32, dh32, dc32, db32, g16, dh16, dc16, db16;
  back(wide.data(), nullptr, g32, dh32, dc32, db32);
  back(nullptr, ws16, g16, dh16, dc16, db16);
  bad = (g16 != g32) + (dh16 != dh32) + (dc16 != dc32) + (db16 != db32);
  CHECK(bad == 0, "%s %s hid %lld: the backward from bf16 slots differs from the one from their widening", name,
        vector ? "avx512 backward" : "step_backward", (long long)hid);
}

template <typename Cell>
void check_all(const char* name, bool avx512) {
  uint64_t seed = 1;
  for (int64_t hid : {1, 7, 16, 21, 40, 64}) {
    for (bool save : {false, true}) {
      check_cell<Cell>(name, hid, false, false, save, 2e-6, ++seed);
      if (!avx512) continue;
      check_cell<Cell>(name, hid, true, false, save, 2e-6, ++seed);
      // bfloat16 grade: 7.5e-5 (polynomial) + 6e-5 (vrcp14ps) per activation, through the cell's products
      check_cell<Cell>(name, hid, true, true, save, 4e-4, ++seed);
    }
    check_saved_bf16<Cell>(name, hid, false, true, ++seed);
    if (avx512) {
      check_saved_bf16<Cell>(name, hid, true, true, ++seed);
      check_saved_bf16<Cell>(name, hid, true, false, ++seed);
    }
    for (bool first : {false, true}) {
      check_backward<Cell>(name, hid, false, first, ++seed);
      if (avx512) check_backward<Cell>(name, hid, true, first, ++seed);
    }
  }
}

}  // namespace

int main() {
  const bool avx512 = detected_isa() == Isa::kAvx512 && avx512_steps_built();
  if (!avx512) std::printf("SKIP the AVX-512 steps: no AVX-512 on this CPU or in this build (the generic step is checked)\n");
  check_all<GruCell>("gru", avx512);
  check_all<LstmCell>("lstm", avx512);
  check_all<RnnTanhCell>("rnn_tanh", avx512);
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("cell steps: all checks passed\n");
  return 0;
}
