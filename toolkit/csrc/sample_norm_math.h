// Per-row and per-element formulas of sample_norm, shared by the CPU and CUDA kernels.  The
// kernels only differ in how they reduce a row (SIMD loop vs block reduction); the statistics
// are accumulated in double either way and turned into coefficients here.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace invariance {

// Unbiased standard deviation from the sum of squared deviations; NaN for one-element rows
// (as torch.std), which then propagates to y.
TK_HD inline double sample_norm_std(double sq, int64_t len) {
  return len > 1 ? sqrt(sq / static_cast<double>(len - 1)) : NAN;
}

// y = (x - mean) * inv, inv = 1 / (std + eps), in the tensor's precision like the reference.
template <typename T>
TK_HD inline T sample_norm_apply(T x, T mean, T inv) {
  return (x - mean) * inv;
}

// dL/dx = (g - mean(g) - y * (s + eps) / s * sum(g * y) / (len - 1)) / (s + eps)
//       = (g - a - y * b) * inv
struct SampleNormGrad {
  double a, b, inv;
};

TK_HD inline SampleNormGrad sample_norm_grad_coeffs(double sum_g, double sum_gy, double sigma,
                                                    int64_t len, double eps) {
  const double denom = sigma + eps;
  const double ratio = sigma > 0 ? denom / sigma : 0.0;  // constant rows: y == 0, no std term
  return {sum_g / static_cast<double>(len), ratio * sum_gy / static_cast<double>(len - 1),
          1.0 / denom};
}

template <typename T>
TK_HD inline T sample_norm_grad(T g, T y, T a, T b, T inv) {
  return (g - a - y * b) * inv;
}

}  // namespace invariance
