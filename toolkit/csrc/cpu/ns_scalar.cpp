// CPU kernels of the spectral Newton-Schulz path: the scalar map on the eigenvalues (forward)
// and the matrix of divided differences (Daleckii-Krein kernel of the backward).
#include <ATen/Parallel.h>

#include <ATen/ATen.h>

#include "invariance.h"
#include "ns_scalar.h"

namespace invariance {
namespace cpu {

std::tuple<at::Tensor, at::Tensor> ns_scalar_map(const at::Tensor& lam_in,
                                                 const at::Tensor& norm_in, int64_t n_iter) {
  TORCH_CHECK(lam_in.dim() == 2 && norm_in.dim() == 1 && norm_in.size(0) == lam_in.size(0),
              "ns_scalar_map: expected eigenvalues (B, d) and norms (B,)");
  auto lam = lam_in.contiguous().to(at::kDouble);
  auto norm = norm_in.contiguous().to(at::kDouble);
  auto psi = at::empty_like(lam), dpsi = at::empty_like(lam);
  const int64_t b = lam.size(0), d = lam.size(1);
  const double* l = lam.data_ptr<double>();
  const double* c = norm.data_ptr<double>();
  double* p = psi.data_ptr<double>();
  double* dp = dpsi.data_ptr<double>();
  at::parallel_for(0, b * d, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const auto m = ns_scalar(l[i], c[i / d], n_iter);
      p[i] = m.psi;
      dp[i] = m.dpsi_dc;
    }
  });
  return {psi.to(lam_in.scalar_type()), dpsi.to(lam_in.scalar_type())};
}

at::Tensor ns_divided_differences(const at::Tensor& lam_in, const at::Tensor& norm_in,
                                  int64_t n_iter) {
  TORCH_CHECK(lam_in.dim() == 2 && norm_in.dim() == 1 && norm_in.size(0) == lam_in.size(0),
              "ns_divided_differences: expected eigenvalues (B, d) and norms (B,)");
  auto lam = lam_in.contiguous().to(at::kDouble);
  auto norm = norm_in.contiguous().to(at::kDouble);
  const int64_t b = lam.size(0), d = lam.size(1);
  auto out = at::empty({b, d, d}, lam_in.options());
  const double* l = lam.data_ptr<double>();
  const double* c = norm.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ns_divided_differences", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    // The matrix is symmetric: compute the upper triangle of each row and mirror it.
    at::parallel_for(0, b * d, 8, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t bi = r / d, i = r % d;
        const double* lb = l + bi * d;
        scalar_t* ob = o + bi * d * d;
        for (int64_t j = i; j < d; ++j) {
          const auto v = static_cast<scalar_t>(ns_divided_difference(lb[i], lb[j], c[bi], n_iter));
          ob[i * d + j] = v;
          ob[j * d + i] = v;
        }
      }
    });
  });
  return out;
}

}  // namespace cpu
}  // namespace invariance
