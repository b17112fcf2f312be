// Tensor glue of the CUDA sample_norm: shape checks and allocation here, the kernels behind
// launch::sample_norm_forward / _backward (sample_norm.cu).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "glue_common.h"
#include "invariance.h"

namespace invariance {
namespace cuda {

std::tuple<at::Tensor, at::Tensor> sample_norm_forward(const at::Tensor& x_in, int64_t norm_dims,
                                                       double eps) {
  check_cuda(x_in, "sample_norm_forward");
  c10::cuda::CUDAGuard guard(x_in.device());
  const int64_t len = sample_norm_row_length(x_in, norm_dims);
  auto x = x_in.contiguous();
  auto y = at::empty_like(x);
  auto sigma = at::empty(x.sizes().slice(0, x.dim() - norm_dims), x.options());
  const int64_t rows = len > 0 ? x.numel() / len : 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sample_norm_forward_cuda", [&] {
    C10_CUDA_CHECK(launch::sample_norm_forward<scalar_t>(
        x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), sigma.data_ptr<scalar_t>(), rows, len,
        eps, current_stream()));
  });
  return {y, sigma};
}

at::Tensor sample_norm_backward(const at::Tensor& grad_in, const at::Tensor& y_in,
                                const at::Tensor& sigma_in, int64_t norm_dims, double eps) {
  check_cuda(y_in, "sample_norm_backward");
  c10::cuda::CUDAGuard guard(y_in.device());
  const int64_t len = sample_norm_row_length(y_in, norm_dims);
  auto g = grad_in.contiguous(), y = y_in.contiguous(), sigma = sigma_in.contiguous();
  auto gx = at::empty_like(y);
  const int64_t rows = len > 0 ? y.numel() / len : 0;
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "sample_norm_backward_cuda", [&] {
    C10_CUDA_CHECK(launch::sample_norm_backward<scalar_t>(
        g.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), sigma.data_ptr<scalar_t>(),
        gx.data_ptr<scalar_t>(), rows, len, eps, current_stream()));
  });
  return gx;
}

}  // namespace cuda
}  // namespace invariance
