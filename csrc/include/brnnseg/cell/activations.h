// Activations used by the cell math. On the host, float goes through a branch-free
// exp that GCC vectorises (std::exp stays scalar without -ffast-math), accurate to a
// few ulp; double uses std::exp so float64 gradcheck sees exact math.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include "brnnseg/host_device.h"

namespace brnnseg {

BRNNSEG_HD float exp_vectorizable(float x) {
  // Clamp so 2^k stays a normal float; exp(-87.3) ~ 1.2e-38, exp(88.7) ~ 3.3e38.
  x = x < -87.3f ? -87.3f : (x > 88.7f ? 88.7f : x);
  // k = round(x / ln2) with the 1.5*2^23 trick (vectorises without SSE4.1 rounding).
  const float shifter = 12582912.0f;
  float k = (x * 1.44269504088896341f + shifter) - shifter;
  // r = x - k*ln2 in two parts (Cody-Waite), |r| <= ln2/2.
  float r = x - k * 0.693145751953125f;
  r = r - k * 1.428606765330187045e-06f;
  // exp(r) by its degree-6 Taylor/minimax polynomial (Horner).
  float p = 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  // Scale by 2^k through the exponent bits.
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

BRNNSEG_HD float fast_exp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  return exp_vectorizable(x);
#endif
}
BRNNSEG_HD double fast_exp(double x) { return std::exp(x); }

template <typename T>
BRNNSEG_HD T sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}

// tanh(x) = 2*sigmoid(2x) - 1; absolute error ~1e-7 in float, which is what matters here
// (outputs are compared with rtol 1e-4 against nn.GRU).
template <typename T>
BRNNSEG_HD T tanh_act(T x) {
  return T(2) / (T(1) + fast_exp(T(-2) * x)) - T(1);
}
BRNNSEG_HD double tanh_act(double x) { return std::tanh(x); }

}  // namespace brnnseg
