// Spectral Newton-Schulz on the GPU: the scalar map per eigenvalue and the matrix of divided
// differences per eigenvalue pair, both in double with the CPU kernel's functions
// (ns_scalar.h).
#include "common.cuh"
#include "launchers.h"
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
  const int64_t b = k / (d * d), r = (k / d) % d, c = k % d;
  // Evaluated as [lam_lo, lam_hi] for both (r, c) and (c, r): the recursion is not bitwise
  // symmetric in its arguments, and the CPU kernel mirrors its upper triangle.
  const int64_t i = r < c ? r : c, j = r < c ? c : r;
  out[k] = static_cast<T>(ns_divided_difference(static_cast<double>(lam[b * d + i]),
                                                static_cast<double>(lam[b * d + j]),
                                                static_cast<double>(norm[b]), n_iter));
}

}  // namespace

namespace launch {

template <typename T>
cudaError_t ns_scalar_map(const T* lam, const T* norm, T* psi, T* dpsi, int64_t batch, int64_t d,
                          int64_t n_iter, cudaStream_t stream) {
  const int64_t total = batch * d;
  if (total == 0) return cudaSuccess;
  map_kernel<T><<<static_cast<unsigned int>(blocks_for(total)), kThreads, 0, stream>>>(
      lam, norm, psi, dpsi, d, total, n_iter);
  return cudaGetLastError();
}

template <typename T>
cudaError_t ns_divided_differences(const T* lam, const T* norm, T* out, int64_t batch, int64_t d,
                                   int64_t n_iter, cudaStream_t stream) {
  const int64_t total = batch * d * d;
  if (total == 0) return cudaSuccess;
  divided_kernel<T><<<static_cast<unsigned int>(blocks_for(total)), kThreads, 0, stream>>>(
      lam, norm, out, d, total, n_iter);
  return cudaGetLastError();
}

template cudaError_t ns_scalar_map<float>(const float*, const float*, float*, float*, int64_t,
                                          int64_t, int64_t, cudaStream_t);
template cudaError_t ns_scalar_map<double>(const double*, const double*, double*, double*,
                                           int64_t, int64_t, int64_t, cudaStream_t);
template cudaError_t ns_divided_differences<float>(const float*, const float*, float*, int64_t,
                                                   int64_t, int64_t, cudaStream_t);
template cudaError_t ns_divided_differences<double>(const double*, const double*, double*,
                                                    int64_t, int64_t, int64_t, cudaStream_t);

}  // namespace launch
}  // namespace cuda
}  // namespace invariance
