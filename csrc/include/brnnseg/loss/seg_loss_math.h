// Per-pixel math of the fused segmentation loss (weighted BCE + boundary weighting + Dice sums).
// Stable from logits: no exp of a positive argument, finite at |x| = 1e4.
//   p        = sigmoid(x)
//   bce      = pw*y*softplus(-x) + (1-y)*softplus(x)      (= -[pw*y*log p + (1-y)*log(1-p)])
//   dbce/dx  = p*(pw*y + 1 - y) - pw*y
#pragma once
#include <cmath>
#include "brnnseg/cell/activations.h"

namespace brnnseg {

// log(1 + t) for t in [0, 1], via 2*atanh(t / (2 + t)) and its odd series (|error| < 2e-8);
// branch-free so the loops over pixels vectorise. The double overload is exact.
BRNNSEG_HD float log1p_unit(float t) {
  const float s = t / (2.0f + t), s2 = s * s;
  float q = 1.0f / 11.0f;
  q = q * s2 + 1.0f / 9.0f;
  q = q * s2 + 1.0f / 7.0f;
  q = q * s2 + 1.0f / 5.0f;
  q = q * s2 + 1.0f / 3.0f;
  q = q * s2 + 1.0f;
  return 2.0f * s * q;
}
BRNNSEG_HD double log1p_unit(double t) { return std::log1p(t); }

// p = sigmoid(x), sp_pos = softplus(x) = -log(1 - p), sp_neg = softplus(-x) = -log p.
// (Outputs by reference, not a returned struct: GCC does not vectorise loops over the latter.)
template <typename T>
BRNNSEG_HD void logit_terms(T x, T& p, T& sp_pos, T& sp_neg) {
  const T ax = x < T(0) ? -x : x;
  const T e = fast_exp(-ax);              // in (0, 1]
  const T l = log1p_unit(e);              // log(1 + exp(-|x|))
  const T inv = T(1) / (T(1) + e);
  p = x >= T(0) ? inv : e * inv;
  sp_pos = (x > T(0) ? x : T(0)) + l;
  sp_neg = (x < T(0) ? -x : T(0)) + l;
}

template <typename T>
BRNNSEG_HD T bce_value(T sp_pos, T sp_neg, T y, T pw) {
  return pw * y * sp_neg + (T(1) - y) * sp_pos;
}

template <typename T>
BRNNSEG_HD T bce_grad(T p, T y, T pw) {
  return p * (pw * y + T(1) - y) - pw * y;
}

// Slots of the per-(sample, channel) sums the forward produces.
enum SegLossSum : int { kBceSum = 0, kCount = 1, kInter = 2, kPredSum = 3, kTargetSum = 4, kNumSums = 5 };

}  // namespace brnnseg
