// Per-sample scale normalisation on the GPU: one block per row, two-pass mean / variance.
#include <math_constants.h>

#include "common.cuh"
#include "invariance.h"

namespace invariance {
namespace cuda {
namespace {

constexpr int kRowThreads = 512;

template <typename T>
__global__ void forward_kernel(const T* __restrict__ x, T* __restrict__ y, T* __restrict__ sigma,
                               int64_t len, double eps) {
  __shared__ double shared[33];
  const T* xr = x + blockIdx.x * len;
  T* yr = y + blockIdx.x * len;
  double s = 0;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) s += static_cast<double>(xr[i]);
  const double mean = block_sum(s, shared) / static_cast<double>(len);
  double q = 0;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    const double c = static_cast<double>(xr[i]) - mean;
    q += c * c;
  }
  const double sq = block_sum(q, shared);
  const double sd = len > 1 ? sqrt(sq / static_cast<double>(len - 1)) : CUDART_NAN;
  const T m = static_cast<T>(mean);
  const T inv = static_cast<T>(1.0 / (sd + eps));
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) yr[i] = (xr[i] - m) * inv;
  if (threadIdx.x == 0) sigma[blockIdx.x] = static_cast<T>(sd);
}

template <typename T>
__global__ void backward_kernel(const T* __restrict__ g, const T* __restrict__ y,
                                const T* __restrict__ sigma, T* __restrict__ gx, int64_t len,
                                double eps) {
  __shared__ double shared[33];
  const T* gr = g + blockIdx.x * len;
  const T* yr = y + blockIdx.x * len;
  T* out = gx + blockIdx.x * len;
  double sg = 0, sgy = 0;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    sg += static_cast<double>(gr[i]);
    sgy += static_cast<double>(gr[i]) * static_cast<double>(yr[i]);
  }
  sg = block_sum(sg, shared);
  sgy = block_sum(sgy, shared);
  const double s = static_cast<double>(sigma[blockIdx.x]);
  const double denom = s + eps;
  const double ratio = s > 0 ? denom / s : 0.0;
  const T inv = static_cast<T>(1.0 / denom);
  const T a = static_cast<T>(sg / static_cast<double>(len));
  const T b = static_cast<T>(ratio * sgy / static_cast<double>(len - 1));
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) out[i] = (gr[i] - a - yr[i] * b) * inv;
}

int64_t row_length(const at::Tensor& x, int64_t norm_dims) {
  TORCH_CHECK(norm_dims >= 1 && norm_dims <= x.dim(),
              "sample_norm: norm_dims must be in [1, x.dim()], got ", norm_dims);
  int64_t n = 1;
  for (int64_t i = x.dim() - norm_dims; i < x.dim(); ++i) n *= x.size(i);
  return n;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> sample_norm_forward(const at::Tensor& x_in, int64_t norm_dims,
                                                       double eps) {
  check_cuda(x_in, "sample_norm_forward");
  c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t len = row_length(x_in, norm_dims);
  auto x = x_in.contiguous();
  auto y = at::empty_like(x);
  auto sigma = at::empty(x.sizes().slice(0, x.dim() - norm_dims), x.options());
  const int64_t rows = len > 0 ? x.numel() / len : 0;
  if (rows == 0) return {y, sigma};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sample_norm_forward_cuda", [&] {
    forward_kernel<scalar_t><<<rows, kRowThreads, 0, stream>>>(
        x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), sigma.data_ptr<scalar_t>(), len, eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, sigma};
}

at::Tensor sample_norm_backward(const at::Tensor& grad_in, const at::Tensor& y_in,
                                const at::Tensor& sigma_in, int64_t norm_dims, double eps) {
  check_cuda(y_in, "sample_norm_backward");
  c10::cuda::CUDAGuard guard(y_in.device());
  const int64_t len = row_length(y_in, norm_dims);
  auto g = grad_in.contiguous(), y = y_in.contiguous(), sigma = sigma_in.contiguous();
  auto gx = at::empty_like(y);
  const int64_t rows = len > 0 ? y.numel() / len : 0;
  if (rows == 0) return gx;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "sample_norm_backward_cuda", [&] {
    backward_kernel<scalar_t><<<rows, kRowThreads, 0, stream>>>(
        g.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), sigma.data_ptr<scalar_t>(),
        gx.data_ptr<scalar_t>(), len, eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gx;
}

}  // namespace cuda
}  // namespace invariance
