// Per-pixel math of the local statistics (norm="local"), shared by the CPU kernels (box sums
// from summed-area tables) and the CUDA kernels (direct box sums): the clipped window, the
// moments from the box sums, and the chain rule back to the channel sums A = sum_c x and
// Q = sum_c x^2.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace invariance {

struct Window {
  int64_t h0, h1, w0, w1;  // inclusive bounds, clipped to the image
  TK_HD int64_t count() const { return (h1 - h0 + 1) * (w1 - w0 + 1); }
};

// The window x window neighbourhood (radius r) of pixel (h, w) of an H x W plane, clipped.
TK_HD inline Window window_at(int64_t h, int64_t w, int64_t r, int64_t H, int64_t W) {
  return {h - r < 0 ? 0 : h - r, h + r >= H ? H - 1 : h + r, w - r < 0 ? 0 : w - r,
          w + r >= W ? W - 1 : w + r};
}

// Box sum from a summed-area table S of shape (H+1, W+1) (S[0][*] = S[*][0] = 0).
TK_HD inline double box_from_integral(const double* S, int64_t W, const Window& b) {
  const int64_t s = W + 1;
  return S[(b.h1 + 1) * s + b.w1 + 1] - S[b.h0 * s + b.w1 + 1] - S[(b.h1 + 1) * s + b.w0] +
         S[b.h0 * s + b.w0];
}

// Box sum read directly from an (H, W) plane: cheaper than a table for the small windows of
// one GPU thread per pixel.
TK_HD inline double box_direct(const double* plane, int64_t W, const Window& b) {
  double s = 0;
  for (int64_t i = b.h0; i <= b.h1; ++i)
    for (int64_t j = b.w0; j <= b.w1; ++j) s += plane[i * W + j];
  return s;
}

// mean = boxA / cnt, var = boxQ / cnt - mean^2, std = sqrt(max(var, 0)) + rf_eps, with
// cnt = window pixels * channels.
struct LocalMoments {
  double mean, var, std;
};

TK_HD inline LocalMoments local_moments(double box_a, double box_q, double cnt, double rf_eps) {
  const double m = box_a / cnt, v = box_q / cnt - m * m;
  return {m, v, sqrt(v < 0 ? 0.0 : v) + rf_eps};  // clamps rounding, keeps NaN (as std::max)
}

// Gradients of one pixel's (mean, std) with respect to its box sums of A and Q; the box sum
// is its own adjoint, so boxing these gives the gradients of A and Q at every pixel.
struct BoxGrads {
  double a, q;
};

TK_HD inline BoxGrads local_box_grads(double grad_mean, double grad_std, double mean,
                                      double var, double cnt) {
  const double gv = var > 0 ? grad_std / (2.0 * sqrt(var)) : 0.0;
  return {(grad_mean - 2.0 * mean * gv) / cnt, gv / cnt};
}

// dL/dx of one input element from the boxed gradients of A and Q at its pixel.
TK_HD inline double local_input_grad(double grad_a, double grad_q, double x) {
  return grad_a + 2.0 * x * grad_q;
}

}  // namespace invariance
