// Sampled im2col on the GPU: one thread per output entry gathers; the backward scatters with
// atomicAdd (patches overlap when the kernel is larger than the sampling stride).
#include "common.cuh"
#include "invariance.h"

namespace invariance {
namespace cuda {
namespace {

// Input pixel read by entry t of row r of group grp; returns false for padding.
__device__ inline bool source(const PatchGeometry& g, int64_t grp, int64_t r, int64_t t,
                              int64_t* index) {
  const int64_t blk = t / g.d, a = t % g.d;
  const int64_t f = a * g.G + blk;
  const int64_t c = f / g.kk, tap = f % g.kk;
  int64_t n, h, w;
  if (g.flat) {
    const int64_t q = r * g.sh * g.sw, hw = g.H * g.W;
    n = q / hw;
    h = (q % hw) / g.W;
    w = (q % hw) % g.W;
  } else {
    const int64_t p = g.Ho * g.Wo;
    n = r / p;
    h = ((r % p) / g.Wo) * g.sh - g.ph + (tap / g.kw) * g.dh;
    w = ((r % p) % g.Wo) * g.sw - g.pw + (tap % g.kw) * g.dw;
  }
  if (h < 0 || h >= g.H || w < 0 || w >= g.W) return false;
  *index = ((n * g.C + grp * g.Cg + c) * g.H + h) * g.W + w;
  return true;
}

template <typename T>
__global__ void gather_kernel(PatchGeometry g, const T* __restrict__ x, T* __restrict__ out,
                              int64_t total) {
  const int64_t width = g.G * g.d;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i % width, rest = i / width;
    int64_t src;
    out[i] = source(g, rest / g.rows, rest % g.rows, t, &src) ? x[src] : T(0);
  }
}

template <typename T>
__global__ void scatter_kernel(PatchGeometry g, const T* __restrict__ grad, T* __restrict__ gx,
                               int64_t total) {
  const int64_t width = g.G * g.d;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i % width, rest = i / width;
    int64_t dst;
    if (source(g, rest / g.rows, rest % g.rows, t, &dst)) atomicAdd(gx + dst, grad[i]);
  }
}

int grid_for(int64_t total) {
  return static_cast<int>(std::min<int64_t>(blocks_for(total), 65535));
}

}  // namespace

at::Tensor sampled_patches(const at::Tensor& x_in, at::IntArrayRef kernel, at::IntArrayRef padding,
                           at::IntArrayRef dilation, at::IntArrayRef stride, int64_t groups,
                           int64_t block) {
  check_cuda(x_in, "sampled_patches");
  c10::cuda::CUDAGuard guard(x_in.device());
  const auto g = patch_geometry(x_in, kernel, padding, dilation, stride, groups, block);
  auto x = x_in.contiguous();
  auto out = at::empty({g.groups, g.vectors(), g.d}, x.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sampled_patches_cuda", [&] {
    gather_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream>>>(
        g, x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor sampled_patches_backward(const at::Tensor& grad_in, const at::Tensor& x,
                                    at::IntArrayRef kernel, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, at::IntArrayRef stride,
                                    int64_t groups, int64_t block) {
  check_cuda(grad_in, "sampled_patches_backward");
  c10::cuda::CUDAGuard guard(grad_in.device());
  const auto g = patch_geometry(x, kernel, padding, dilation, stride, groups, block);
  TORCH_CHECK(grad_in.dim() == 3 && grad_in.size(0) == g.groups &&
                  grad_in.size(1) == g.vectors() && grad_in.size(2) == g.d,
              "sampled_patches_backward: gradient has shape ", grad_in.sizes());
  auto grad = grad_in.contiguous();
  auto gx = at::zeros(x.sizes(), grad.options());
  const int64_t total = grad.numel();
  if (total == 0) return gx;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "sampled_patches_backward_cuda", [&] {
    scatter_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream>>>(
        g, grad.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), total);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return gx;
}

}  // namespace cuda
}  // namespace invariance
