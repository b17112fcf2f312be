// Local statistics (norm="local") on the GPU: channel sums per pixel, then a direct box sum
// over the clipped window per pixel (windows are small: 2(k-1)dilation + 3).
#include <algorithm>

#include "common.cuh"
#include "invariance.h"

namespace invariance {
namespace cuda {
namespace {

struct Plane {
  int64_t N, C, H, W, r;
};

__device__ inline int64_t window_count(const Plane& p, int64_t h, int64_t w) {
  const int64_t h0 = h - p.r < 0 ? 0 : h - p.r, h1 = h + p.r >= p.H ? p.H - 1 : h + p.r;
  const int64_t w0 = w - p.r < 0 ? 0 : w - p.r, w1 = w + p.r >= p.W ? p.W - 1 : w + p.r;
  return (h1 - h0 + 1) * (w1 - w0 + 1);
}

// out[n, h, w] = sum of in[n, window(h, w)] for two planes at once
__device__ inline void box2(const Plane& p, const double* a, const double* b, int64_t n,
                            int64_t h, int64_t w, double* sa, double* sb) {
  double x = 0, y = 0;
  const int64_t h0 = h - p.r < 0 ? 0 : h - p.r, h1 = h + p.r >= p.H ? p.H - 1 : h + p.r;
  const int64_t w0 = w - p.r < 0 ? 0 : w - p.r, w1 = w + p.r >= p.W ? p.W - 1 : w + p.r;
  for (int64_t i = h0; i <= h1; ++i) {
    for (int64_t j = w0; j <= w1; ++j) {
      const int64_t o = (n * p.H + i) * p.W + j;
      x += a[o];
      y += b[o];
    }
  }
  *sa = x;
  *sb = y;
}

template <typename T>
__global__ void channel_sums(Plane p, const T* __restrict__ x, double* A, double* Q) {
  const int64_t total = p.N * p.H * p.W;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t n = i / (p.H * p.W), hw = i % (p.H * p.W);
  double s = 0, q = 0;
  for (int64_t c = 0; c < p.C; ++c) {
    const double v = static_cast<double>(x[(n * p.C + c) * p.H * p.W + hw]);
    s += v;
    q += v * v;
  }
  A[i] = s;
  Q[i] = q;
}

template <typename T>
__global__ void stats_kernel(Plane p, const double* A, const double* Q, T* mean, T* std_, T* var,
                             double rf_eps) {
  const int64_t total = p.N * p.H * p.W;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t n = i / (p.H * p.W), h = (i / p.W) % p.H, w = i % p.W;
  double sa, sq;
  box2(p, A, Q, n, h, w, &sa, &sq);
  const double cnt = static_cast<double>(window_count(p, h, w) * p.C);
  const double m = sa / cnt, v = sq / cnt - m * m;
  mean[i] = static_cast<T>(m);
  var[i] = static_cast<T>(v);
  std_[i] = static_cast<T>(sqrt(v > 0 ? v : 0.0) + rf_eps);
}

template <typename T>
__global__ void plane_grads(Plane p, const T* gmean, const T* gstd, const T* mean, const T* var,
                            double* gA, double* gQ) {
  const int64_t total = p.N * p.H * p.W;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t h = (i / p.W) % p.H, w = i % p.W;
  const double cnt = static_cast<double>(window_count(p, h, w) * p.C);
  const double v = static_cast<double>(var[i]);
  const double gv = v > 0 ? static_cast<double>(gstd[i]) / (2.0 * sqrt(v)) : 0.0;
  gA[i] = (static_cast<double>(gmean[i]) - 2.0 * static_cast<double>(mean[i]) * gv) / cnt;
  gQ[i] = gv / cnt;
}

__global__ void box_planes(Plane p, const double* a, const double* b, double* sa, double* sb) {
  const int64_t total = p.N * p.H * p.W;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t n = i / (p.H * p.W), h = (i / p.W) % p.H, w = i % p.W;
  box2(p, a, b, n, h, w, sa + i, sb + i);
}

template <typename T>
__global__ void input_grad(Plane p, const T* x, const double* GA, const double* GQ, T* gx) {
  const int64_t total = p.N * p.C * p.H * p.W;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t hw = i % (p.H * p.W), n = i / (p.C * p.H * p.W);
  const int64_t o = n * p.H * p.W + hw;
  gx[i] = static_cast<T>(GA[o] + 2.0 * static_cast<double>(x[i]) * GQ[o]);
}

Plane plane_of(const at::Tensor& x, int64_t window) {
  TORCH_CHECK(x.dim() == 4, "local_stats: expected x of shape (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(window >= 1 && window % 2 == 1, "local_stats: window must be odd, got ", window);
  return {x.size(0), x.size(1), x.size(2), x.size(3), window / 2};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_stats_forward(const at::Tensor& x_in,
                                                                   int64_t window, double rf_eps) {
  check_cuda(x_in, "local_stats_forward");
  c10::cuda::CUDAGuard guard(x_in.device());
  const auto p = plane_of(x_in, window);
  auto x = x_in.contiguous();
  auto mean = at::empty({p.N, 1, p.H, p.W}, x.options());
  auto std_ = at::empty_like(mean), var = at::empty_like(mean);
  const int64_t pixels = p.N * p.H * p.W;
  if (pixels == 0) return {mean, std_, var};
  auto sums = at::empty({2, pixels}, x.options().dtype(at::kDouble));
  double* A = sums.data_ptr<double>();
  double* Q = A + pixels;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "local_stats_forward_cuda", [&] {
    channel_sums<scalar_t><<<blocks_for(pixels), kThreads, 0, stream>>>(
        p, x.data_ptr<scalar_t>(), A, Q);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    stats_kernel<scalar_t><<<blocks_for(pixels), kThreads, 0, stream>>>(
        p, A, Q, mean.data_ptr<scalar_t>(), std_.data_ptr<scalar_t>(), var.data_ptr<scalar_t>(),
        rf_eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {mean, std_, var};
}

at::Tensor local_stats_backward(const at::Tensor& gmean_in, const at::Tensor& gstd_in,
                                const at::Tensor& x_in, const at::Tensor& mean_in,
                                const at::Tensor& var_in, int64_t window) {
  check_cuda(x_in, "local_stats_backward");
  c10::cuda::CUDAGuard guard(x_in.device());
  const auto p = plane_of(x_in, window);
  auto x = x_in.contiguous(), gmean = gmean_in.contiguous(), gstd = gstd_in.contiguous();
  auto mean = mean_in.contiguous(), var = var_in.contiguous();
  auto gx = at::empty_like(x);
  const int64_t pixels = p.N * p.H * p.W;
  if (pixels == 0 || x.numel() == 0) return gx;
  auto buf = at::empty({4, pixels}, x.options().dtype(at::kDouble));
  double* gA = buf.data_ptr<double>();
  double* gQ = gA + pixels;
  double* GA = gQ + pixels;
  double* GQ = GA + pixels;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "local_stats_backward_cuda", [&] {
    plane_grads<scalar_t><<<blocks_for(pixels), kThreads, 0, stream>>>(
        p, gmean.data_ptr<scalar_t>(), gstd.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(),
        var.data_ptr<scalar_t>(), gA, gQ);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    box_planes<<<blocks_for(pixels), kThreads, 0, stream>>>(p, gA, gQ, GA, GQ);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    input_grad<scalar_t><<<blocks_for(x.numel()), kThreads, 0, stream>>>(
        p, x.data_ptr<scalar_t>(), GA, GQ, gx.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gx;
}

}  // namespace cuda
}  // namespace invariance
