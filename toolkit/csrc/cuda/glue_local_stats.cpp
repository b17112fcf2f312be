// Tensor glue of the CUDA local statistics: checks, outputs and the double workspace (from the
// caching allocator) here, the kernels behind launch::local_stats_forward / _backward
// (local_stats.cu).
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include "glue_common.h"
#include "invariance.h"

namespace invariance {
namespace cuda {
namespace {

void check(const at::Tensor& x, int64_t window, const char* what) {
  check_cuda(x, what);
  TORCH_CHECK(x.dim() == 4, "local_stats: expected x of shape (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(window >= 1 && window % 2 == 1, "local_stats: window must be odd, got ", window);
}

at::Tensor workspace(const at::Tensor& x, int64_t doubles) {
  return at::empty({doubles}, x.options().dtype(at::kDouble));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_stats_forward(const at::Tensor& x_in,
                                                                   int64_t window, double rf_eps) {
  check(x_in, window, "local_stats_forward");
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto mean = at::empty({N, 1, H, W}, x.options());
  auto std_ = at::empty_like(mean), var = at::empty_like(mean);
  auto ws = workspace(x, launch::local_stats_forward_workspace(N, H, W));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "local_stats_forward_cuda", [&] {
    C10_CUDA_CHECK(launch::local_stats_forward<scalar_t>(
        x.data_ptr<scalar_t>(), mean.data_ptr<scalar_t>(), std_.data_ptr<scalar_t>(),
        var.data_ptr<scalar_t>(), ws.data_ptr<double>(), N, C, H, W, window, rf_eps,
        current_stream()));
  });
  return {mean, std_, var};
}

at::Tensor local_stats_backward(const at::Tensor& gmean_in, const at::Tensor& gstd_in,
                                const at::Tensor& x_in, const at::Tensor& mean_in,
                                const at::Tensor& var_in, int64_t window) {
  check(x_in, window, "local_stats_backward");
  c10::cuda::CUDAGuard guard(x_in.device());
  auto x = x_in.contiguous(), gmean = gmean_in.contiguous(), gstd = gstd_in.contiguous();
  auto mean = mean_in.contiguous(), var = var_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  auto gx = at::empty_like(x);
  auto ws = workspace(x, launch::local_stats_backward_workspace(N, H, W));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "local_stats_backward_cuda", [&] {
    C10_CUDA_CHECK(launch::local_stats_backward<scalar_t>(
        gmean.data_ptr<scalar_t>(), gstd.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
        mean.data_ptr<scalar_t>(), var.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(),
        ws.data_ptr<double>(), N, C, H, W, window, current_stream()));
  });
  return gx;
}

}  // namespace cuda
}  // namespace invariance
