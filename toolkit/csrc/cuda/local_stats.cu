// Local statistics (norm="local") on the GPU: channel sums per pixel, then a direct box sum
// over the clipped window per pixel (windows are small: 2(k-1)dilation + 3).  The window, the
// moments and their chain rule are the CPU kernel's (local_stats_math.h); only the box sum
// differs (direct here, summed-area tables on the CPU).
#include "common.cuh"
#include "launchers.h"
#include "local_stats_math.h"

namespace invariance {
namespace cuda {
namespace {

struct Plane {
  int64_t N, C, H, W, r;
  __device__ int64_t pixels() const { return N * H * W; }
  __device__ Window window(int64_t h, int64_t w) const { return window_at(h, w, r, H, W); }
};

template <typename T>
__global__ void channel_sums(Plane p, const T* __restrict__ x, double* A, double* Q) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= p.pixels()) return;
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
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= p.pixels()) return;
  const int64_t n = i / (p.H * p.W), h = (i / p.W) % p.H, w = i % p.W;
  const Window b = p.window(h, w);
  const int64_t plane = n * p.H * p.W;
  const LocalMoments m = local_moments(box_direct(A + plane, p.W, b),
                                       box_direct(Q + plane, p.W, b),
                                       static_cast<double>(b.count() * p.C), rf_eps);
  mean[i] = static_cast<T>(m.mean);
  var[i] = static_cast<T>(m.var);
  std_[i] = static_cast<T>(m.std);
}

template <typename T>
__global__ void plane_grads(Plane p, const T* gmean, const T* gstd, const T* mean, const T* var,
                            double* gA, double* gQ) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= p.pixels()) return;
  const int64_t h = (i / p.W) % p.H, w = i % p.W;
  const BoxGrads g = local_box_grads(
      static_cast<double>(gmean[i]), static_cast<double>(gstd[i]), static_cast<double>(mean[i]),
      static_cast<double>(var[i]), static_cast<double>(p.window(h, w).count() * p.C));
  gA[i] = g.a;
  gQ[i] = g.q;
}

// The box sum is its own adjoint (symmetric window): boxing the per-pixel gradients of the
// box sums gives the gradients of the channel sums.
__global__ void box_planes(Plane p, const double* a, const double* b, double* sa, double* sb) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= p.pixels()) return;
  const int64_t n = i / (p.H * p.W), h = (i / p.W) % p.H, w = i % p.W;
  const Window win = p.window(h, w);
  const int64_t plane = n * p.H * p.W;
  sa[i] = box_direct(a + plane, p.W, win);
  sb[i] = box_direct(b + plane, p.W, win);
}

template <typename T>
__global__ void input_grad(Plane p, const T* x, const double* GA, const double* GQ, T* gx) {
  const int64_t total = p.N * p.C * p.H * p.W;
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const int64_t hw = i % (p.H * p.W), n = i / (p.C * p.H * p.W);
  const int64_t o = n * p.H * p.W + hw;
  gx[i] = static_cast<T>(local_input_grad(GA[o], GQ[o], static_cast<double>(x[i])));
}

unsigned int blocks(int64_t n) { return static_cast<unsigned int>(blocks_for(n)); }

}  // namespace

namespace launch {

template <typename T>
cudaError_t local_stats_forward(const T* x, T* mean, T* std_, T* var, double* workspace,
                                int64_t N, int64_t C, int64_t H, int64_t W, int64_t window,
                                double rf_eps, cudaStream_t stream) {
  const Plane p{N, C, H, W, window / 2};
  const int64_t pixels = N * H * W;
  if (pixels == 0) return cudaSuccess;
  double* A = workspace;
  double* Q = A + pixels;
  channel_sums<T><<<blocks(pixels), kThreads, 0, stream>>>(p, x, A, Q);
  stats_kernel<T><<<blocks(pixels), kThreads, 0, stream>>>(p, A, Q, mean, std_, var, rf_eps);
  return cudaGetLastError();
}

template <typename T>
cudaError_t local_stats_backward(const T* grad_mean, const T* grad_std, const T* x,
                                 const T* mean, const T* var, T* grad_x, double* workspace,
                                 int64_t N, int64_t C, int64_t H, int64_t W, int64_t window,
                                 cudaStream_t stream) {
  const Plane p{N, C, H, W, window / 2};
  const int64_t pixels = N * H * W, total = pixels * C;
  if (total == 0) return cudaSuccess;
  double* gA = workspace;
  double* gQ = gA + pixels;
  double* GA = gQ + pixels;
  double* GQ = GA + pixels;
  plane_grads<T><<<blocks(pixels), kThreads, 0, stream>>>(p, grad_mean, grad_std, mean, var, gA,
                                                          gQ);
  box_planes<<<blocks(pixels), kThreads, 0, stream>>>(p, gA, gQ, GA, GQ);
  input_grad<T><<<blocks(total), kThreads, 0, stream>>>(p, x, GA, GQ, grad_x);
  return cudaGetLastError();
}

template cudaError_t local_stats_forward<float>(const float*, float*, float*, float*, double*,
                                                int64_t, int64_t, int64_t, int64_t, int64_t,
                                                double, cudaStream_t);
template cudaError_t local_stats_forward<double>(const double*, double*, double*, double*,
                                                 double*, int64_t, int64_t, int64_t, int64_t,
                                                 int64_t, double, cudaStream_t);
template cudaError_t local_stats_backward<float>(const float*, const float*, const float*,
                                                 const float*, const float*, float*, double*,
                                                 int64_t, int64_t, int64_t, int64_t, int64_t,
                                                 cudaStream_t);
template cudaError_t local_stats_backward<double>(const double*, const double*, const double*,
                                                  const double*, const double*, double*, double*,
                                                  int64_t, int64_t, int64_t, int64_t, int64_t,
                                                  cudaStream_t);

}  // namespace launch
}  // namespace cuda
}  // namespace invariance
