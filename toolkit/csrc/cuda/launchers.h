// Plain launchers of the CUDA kernels: raw pointers, int64_t sizes and a stream, no ATen/c10,
// so every .cu compiles with bare nvcc (the CPU torch wheel lacks the generated CUDA headers).
// The tensor glue (cuda/glue_*.cpp, built only for CUDA torch) checks shapes, allocates the
// outputs and workspaces and calls these with contiguous data.  Each launcher enqueues its
// kernels on `stream` and returns the launch status (cudaGetLastError); T is float or double
// (explicitly instantiated in the .cu files).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "patch_geometry.h"

namespace invariance {
namespace cuda {
namespace launch {

// sample_norm over `rows` contiguous rows of `len` elements: y = (x - mean) / (std + eps),
// sigma[row] = std.
template <typename T>
cudaError_t sample_norm_forward(const T* x, T* y, T* sigma, int64_t rows, int64_t len,
                                double eps, cudaStream_t stream);
template <typename T>
cudaError_t sample_norm_backward(const T* grad, const T* y, const T* sigma, T* grad_x,
                                 int64_t rows, int64_t len, double eps, cudaStream_t stream);

// Sampled im2col of the NCHW input x into out (groups, g.vectors(), d).
template <typename T>
cudaError_t sampled_patches(const PatchGeometry& g, const T* x, T* out, cudaStream_t stream);
// Adds the patch gradient grad (groups, g.vectors(), d) into grad_x (N, C, H, W), which the
// caller zero-fills (patches may overlap, the kernel accumulates with atomics).
template <typename T>
cudaError_t sampled_patches_backward(const PatchGeometry& g, const T* grad, T* grad_x,
                                     cudaStream_t stream);

// local_stats of x (N, C, H, W) over window x window neighbourhoods into mean/std/var
// (N, 1, H, W); `workspace` holds local_stats_forward_workspace(N, H, W) doubles.
inline int64_t local_stats_forward_workspace(int64_t N, int64_t H, int64_t W) {
  return 2 * N * H * W;
}
template <typename T>
cudaError_t local_stats_forward(const T* x, T* mean, T* std_, T* var, double* workspace,
                                int64_t N, int64_t C, int64_t H, int64_t W, int64_t window,
                                double rf_eps, cudaStream_t stream);
// `workspace` holds local_stats_backward_workspace(N, H, W) doubles.
inline int64_t local_stats_backward_workspace(int64_t N, int64_t H, int64_t W) {
  return 4 * N * H * W;
}
template <typename T>
cudaError_t local_stats_backward(const T* grad_mean, const T* grad_std, const T* x,
                                 const T* mean, const T* var, T* grad_x, double* workspace,
                                 int64_t N, int64_t C, int64_t H, int64_t W, int64_t window,
                                 cudaStream_t stream);

// Spectral Newton-Schulz on eigenvalues lam (batch, d) with Frobenius norms norm (batch,):
// psi, dpsi (batch, d) and the divided differences out (batch, d, d).
template <typename T>
cudaError_t ns_scalar_map(const T* lam, const T* norm, T* psi, T* dpsi, int64_t batch, int64_t d,
                          int64_t n_iter, cudaStream_t stream);
template <typename T>
cudaError_t ns_divided_differences(const T* lam, const T* norm, T* out, int64_t batch, int64_t d,
                                   int64_t n_iter, cudaStream_t stream);

}  // namespace launch
}  // namespace cuda
}  // namespace invariance
