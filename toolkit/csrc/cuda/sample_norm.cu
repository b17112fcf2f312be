// Per-sample scale normalisation on the GPU: one block per row, two-pass mean / variance in
// double; the row coefficients and per-element formulas are those of the CPU kernel
// (sample_norm_math.h).
#include "common.cuh"
#include "launchers.h"
#include "sample_norm_math.h"

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
  const double sd = sample_norm_std(block_sum(q, shared), len);
  const T m = static_cast<T>(mean);
  const T inv = static_cast<T>(1.0 / (sd + eps));
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) yr[i] = sample_norm_apply(xr[i], m, inv);
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
  const SampleNormGrad k =
      sample_norm_grad_coeffs(sg, sgy, static_cast<double>(sigma[blockIdx.x]), len, eps);
  const T a = static_cast<T>(k.a), b = static_cast<T>(k.b), inv = static_cast<T>(k.inv);
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x)
    out[i] = sample_norm_grad(gr[i], yr[i], a, b, inv);
}

}  // namespace

namespace launch {

template <typename T>
cudaError_t sample_norm_forward(const T* x, T* y, T* sigma, int64_t rows, int64_t len,
                                double eps, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  forward_kernel<T><<<static_cast<unsigned int>(rows), kRowThreads, 0, stream>>>(x, y, sigma,
                                                                                 len, eps);
  return cudaGetLastError();
}

template <typename T>
cudaError_t sample_norm_backward(const T* grad, const T* y, const T* sigma, T* grad_x,
                                 int64_t rows, int64_t len, double eps, cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  backward_kernel<T><<<static_cast<unsigned int>(rows), kRowThreads, 0, stream>>>(
      grad, y, sigma, grad_x, len, eps);
  return cudaGetLastError();
}

template cudaError_t sample_norm_forward<float>(const float*, float*, float*, int64_t, int64_t,
                                                double, cudaStream_t);
template cudaError_t sample_norm_forward<double>(const double*, double*, double*, int64_t,
                                                 int64_t, double, cudaStream_t);
template cudaError_t sample_norm_backward<float>(const float*, const float*, const float*,
                                                 float*, int64_t, int64_t, double, cudaStream_t);
template cudaError_t sample_norm_backward<double>(const double*, const double*, const double*,
                                                  double*, int64_t, int64_t, double,
                                                  cudaStream_t);

}  // namespace launch
}  // namespace cuda
}  // namespace invariance
