// Per-sample scale normalisation on the CPU: y = (x - mean) / (std + eps) per row, where a
// row is everything except the leading dimensions (the last `norm_dims` dimensions).
// Forward and backward each read a row twice and write it once; rows run in parallel.
#include <ATen/Parallel.h>
#include <cmath>

#include <ATen/ATen.h>

#include "invariance.h"
#include "sample_norm_math.h"  // per-row/per-element formulas shared with the CUDA kernels

namespace invariance {
namespace cpu {
namespace {

template <typename scalar_t>
void forward_rows(const scalar_t* x, scalar_t* y, scalar_t* sigma, int64_t rows, int64_t len,
                  double eps) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* xr = x + r * len;
      scalar_t* yr = y + r * len;
      double sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t i = 0; i < len; ++i) sum += xr[i];
      const double mean = sum / len;
      double sq = 0;
#pragma omp simd reduction(+ : sq)
      for (int64_t i = 0; i < len; ++i) {
        const double c = xr[i] - mean;
        sq += c * c;
      }
      const double s = sample_norm_std(sq, len);
      const scalar_t m = static_cast<scalar_t>(mean);
      const scalar_t inv = static_cast<scalar_t>(1.0 / (s + eps));
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) yr[i] = sample_norm_apply(xr[i], m, inv);
      sigma[r] = static_cast<scalar_t>(s);
    }
  });
}

// dL/dx = (g - mean(g) - y * (s + eps) / s * sum(g * y) / (len - 1)) / (s + eps)
template <typename scalar_t>
void backward_rows(const scalar_t* g, const scalar_t* y, const scalar_t* sigma, scalar_t* gx,
                   int64_t rows, int64_t len, double eps) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* gr = g + r * len;
      const scalar_t* yr = y + r * len;
      scalar_t* out = gx + r * len;
      double sg = 0, sgy = 0;
#pragma omp simd reduction(+ : sg, sgy)
      for (int64_t i = 0; i < len; ++i) {
        sg += gr[i];
        sgy += static_cast<double>(gr[i]) * yr[i];
      }
      const SampleNormGrad k = sample_norm_grad_coeffs(sg, sgy, sigma[r], len, eps);
      const scalar_t inv = static_cast<scalar_t>(k.inv);
      const scalar_t a = static_cast<scalar_t>(k.a);
      const scalar_t b = static_cast<scalar_t>(k.b);
#pragma omp simd
      for (int64_t i = 0; i < len; ++i) out[i] = sample_norm_grad(gr[i], yr[i], a, b, inv);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> sample_norm_forward(const at::Tensor& x_in, int64_t norm_dims,
                                                       double eps) {
  const int64_t len = sample_norm_row_length(x_in, norm_dims);
  auto x = x_in.contiguous();
  auto y = at::empty_like(x);
  const int64_t rows = len > 0 ? x.numel() / len : 0;
  auto lead = x.sizes().slice(0, x.dim() - norm_dims);
  auto sigma = at::empty(lead, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sample_norm_forward", [&] {
    forward_rows<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                           sigma.data_ptr<scalar_t>(), rows, len, eps);
  });
  return {y, sigma};
}

at::Tensor sample_norm_backward(const at::Tensor& grad_in, const at::Tensor& y_in,
                                const at::Tensor& sigma_in, int64_t norm_dims, double eps) {
  const int64_t len = sample_norm_row_length(y_in, norm_dims);
  auto g = grad_in.contiguous();
  auto y = y_in.contiguous();
  auto sigma = sigma_in.contiguous();
  auto gx = at::empty_like(y);
  const int64_t rows = len > 0 ? y.numel() / len : 0;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "sample_norm_backward", [&] {
    backward_rows<scalar_t>(g.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                            sigma.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), rows, len, eps);
  });
  return gx;
}

}  // namespace cpu
}  // namespace invariance
