// Operator schemas of the `invariance` library, the CPU kernels' registration, and the
// Python module toolkit._C (importing it registers everything; torch.ops.invariance.*).
#include <torch/extension.h>
#include <torch/library.h>

#include <array>

#include "invariance.h"
#include "small_math_threads.h"

namespace invariance {
// composite.cpp
std::tuple<at::Tensor, at::Tensor> im2col_moments(const at::Tensor&, at::IntArrayRef,
                                                  at::IntArrayRef, at::IntArrayRef,
                                                  at::IntArrayRef, int64_t, int64_t);
std::tuple<at::Tensor, at::Tensor> chunk_moments(const at::Tensor&, int64_t);
std::tuple<at::Tensor, at::Tensor> patch_moments(const at::Tensor&);
at::Tensor patch_moments_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&);
std::tuple<at::Tensor, at::Tensor> inv_sqrt_newton_forward(const at::Tensor&, int64_t);
at::Tensor inv_sqrt_newton_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    int64_t);
std::tuple<at::Tensor, at::Tensor, at::Tensor> inv_sqrt_spectral_forward(const at::Tensor&,
                                                                         int64_t);
at::Tensor inv_sqrt_spectral_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, int64_t);
std::tuple<at::Tensor, at::Tensor> fold_weights(const at::Tensor&, const at::Tensor&,
                                                const at::Tensor&, const at::Tensor&, int64_t,
                                                bool);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fold_weights_backward(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, int64_t, bool, std::array<bool, 3>);
}  // namespace invariance

#define PATCH_ARGS "int[2] kernel, int[2] padding, int[2] dilation, int[2] stride, int groups, int block"

TORCH_LIBRARY(invariance, m) {
  // Differentiable ops used by the layer (autograd kernels in autograd.cpp).
  m.def("sample_norm(Tensor x, int norm_dims, float eps) -> Tensor");
  m.def("im2col_moments(Tensor x, " PATCH_ARGS ") -> (Tensor, Tensor)");
  m.def("chunk_moments(Tensor x, int block) -> (Tensor, Tensor)");
  m.def("inv_sqrt_newton(Tensor sigma, int n_iter) -> Tensor");
  m.def("inv_sqrt_spectral(Tensor sigma, int n_iter) -> Tensor");
  m.def("fold_weights(Tensor weight, Tensor whitening, Tensor mean, Tensor bias, int groups, "
        "bool interleaved) -> (Tensor, Tensor)");
  m.def("local_stats(Tensor x, int window, float rf_eps) -> (Tensor, Tensor)");
  // Their forward and backward halves, and the kernels they are built from.
  m.def("sample_norm_forward(Tensor x, int norm_dims, float eps) -> (Tensor, Tensor)");
  m.def("sample_norm_backward(Tensor grad, Tensor y, Tensor sigma, int norm_dims, float eps) "
        "-> Tensor");
  m.def("sampled_patches(Tensor x, " PATCH_ARGS ") -> Tensor");
  m.def("sampled_patches_backward(Tensor grad, Tensor x, " PATCH_ARGS ") -> Tensor");
  m.def("patch_moments(Tensor patches) -> (Tensor, Tensor)");
  m.def("patch_moments_backward(Tensor grad_mean, Tensor grad_second, Tensor patches) -> Tensor");
  m.def("inv_sqrt_newton_forward(Tensor sigma, int n_iter) -> (Tensor, Tensor)");
  m.def("inv_sqrt_newton_backward(Tensor grad, Tensor sigma, Tensor trace, int n_iter) -> Tensor");
  m.def("inv_sqrt_spectral_forward(Tensor sigma, int n_iter) -> (Tensor, Tensor, Tensor)");
  m.def("inv_sqrt_spectral_backward(Tensor grad, Tensor sigma, Tensor eigvecs, Tensor eigvals, "
        "int n_iter) -> Tensor");
  m.def("ns_scalar_map(Tensor eigvals, Tensor norm, int n_iter) -> (Tensor, Tensor)");
  m.def("ns_divided_differences(Tensor eigvals, Tensor norm, int n_iter) -> Tensor");
  m.def("fold_weights_backward(Tensor grad_weight, Tensor grad_bias, Tensor weight, "
        "Tensor whitening, Tensor mean, Tensor folded, int groups, bool interleaved, "
        "bool[3] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("local_stats_forward(Tensor x, int window, float rf_eps) -> (Tensor, Tensor, Tensor)");
  m.def("local_stats_backward(Tensor grad_mean, Tensor grad_std, Tensor x, Tensor mean, "
        "Tensor var, int window) -> Tensor");
}

TORCH_LIBRARY_IMPL(invariance, CPU, m) {
  m.impl("sample_norm_forward", &invariance::cpu::sample_norm_forward);
  m.impl("sample_norm_backward", &invariance::cpu::sample_norm_backward);
  m.impl("sampled_patches", &invariance::cpu::sampled_patches);
  m.impl("sampled_patches_backward", &invariance::cpu::sampled_patches_backward);
  m.impl("local_stats_forward", &invariance::cpu::local_stats_forward);
  m.impl("local_stats_backward", &invariance::cpu::local_stats_backward);
  m.impl("ns_scalar_map", &invariance::cpu::ns_scalar_map);
  m.impl("ns_divided_differences", &invariance::cpu::ns_divided_differences);
}

TORCH_LIBRARY_IMPL(invariance, CompositeExplicitAutograd, m) {
  m.impl("im2col_moments", &invariance::im2col_moments);
  m.impl("patch_moments", &invariance::patch_moments);
  m.impl("patch_moments_backward", &invariance::patch_moments_backward);
  m.impl("inv_sqrt_newton_forward", &invariance::inv_sqrt_newton_forward);
  m.impl("inv_sqrt_newton_backward", &invariance::inv_sqrt_newton_backward);
  m.impl("inv_sqrt_spectral_forward", &invariance::inv_sqrt_spectral_forward);
  m.impl("inv_sqrt_spectral_backward", &invariance::inv_sqrt_spectral_backward);
  m.impl("fold_weights", &invariance::fold_weights);
  m.impl("fold_weights_backward", &invariance::fold_weights_backward);
}

TORCH_LIBRARY_IMPL(invariance, CompositeImplicitAutograd, m) {
  m.impl("chunk_moments", &invariance::chunk_moments);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Kernels of the invariance layer; the ops live in torch.ops.invariance";
  m.def("set_small_math_threads", &invariance::set_small_math_threads, pybind11::arg("n"),
        "Threads for the layer's d x d math on the CPU: 0 = auto (1 when the node is "
        "oversubscribed), n = at most n");
  m.def("small_math_threads_setting", &invariance::small_math_threads_setting);
  m.def("small_math_threads", &invariance::small_math_threads,
        "The thread count the d x d math uses now");
#ifdef WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
