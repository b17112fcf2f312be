// The coupled Newton-Schulz iteration acting on one eigenvalue, shared by the CPU and CUDA
// kernels.  For Sigma = Q diag(lam) Q^T the matrix iteration maps each eigenvalue through the
// same scalar recursion (every iterate is a polynomial in Sigma):
//   y0 = lam / c, z0 = 1;  t = (3 - z*y) / 2, y <- y*t, z <- t*z;   psi(lam) = z_n / sqrt(c)
// with c = ||Sigma||_F.  Derivatives are carried along exactly with the product rule, and the
// divided difference psi[lam_i, lam_j] with the Leibniz rule of divided differences
//   (f*g)[a, b] = f[a, b] * g(b) + f(a) * g[a, b],
// which never divides by lam_i - lam_j and so stays exact for (near-)equal eigenvalues.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace invariance {

struct ScalarMap {
  double psi;     // z_n / sqrt(c)
  double dpsi_dc; // partial derivative of psi with respect to c at fixed lam
};

TK_HD inline ScalarMap ns_scalar(double lam, double c, int64_t n_iter) {
  double y = lam / c, z = 1.0, dy = 1.0 / c, dz = 0.0;  // d/dlam of y and z
  for (int64_t k = 0; k < n_iter; ++k) {
    const double t = 0.5 * (3.0 - z * y);
    const double dt = -0.5 * (dz * y + z * dy);
    const double ny = y * t, ndy = dy * t + y * dt;
    const double nz = t * z, ndz = dt * z + t * dz;
    y = ny, dy = ndy, z = nz, dz = ndz;
  }
  const double rs = 1.0 / sqrt(c);
  // psi(lam, c) = z_n(lam / c) / sqrt(c);  d z_n(lam/c) / dc = -(lam / c) * dz/dlam
  return {z * rs, -(lam / c) * dz * rs - 0.5 * z * rs / c};
}

// t of step k from the iterates (y, z) entering it.
TK_HD inline double ns_step_t(double y, double z) { return 0.5 * (3.0 - z * y); }

// One step of the divided differences [lam_i, lam_j] of y and z (Dy, Dz), from the iterates
// (y, z, t) of both eigenvalues at that step.  The CPU kernel precomputes the per-eigenvalue
// iterates once and runs this step over whole rows; the values are the same bit for bit.
TK_HD inline void ns_divided_step(double yi, double zi, double ti, double yj, double zj,
                                  double tj, double& Dy, double& Dz) {
  const double Dt = -0.5 * (Dz * yj + zi * Dy);
  const double nDy = Dy * tj + yi * Dt;
  const double nDz = Dt * zj + ti * Dz;
  Dy = nDy, Dz = nDz;
}

TK_HD inline double ns_divided_difference(double li, double lj, double c, int64_t n_iter) {
  double yi = li / c, yj = lj / c, zi = 1.0, zj = 1.0;
  double Dy = 1.0 / c, Dz = 0.0;  // divided differences [lam_i, lam_j] of y and z
  for (int64_t k = 0; k < n_iter; ++k) {
    const double ti = ns_step_t(yi, zi), tj = ns_step_t(yj, zj);
    ns_divided_step(yi, zi, ti, yj, zj, tj, Dy, Dz);
    yi *= ti, yj *= tj, zi *= ti, zj *= tj;
  }
  return Dz / sqrt(c);
}

}  // namespace invariance
