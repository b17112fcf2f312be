// CPU kernels of the spectral Newton-Schulz path: the scalar map on the eigenvalues (forward)
// and the matrix of divided differences (Daleckii-Krein kernel of the backward).
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

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

namespace {
// Iterates (y, z, t) entering each step k of every eigenvalue's scalar recursion, laid out
// [batch][k][i] so that a row of divided differences reads them contiguously.
struct Iterates {
  std::vector<double> y, z, t;
};

Iterates scalar_iterates(const double* lam, const double* c, int64_t b, int64_t d,
                         int64_t n_iter) {
  Iterates it{std::vector<double>(b * n_iter * d), std::vector<double>(b * n_iter * d),
              std::vector<double>(b * n_iter * d)};
  for (int64_t bi = 0; bi < b; ++bi) {
    for (int64_t i = 0; i < d; ++i) {
      double y = lam[bi * d + i] / c[bi], z = 1.0;
      for (int64_t k = 0; k < n_iter; ++k) {
        const int64_t at = (bi * n_iter + k) * d + i;
        const double t = ns_step_t(y, z);
        it.y[at] = y, it.z[at] = z, it.t[at] = t;
        y *= t, z *= t;
      }
    }
  }
  return it;
}

// Row i of batch bi, entries j >= i (mirrored): ns_divided_difference for every j at once,
// vectorised over j.
template <typename scalar_t>
void divided_row(const Iterates& it, double c, int64_t bi, int64_t i, int64_t d,
                 int64_t n_iter, double* Dy, double* Dz, scalar_t* out) {
  const int64_t len = d - i;
  for (int64_t j = 0; j < len; ++j) Dy[j] = 1.0 / c, Dz[j] = 0.0;
  for (int64_t k = 0; k < n_iter; ++k) {
    const int64_t base = (bi * n_iter + k) * d;
    const double yi = it.y[base + i], zi = it.z[base + i], ti = it.t[base + i];
    const double* yj = it.y.data() + base + i;
    const double* zj = it.z.data() + base + i;
    const double* tj = it.t.data() + base + i;
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) ns_divided_step(yi, zi, ti, yj[j], zj[j], tj[j], Dy[j], Dz[j]);
  }
  const double root = sqrt(c);
  for (int64_t j = 0; j < len; ++j) {
    const auto v = static_cast<scalar_t>(Dz[j] / root);
    out[i * d + i + j] = v;
    out[(i + j) * d + i] = v;
  }
}
}  // namespace

at::Tensor ns_divided_differences(const at::Tensor& lam_in, const at::Tensor& norm_in,
                                  int64_t n_iter) {
  TORCH_CHECK(lam_in.dim() == 2 && norm_in.dim() == 1 && norm_in.size(0) == lam_in.size(0),
              "ns_divided_differences: expected eigenvalues (B, d) and norms (B,)");
  auto lam = lam_in.contiguous().to(at::kDouble);
  auto norm = norm_in.contiguous().to(at::kDouble);
  const int64_t b = lam.size(0), d = lam.size(1);
  auto out = at::empty({b, d, d}, lam_in.options());
  if (b == 0 || d == 0) return out;
  const double* c = norm.data_ptr<double>();
  const Iterates it = scalar_iterates(lam.data_ptr<double>(), c, b, d, n_iter);
  // Row i holds d - i entries: task p takes rows p and d - 1 - p, an even share of the work.
  const int64_t half = (d + 1) / 2;
  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ns_divided_differences", [&] {
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, b * half, 4, [&](int64_t begin, int64_t end) {
      std::vector<double> Dy(d), Dz(d);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t bi = r / half, p = r % half;
        scalar_t* ob = o + bi * d * d;
        divided_row(it, c[bi], bi, p, d, n_iter, Dy.data(), Dz.data(), ob);
        if (d - 1 - p != p) divided_row(it, c[bi], bi, d - 1 - p, d, n_iter, Dy.data(),
                                        Dz.data(), ob);
      }
    });
  });
  return out;
}

}  // namespace cpu
}  // namespace invariance
