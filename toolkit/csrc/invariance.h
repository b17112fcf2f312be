// Shared declarations of the invariance-layer ops (namespace `invariance`).
//
// Layout of the library:
//   registration.cpp      operator schemas (TORCH_LIBRARY) and the Python module stub
//   geometry.cpp          shapes of the sampled im2col (shared by CPU and CUDA kernels)
//   composite.cpp         device-agnostic ops built from ATen (matrix products, eigh)
//   autograd.cpp          the autograd kernels, registered once for every device
//   cpu/*.cpp             CPU kernels (at::parallel_for, OpenMP)
//   cuda/*.cu, cuda/*.cpp CUDA kernels and their registration
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace invariance {

// Where the sampled patches of a conv input come from, and how they are cut into vectors.
// A row is one sampled patch of one group (length Cg*kh*kw, unfold order f = c*kk + i*kw + j);
// it is viewed as a (d, G) matrix and each of its G columns (entries f = a*G + g) is one
// vector of length d.  All vectors of one group are samples of that group's covariance.
struct PatchGeometry {
  int64_t N, C, H, W;
  int64_t kh, kw, ph, pw, dh, dw, sh, sw;  // kernel, padding, dilation, sampling stride
  int64_t groups, block;
  int64_t Cg, G, kk, d;   // channels per group, blocks per row, kernel area, vector length
  int64_t Ho, Wo;         // sampling grid (unused when flat)
  int64_t rows;           // sampled rows per group
  bool flat;              // 1x1 kernel: every (sh*sw)-th row of the NHWC-flattened input
  int64_t vectors() const { return rows * G; }
};

PatchGeometry patch_geometry(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef padding,
                             at::IntArrayRef dilation, at::IntArrayRef stride, int64_t groups,
                             int64_t block);

namespace cpu {
std::tuple<at::Tensor, at::Tensor> sample_norm_forward(const at::Tensor& x, int64_t norm_dims,
                                                       double eps);
at::Tensor sample_norm_backward(const at::Tensor& grad, const at::Tensor& y,
                                const at::Tensor& sigma, int64_t norm_dims, double eps);
at::Tensor sampled_patches(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef padding,
                           at::IntArrayRef dilation, at::IntArrayRef stride, int64_t groups,
                           int64_t block);
at::Tensor sampled_patches_backward(const at::Tensor& grad, const at::Tensor& x,
                                    at::IntArrayRef kernel, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, at::IntArrayRef stride,
                                    int64_t groups, int64_t block);
std::tuple<at::Tensor, at::Tensor, at::Tensor> local_stats_forward(const at::Tensor& x,
                                                                   int64_t window, double rf_eps);
at::Tensor local_stats_backward(const at::Tensor& grad_mean, const at::Tensor& grad_std,
                                const at::Tensor& x, const at::Tensor& mean,
                                const at::Tensor& var, int64_t window);
std::tuple<at::Tensor, at::Tensor> ns_scalar_map(const at::Tensor& lam, const at::Tensor& norm,
                                                 int64_t n_iter);
at::Tensor ns_divided_differences(const at::Tensor& lam, const at::Tensor& norm, int64_t n_iter);
}  // namespace cpu

// CUDA kernels (toolkit/csrc/cuda), same contracts as the CPU ones.
namespace cuda {
std::tuple<at::Tensor, at::Tensor> sample_norm_forward(const at::Tensor& x, int64_t norm_dims,
                                                       double eps);
at::Tensor sample_norm_backward(const at::Tensor& grad, const at::Tensor& y,
                                const at::Tensor& sigma, int64_t norm_dims, double eps);
at::Tensor sampled_patches(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef padding,
                           at::IntArrayRef dilation, at::IntArrayRef stride, int64_t groups,
                           int64_t block);
at::Tensor sampled_patches_backward(const at::Tensor& grad, const at::Tensor& x,
                                    at::IntArrayRef kernel, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, at::IntArrayRef stride,
                                    int64_t groups, int64_t block);
std::tuple<at::Tensor, at::Tensor, at::Tensor> local_stats_forward(const at::Tensor& x,
                                                                   int64_t window, double rf_eps);
at::Tensor local_stats_backward(const at::Tensor& grad_mean, const at::Tensor& grad_std,
                                const at::Tensor& x, const at::Tensor& mean,
                                const at::Tensor& var, int64_t window);
std::tuple<at::Tensor, at::Tensor> ns_scalar_map(const at::Tensor& lam, const at::Tensor& norm,
                                                 int64_t n_iter);
at::Tensor ns_divided_differences(const at::Tensor& lam, const at::Tensor& norm, int64_t n_iter);
}  // namespace cuda

}  // namespace invariance
