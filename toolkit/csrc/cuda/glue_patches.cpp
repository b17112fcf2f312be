// Tensor glue of the CUDA sampled im2col: geometry and allocation here, the gather/scatter
// kernels behind launch::sampled_patches / _backward (patches.cu).
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include "glue_common.h"
#include "invariance.h"

namespace invariance {
namespace cuda {

at::Tensor sampled_patches(const at::Tensor& x_in, at::IntArrayRef kernel, at::IntArrayRef padding,
                           at::IntArrayRef dilation, at::IntArrayRef stride, int64_t groups,
                           int64_t block) {
  check_cuda(x_in, "sampled_patches");
  c10::cuda::CUDAGuard guard(x_in.device());
  const auto g = patch_geometry(x_in, kernel, padding, dilation, stride, groups, block);
  auto x = x_in.contiguous();
  auto out = at::empty({g.groups, g.vectors(), g.d}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sampled_patches_cuda", [&] {
    C10_CUDA_CHECK(launch::sampled_patches<scalar_t>(g, x.data_ptr<scalar_t>(),
                                                     out.data_ptr<scalar_t>(), current_stream()));
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
  auto gx = at::zeros(x.sizes(), grad.options());  // the scatter accumulates (atomics)
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "sampled_patches_backward_cuda", [&] {
    C10_CUDA_CHECK(launch::sampled_patches_backward<scalar_t>(
        g, grad.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), current_stream()));
  });
  return gx;
}

}  // namespace cuda
}  // namespace invariance
