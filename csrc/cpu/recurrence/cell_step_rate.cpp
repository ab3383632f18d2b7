// See cell_step_rate.h. Inputs are fixed pseudo-random pre-activations in [-3, 3] (every branch of the
// activations' clamps stays off the fast path's edge), states reset before they can drift.
#include "cpu/recurrence/cell_step_rate.h"

#include <chrono>
#include <cstring>
#include <vector>

#include "brnnseg/static_switch.h"
#include "cpu/recurrence/cell_steps.h"

namespace brnnseg::cpu {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<float> filled(int64_t n, uint32_t seed, float scale) {
  std::vector<float> v(n);
  for (auto& x : v) {
    seed = seed * 1664525u + 1013904223u;
    x = scale * (static_cast<float>(seed >> 8) / 8388608.0f - 1.0f);  // uniform in [-scale, scale)
  }
  return v;
}

// ns per unit-step of `step` (one call = L x hid unit-steps), run for about `seconds`; `reset` between calls.
template <typename Step, typename Reset>
double time_ns(Step step, Reset reset, int64_t units, double seconds) {
  int64_t calls = 0;
  const auto t0 = Clock::now();
  double elapsed = 0;
  do {
    for (int i = 0; i < 16; ++i) {
      reset();
      step();
    }
    calls += 16;
    elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  } while (elapsed < seconds);
  return elapsed * 1e9 / (static_cast<double>(calls) * units);
}

template <typename Cell>
CellStepNs measure(int64_t hid, int64_t L, double seconds, bool bf16_gates) {
  constexpr int G = Cell::kGates, S = Cell::kSaved;
  const int64_t Gh = G * hid;
  std::vector<float> gx = filled(L * Gh, 1, 2.0f), gh = filled(L * Gh, 2, 1.0f);
  std::vector<float> bi = filled(Gh, 3, 0.1f), bh = filled(Gh, 4, 0.1f);
  const std::vector<float> h0 = filled(L * hid, 5, 0.9f), c0 = filled(L * hid, 6, 1.0f);
  std::vector<float> h_prev = h0, h_out(L * hid), c = c0, ws(L * S * hid);
  StepArgs<float> a{L, hid, gx.data(), gh.data(), bi.data(), bh.data(), nullptr};
  a.bf16_gates = bf16_gates;
  auto reset_c = [&] { std::memcpy(c.data(), c0.data(), c.size() * sizeof(float)); };
  auto fwd = [&] { step_forward(Cell{}, a, h_out.data(), h_prev.data(), c.data()); };
  CellStepNs out{};
  const double part = seconds / 3;
  out.forward = time_ns(fwd, reset_c, L * hid, part);
  a.ws = ws.data();
  out.forward_saved = time_ns(fwd, reset_c, L * hid, part);
  // backward over the slots the forward saved
  const std::vector<float> dh0 = filled(L * hid, 7, 1.0f), dc0 = filled(L * hid, 8, 1.0f);
  std::vector<float> dh = dh0, dc = dc0, dgx(L * Gh), dgh(L * Gh), dbi(Gh), dbh(Gh);
  const StepBackwardArgs<float> b{L, hid, ws.data(), dgx.data(), dgh.data(), dbi.data(), dbh.data()};
  auto reset_d = [&] {
    std::memcpy(dh.data(), dh0.data(), dh.size() * sizeof(float));
    std::memcpy(dc.data(), dc0.data(), dc.size() * sizeof(float));
  };
  auto bwd = [&] { step_backward(Cell{}, b, dh.data(), dc.data(), h_prev.data(), c0.data(), hid); };
  out.backward = time_ns(bwd, reset_d, L * hid, part);
  return out;
}

}  // namespace

CellStepNs cell_step_ns(const std::string& cell, int64_t hid, int64_t lines, double seconds, bool bf16_gates) {
  TORCH_CHECK(hid > 0 && lines > 0, "cell_step_ns: hidden and lines must be positive, got ", hid, " and ", lines);
  return CELL_SWITCH("cell_step_ns", cell, Cell, [&] { return measure<Cell>(hid, lines, seconds, bf16_gates); });
}

}  // namespace brnnseg::cpu
