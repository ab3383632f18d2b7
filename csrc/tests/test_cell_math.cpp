// C++ tests of the shared cell math (include/brnnseg/cell/*.h), no torch needed:
//  * float activations against std::exp / std::tanh over a wide range
//  * GRU and LSTM backward against central finite differences of the forward, in double
#include <cmath>
#include <cstdio>
#include <random>

#include "brnnseg/cell/cells.h"
#include "brnnseg/sweep_geometry.h"

static int failures = 0;
#define EXPECT_NEAR(a, b, tol, what)                                                              \
  do {                                                                                            \
    const double _a = (a), _b = (b);                                                              \
    if (!(std::fabs(_a - _b) <= (tol))) {                                                          \
      std::printf("FAIL %s: %.10g vs %.10g (tol %.3g) at line %d\n", what, _a, _b, (double)(tol), __LINE__); \
      ++failures;                                                                                 \
    }                                                                                             \
  } while (0)

static void test_activations() {
  for (double v = -100.0; v <= 100.0; v += 0.0137) {
    const float x = static_cast<float>(v);
    const double e = std::exp(static_cast<double>(x));
    if (x > -87.0f && x < 88.0f) EXPECT_NEAR(brnnseg::exp_vectorizable(x) / e, 1.0, 4e-7, "exp rel");
    EXPECT_NEAR(brnnseg::sigmoid(x), 1.0 / (1.0 + std::exp(-static_cast<double>(x))), 2e-7, "sigmoid");
    EXPECT_NEAR(brnnseg::tanh_act(x), std::tanh(static_cast<double>(x)), 3e-7, "tanh");
  }
  // Extreme inputs stay finite and saturate.
  EXPECT_NEAR(brnnseg::sigmoid(1e4f), 1.0, 0, "sigmoid(+inf side)");
  EXPECT_NEAR(brnnseg::sigmoid(-1e4f), 0.0, 1e-30, "sigmoid(-inf side)");
  EXPECT_NEAR(brnnseg::tanh_act(-1e4f), -1.0, 0, "tanh(-inf side)");
}

static void test_gru_backward() {
  std::mt19937 rng(1234);
  std::normal_distribution<double> N(0.0, 1.0);
  const double eps = 1e-6;
  for (int trial = 0; trial < 200; ++trial) {
    double in[7];  // gx_r, gx_z, gx_n, gh_r, gh_z, gh_n, h_prev
    for (double& v : in) v = N(rng);
    const double dh = N(rng);
    using brnnseg::GruCell;
    auto f = [&](const double* v) {
      double saved[GruCell::kSaved], c = 0;
      return GruCell::forward(v, v + 3, v[6], c, saved);
    };
    double saved[GruCell::kSaved], c = 0, dc = 0;
    GruCell::forward(in, in + 3, in[6], c, saved);
    double dax[3], dah[3], dh_direct;
    GruCell::backward(dh, dc, saved, in[6], 0.0, dax, dah, dh_direct);
    // Analytic gradient of dh * h with respect to each input.
    const double analytic[7] = {dax[0], dax[1], dax[2], dah[0], dah[1], dah[2], dh_direct};
    for (int k = 0; k < 7; ++k) {
      double p[7], m[7];
      for (int j = 0; j < 7; ++j) p[j] = m[j] = in[j];
      p[k] += eps;
      m[k] -= eps;
      EXPECT_NEAR(analytic[k], dh * (f(p) - f(m)) / (2 * eps), 1e-7, "gru d/dinput");
    }
  }
}

static void test_lstm_backward() {
  std::mt19937 rng(99);
  std::normal_distribution<double> N(0.0, 1.0);
  const double eps = 1e-6;
  for (int trial = 0; trial < 200; ++trial) {
    double in[5];  // a_i, a_f, a_g, a_o, c_prev
    for (double& v : in) v = N(rng);
    const double dh = N(rng), dc_next = N(rng);
    // Loss = dh * h + dc_next * c.
    using brnnseg::LstmCell;
    const double zeros[4] = {0, 0, 0, 0};
    auto loss = [&](const double* v) {
      double saved[LstmCell::kSaved], c = v[4];
      const double h = LstmCell::forward(v, zeros, 0.0, c, saved);
      return dh * h + dc_next * c;
    };
    double saved[LstmCell::kSaved], c = in[4];
    LstmCell::forward(in, zeros, 0.0, c, saved);
    double da[4], dah[4], dc_prev = dc_next, direct;
    LstmCell::backward(dh, dc_prev, saved, 0.0, in[4], da, dah, direct);
    for (int g = 0; g < 4; ++g) EXPECT_NEAR(da[g], dah[g], 0, "lstm: both sides' gradients are equal");
    const double analytic[5] = {da[0], da[1], da[2], da[3], dc_prev};
    for (int k = 0; k < 5; ++k) {
      double p[5], m[5];
      for (int j = 0; j < 5; ++j) p[j] = m[j] = in[j];
      p[k] += eps;
      m[k] -= eps;
      EXPECT_NEAR(analytic[k], (loss(p) - loss(m)) / (2 * eps), 1e-7, "lstm d/dinput");
    }
  }
}

// Index arithmetic past 2^31 elements: positions and strided offsets of a map with more than 2^31 pixels
// (a single 1 x 1 x 50000 x 50000 map, never allocated) are exact int64, for rows and columns.
static void test_geometry_past_2_31() {
  using brnnseg::SweepGeometry;
  const int64_t H = 50000, W = 50000;
  for (int axis : {2, 3}) {
    const SweepGeometry g{1, H, W, axis};
    const int64_t line = g.lines() - 1, t = g.steps() - 1;
    const int64_t pos = g.pos(line, t);
    if (pos != H * W - 1) {
      std::printf("FAIL geometry axis %d: last position %lld, expected %lld\n", axis, (long long)pos,
                  (long long)(H * W - 1));
      ++failures;
    }
    // y (1, 2*hid, H, W) with hid 64: element offsets pass 2^31 in channel 127.
    const int64_t sC = H * W, off = g.strided_offset(line, t, 128 * sC, W, 1) + 127 * sC;
    if (off != 128 * H * W - 1 || off <= (int64_t(1) << 31)) {
      std::printf("FAIL geometry axis %d: last offset %lld\n", axis, (long long)off);
      ++failures;
    }
  }
}

int main() {
  test_geometry_past_2_31();
  test_activations();
  test_gru_backward();
  test_lstm_backward();
  if (failures) {
    std::printf("%d failures\n", failures);
    return 1;
  }
  std::printf("cell math: all checks passed\n");
  return 0;
}
