// Tensor glue of the CUDA spectral Newton-Schulz kernels: checks and allocation here, the
// kernels behind launch::ns_scalar_map / ns_divided_differences (ns_scalar.cu).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "glue_common.h"
#include "invariance.h"

namespace invariance {
namespace cuda {
namespace {

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
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "ns_scalar_map_cuda", [&] {
    C10_CUDA_CHECK(launch::ns_scalar_map<scalar_t>(
        lam.data_ptr<scalar_t>(), norm.data_ptr<scalar_t>(), psi.data_ptr<scalar_t>(),
        dpsi.data_ptr<scalar_t>(), lam.size(0), lam.size(1), n_iter, current_stream()));
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
  AT_DISPATCH_FLOATING_TYPES(lam.scalar_type(), "ns_divided_differences_cuda", [&] {
    C10_CUDA_CHECK(launch::ns_divided_differences<scalar_t>(
        lam.data_ptr<scalar_t>(), norm.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), b, d,
        n_iter, current_stream()));
  });
  return out;
}

}  // namespace cuda
}  // namespace invariance
