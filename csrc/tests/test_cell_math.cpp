// C++ tests of the shared cell math (include/brnnseg/cell/*.h), no torch needed:
//  * float activations against std::exp / std::tanh over a wide range
//  * GRU and LSTM backward against central finite differences of the forward, in double
#include <cmath>
#include <cstdio>
#include <random>

#include "brnnseg/cell/cells.h"

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

int main() {
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
