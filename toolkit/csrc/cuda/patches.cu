// Sampled im2col on the GPU: one thread per output entry gathers; the backward scatters with
// atomicAdd (patches overlap when the kernel is larger than the sampling stride).  Which input
// pixel an entry reads is patch_source (patch_geometry.h), the index math of the CPU kernel.
#include "common.cuh"
#include "launchers.h"
#include "patch_geometry.h"

namespace invariance {
namespace cuda {
namespace {

template <typename T>
__global__ void gather_kernel(PatchGeometry g, const T* __restrict__ x, T* __restrict__ out,
                              int64_t total) {
  const int64_t width = g.G * g.d;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i % width, rest = i / width;
    int64_t src;
    out[i] = patch_source(g, rest / g.rows, rest % g.rows, t, &src) ? x[src] : T(0);
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
    if (patch_source(g, rest / g.rows, rest % g.rows, t, &dst)) atomicAdd(gx + dst, grad[i]);
  }
}

}  // namespace

namespace launch {

template <typename T>
cudaError_t sampled_patches(const PatchGeometry& g, const T* x, T* out, cudaStream_t stream) {
  const int64_t total = g.groups * g.vectors() * g.d;
  if (total == 0) return cudaSuccess;
  gather_kernel<T><<<grid_stride_blocks(total), kThreads, 0, stream>>>(g, x, out, total);
  return cudaGetLastError();
}

template <typename T>
cudaError_t sampled_patches_backward(const PatchGeometry& g, const T* grad, T* grad_x,
                                     cudaStream_t stream) {
  const int64_t total = g.groups * g.vectors() * g.d;
  if (total == 0) return cudaSuccess;
  scatter_kernel<T><<<grid_stride_blocks(total), kThreads, 0, stream>>>(g, grad, grad_x, total);
  return cudaGetLastError();
}

template cudaError_t sampled_patches<float>(const PatchGeometry&, const float*, float*,
                                            cudaStream_t);
template cudaError_t sampled_patches<double>(const PatchGeometry&, const double*, double*,
                                             cudaStream_t);
template cudaError_t sampled_patches_backward<float>(const PatchGeometry&, const float*, float*,
                                                     cudaStream_t);
template cudaError_t sampled_patches_backward<double>(const PatchGeometry&, const double*,
                                                      double*, cudaStream_t);

}  // namespace launch
}  // namespace cuda
}  // namespace invariance
