// Spectral Newton-Schulz on the GPU: the scalar map per eigenvalue and the matrix of divided
// differences per eigenvalue pair (both in double, see ns_scalar.h).
#include "common.cuh"
#include "invariance.h"
#include "ns_scalar.h"

namespace invariance {
namespace cuda {
namespace {

template <typename T>
__global__ void map_kernel(const T* lam, const T* norm, T* psi, T* dpsi, int64_t d, int64_t total,
                           int64_t n_iter) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= total) return;
  const auto m = ns_scalar(static_cast<double>(lam[i]), static_cast<double>(norm[i / d]), n_iter);
  psi[i] = static_cast<T>(m.psi);
  dpsi[i] = static_cast<T>(m.dpsi_dc);
}

template <typename T>
__global__ void divided_kernel(const T* lam, const T* norm, T* out, int64_t d, int64_t total,
                               int64_t n_iter) {
  const int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (k >= total) return;
  const int64_t b = k / (d * d), i = (k / d) % d, j = k % d;
  out[k] = static_cast<T>(ns_divided_difference(static_cast<double>(lam[b * d + i]),
                                                static_cast<double>(lam[b * d + j]),
                                                static_cast<double>(norm[b]), n_iter));
}

void check(const at::Tensor& lam, const at::Tensor& norm, const char* name) {
  check_cuda(lam, name);
  TORCH_CHECK(lam.dim() == 2 && norm.dim() == 1 && norm.size(0) == lam.size(0), name,
              ": expected eigenvalues (B, d) and norms (B,)");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> ns_scalar_map(const at::Tensor& lam_in,
                                                 const at::Tensor& norm_in, int64_t n_iter) {
  check(lam_in, norm_in, "ns_scalar_map");
  c10::cuda::CUDAGuard guard(lam_in.device());
  auto lam = lam_in.contiguous();
  auto norm = norm_in.to(lam.scalar_type()).contiguous();
  auto psi = at::empty_like(lam), dpsi = at::empty_like(lam);
  const int64_t total = lam.numel();
  if (total == 0) return {psi, dpsi};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "ns_scalar_map_cuda", [&] {
    map_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        lam.data_ptr<scalar_t>(), norm.data_ptr<scalar_t>(), psi.data_ptr<scalar_t>(),
        dpsi.data_ptr<scalar_t>(), lam.size(1), total, n_iter);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {psi, dpsi};
}

at::Tensor ns_divided_differences(const at::Tensor& lam_in, const at::Tensor& norm_in,
                                  int64_t n_iter) {
  check(lam_in, norm_in, "ns_divided_differences");
  c10::cuda::CUDAGuard guard(lam_in.device());
  auto lam = lam_in.contiguous();
  auto norm = norm_in.to(lam.scalar_type()).contiguous();
  const int64_t b = lam.size(0), d = lam.size(1);
  auto out = at::empty({b, d, d}, lam.options());
  const int64_t total = out.numel();
  if (total == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "ns_divided_differences_cuda", [&] {
    divided_kernel<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(
        lam.data_ptr<scalar_t>(), norm.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), d, total,
        n_iter);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace cuda
}  // namespace invariance
