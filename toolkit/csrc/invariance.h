// Shared declarations of the invariance-layer ops (namespace `invariance`).
//
// Layout of the library:
//   registration.cpp      operator schemas (TORCH_LIBRARY) and the Python module stub
//   geometry.cpp          shapes of the sampled im2col (shared by CPU and CUDA kernels)
//   composite.cpp         device-agnostic ops built from ATen (matrix products, eigh)
//   autograd.cpp          the autograd kernels, registered once for every device
//   cpu/*.cpp             CPU kernels (at::parallel_for, OpenMP)
//   *_math.h, patch_geometry.h, ns_scalar.h
//                         per-element math shared by CPU and CUDA (ATen-free, TK_HD)
//   cuda/*.cu             CUDA kernels + plain launchers (cuda/launchers.h; no ATen/c10)
//   cuda/*.cpp            tensor glue calling the launchers, and the CUDA registration
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "patch_geometry.h"  // PatchGeometry (ATen-free, shared with the CUDA launchers)

namespace invariance {

// Entries per sample for sample_norm over the last `norm_dims` dimensions (checked).
int64_t sample_norm_row_length(const at::Tensor& x, int64_t norm_dims);

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
