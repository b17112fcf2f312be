// Device-agnostic ops of the invariance layer, written with ATen so that matrix products go
// through BLAS / cuBLAS and the eigendecomposition through LAPACK / cuSOLVER.  Registered as
// CompositeExplicitAutograd: they run on every backend (and on meta tensors) and get their
// gradients from the autograd kernels in autograd.cpp.
#include <torch/library.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <array>

#include "invariance.h"
#include "small_math_threads.h"

namespace invariance {
namespace {

using at::Tensor;

c10::OperatorHandle op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

Tensor call_patches(const Tensor& x, at::IntArrayRef k, at::IntArrayRef p, at::IntArrayRef dl,
                    at::IntArrayRef sample_stride, int64_t groups, int64_t block) {
  static auto h = op("invariance::sampled_patches")
                      .typed<Tensor(const Tensor&, at::IntArrayRef, at::IntArrayRef,
                                    at::IntArrayRef, at::IntArrayRef, int64_t, int64_t)>();
  return h.call(x, k, p, dl, sample_stride, groups, block);
}

std::tuple<Tensor, Tensor> call_scalar_map(const Tensor& lam, const Tensor& c, int64_t n) {
  static auto h = op("invariance::ns_scalar_map")
                      .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t)>();
  return h.call(lam, c, n);
}

Tensor call_divided_differences(const Tensor& lam, const Tensor& c, int64_t n) {
  static auto h = op("invariance::ns_divided_differences")
                      .typed<Tensor(const Tensor&, const Tensor&, int64_t)>();
  return h.call(lam, c, n);
}

// The d x d math below runs under SmallMathThreads (small_math_threads.h): one thread on an
// oversubscribed node, where parallel regions on 576 x 576 matrices stall.

// Fold work below this many multiply-adds runs single-threaded (stage-0 layers: 2e7).
constexpr double kSmallFoldMacs = 2.0e8;

// scale * A B^T for batches A, B (b, d, k) whose product is symmetric (X^T X, Q diag Q^T).
// For d >= 256 only the lower block triangle is multiplied (row panels of d/4: 5/8 of the
// flops; every panel product keeps k as its inner dimension and runs at full gemm speed,
// measured 31 ms vs 47 ms for X^T X with M = 15488, d = 576 on 2 cores) and mirrored.
Tensor symmetric_product(const Tensor& A, const Tensor& B, double scale) {
  const int64_t b = A.size(0), d = A.size(1);
  auto out = at::empty({b, d, d}, A.options());
  const int64_t panels = d >= 256 ? 4 : 1;
  if (panels == 1) return at::baddbmm_out(out, out, A, B.mT(), /*beta=*/0, /*alpha=*/scale);
  auto edge = [&](int64_t i) { return i * d / panels; };
  for (int64_t g = 0; g < b; ++g) {
    const auto Ag = A[g], Bg = B[g];
    auto Sg = out[g];
    for (int64_t i = 0; i < panels; ++i) {
      const int64_t c0 = edge(i), c1 = edge(i + 1);
      auto block = Sg.slice(0, c0).slice(1, c0, c1);  // rows c0.., columns of panel i
      at::addmm_out(block, block, Ag.slice(0, c0), Bg.slice(0, c0, c1).t(), /*beta=*/0,
                    /*alpha=*/scale);
    }
    SmallMathThreads scope(A.is_cpu());
    for (int64_t i = 0; i < panels; ++i) {
      for (int64_t j = i + 1; j < panels; ++j) {
        Sg.slice(0, edge(i), edge(i + 1)).slice(1, edge(j), edge(j + 1))
            .copy_(Sg.slice(0, edge(j), edge(j + 1)).slice(1, edge(i), edge(i + 1)).t());
      }
    }
  }
  return out;
}

// scale * X^T X for a batch of tall matrices X (b, M, d), the scale on the gemm's alpha.
Tensor gram(const Tensor& X, double scale) { return symmetric_product(X.mT(), X.mT(), scale); }

void check_square_batch(const Tensor& sigma, const char* name, int64_t n_iter) {
  TORCH_CHECK(sigma.dim() == 3 && sigma.size(1) == sigma.size(2), name,
              ": expected a batch of square matrices (B, d, d), got ", sigma.sizes());
  TORCH_CHECK(n_iter >= 1, name, ": n_iter must be >= 1, got ", n_iter);
}

}  // namespace

// ---- sampled im2col moments -------------------------------------------------------------

// Mean and second moment of a batch of patch matrices X (groups, M, d).
std::tuple<Tensor, Tensor> patch_moments(const Tensor& X) {
  TORCH_CHECK(X.dim() == 3 && X.size(1) > 0, "patch_moments: expected (groups, M, d) with M > 0, "
              "got ", X.sizes());
  const double m = static_cast<double>(X.size(1));
  return {X.mean(1), gram(X, 1.0 / m)};
}

// S = X^T X / M  ->  dX = X (G + G^T) / M;   mu = mean(X)  ->  dX += 1 grad_mu^T / M
Tensor patch_moments_backward(const Tensor& grad_mean, const Tensor& grad_second, const Tensor& X) {
  const double m = static_cast<double>(X.size(1));
  Tensor A, shift;
  {
    SmallMathThreads scope(X.is_cpu());
    A = (grad_second + grad_second.mT()).div_(m);
    shift = grad_mean.unsqueeze(1).div(m);
  }
  return at::baddbmm(shift, X, A);
}

std::tuple<Tensor, Tensor> im2col_moments(const Tensor& x, at::IntArrayRef k, at::IntArrayRef p,
                                          at::IntArrayRef dl, at::IntArrayRef sample_stride,
                                          int64_t groups, int64_t block) {
  return patch_moments(call_patches(x, k, p, dl, sample_stride, groups, block));
}

// Linear layers: contiguous chunks of `block` features are samples of one covariance.
std::tuple<Tensor, Tensor> chunk_moments(const Tensor& x, int64_t block) {
  TORCH_CHECK(block >= 1 && x.dim() >= 1 && x.size(-1) % block == 0, "chunk_moments: block=",
              block, " does not divide the feature size of ", x.sizes());
  auto X = x.reshape({-1, block});
  const double m = static_cast<double>(X.size(0));
  return {X.mean(0).unsqueeze(0), at::mm(X.t(), X).div(m).unsqueeze(0)};
}

// ---- inverse square root: coupled Newton-Schulz loop -----------------------------------

// trace[k] holds (Y_k, Z_k), the iterates entering step k, for the backward.
std::tuple<Tensor, Tensor> inv_sqrt_newton_forward(const Tensor& sigma, int64_t n_iter) {
  check_square_batch(sigma, "inv_sqrt_newton", n_iter);
  SmallMathThreads scope(sigma.is_cpu());
  const int64_t b = sigma.size(0), d = sigma.size(1);
  auto c = sigma.square().sum({-2, -1}, true).sqrt();
  auto I = at::eye(d, sigma.options()).expand({b, d, d});
  auto trace = at::empty({n_iter, 2, b, d, d}, sigma.options());
  Tensor Y = sigma / c, Z = I;
  for (int64_t k = 0; k < n_iter; ++k) {
    trace[k][0].copy_(Y);
    trace[k][1].copy_(Z);
    auto T = k == 0 ? (3 * I - Y) * 0.5 : (3 * I - at::bmm(Z, Y)) * 0.5;
    if (k + 1 < n_iter) Y = at::bmm(Y, T);
    Z = k == 0 ? T : at::bmm(T, Z);
  }
  return {Z / c.sqrt(), trace};
}

Tensor inv_sqrt_newton_backward(const Tensor& grad, const Tensor& sigma, const Tensor& trace,
                                int64_t n_iter) {
  check_square_batch(sigma, "inv_sqrt_newton_backward", n_iter);
  SmallMathThreads scope(sigma.is_cpu());
  const int64_t b = sigma.size(0), d = sigma.size(1);
  auto c = sigma.square().sum({-2, -1}, true).sqrt();
  auto I = at::eye(d, sigma.options()).expand({b, d, d});
  Tensor gZ = grad / c.sqrt(), gY, gc;
  for (int64_t k = n_iter - 1; k >= 0; --k) {
    auto Y = trace[k][0], Z = trace[k][1];
    auto T = k == 0 ? (3 * I - Y) * 0.5 : (3 * I - at::bmm(Z, Y)) * 0.5;
    if (k == n_iter - 1) {  // D = Z_n / sqrt(c):  dD/dc = -Z_n c^{-3/2} / 2
      auto Zn = k == 0 ? T : at::bmm(T, Z);
      gc = (grad * Zn).sum({-2, -1}, true) * (-0.5) / (c * c.sqrt());
    }
    // Y' = Y T (not formed in the last step), Z' = T Z (= T in the first step)
    Tensor gT = k == 0 ? gZ : at::bmm(gZ, Z.mT());
    Tensor gY_prev, gZ_prev;
    if (gY.defined()) {
      gT = gT + at::bmm(Y.mT(), gY);
      gY_prev = at::bmm(gY, T.mT());
    }
    // T = (3I - P) / 2 with P = Z Y (P = Y in the first step, where Z = I)
    auto gP = gT * (-0.5);
    if (k == 0) {
      gY_prev = gY_prev.defined() ? gY_prev + gP : gP;
    } else {
      gZ_prev = at::bmm(T.mT(), gZ) + at::bmm(gP, Y.mT());
      auto gYp = at::bmm(Z.mT(), gP);
      gY_prev = gY_prev.defined() ? gY_prev + gYp : gYp;
    }
    gY = gY_prev;
    gZ = gZ_prev;
  }
  // Y0 = sigma / c and c = ||sigma||_F
  gc = gc - (gY * sigma).sum({-2, -1}, true) / (c * c);
  return gY / c + sigma * (gc / c);
}

// ---- inverse square root: the same function through one eigendecomposition -------------

std::tuple<Tensor, Tensor, Tensor> inv_sqrt_spectral_forward(const Tensor& sigma, int64_t n_iter) {
  check_square_batch(sigma, "inv_sqrt_spectral", n_iter);
  SmallMathThreads scope(sigma.is_cpu());
  // fp32 eigenvalues carry an absolute error of ~1e-7 ||Sigma||; with many iterations the map
  // is steep at small eigenvalues, so decompose in fp64 there (and whenever d is small).
  const bool promote =
      sigma.scalar_type() == at::kFloat && (n_iter > 7 || sigma.size(-1) <= 128);
  auto s = promote ? sigma.to(at::kDouble) : sigma;
  // LAPACK's tridiagonalisation is hundreds of small BLAS-2 calls, each a parallel region
  // with a barrier: the worst case of the stalls described in small_math_threads.h (10-100x).
  auto [lam, Q] = at::linalg_eigh(s);
  auto c = s.square().sum({-2, -1}).sqrt();
  auto psi = std::get<0>(call_scalar_map(lam, c, n_iter));
  auto D = symmetric_product(Q * psi.unsqueeze(-2), Q, 1.0).to(sigma.scalar_type());
  return {D, Q.to(sigma.scalar_type()).contiguous(), lam.to(sigma.scalar_type())};
}

// Daleckii-Krein: dSigma = Q (K o (Q^T dD Q)) Q^T with K the divided differences of the scalar
// map, plus the path through c = ||Sigma||_F.
Tensor inv_sqrt_spectral_backward(const Tensor& grad, const Tensor& sigma, const Tensor& Q,
                                  const Tensor& lam, int64_t n_iter) {
  check_square_batch(sigma, "inv_sqrt_spectral_backward", n_iter);
  SmallMathThreads scope(sigma.is_cpu());
  auto c = sigma.square().sum({-2, -1}).sqrt();
  auto dpsi_dc = std::get<1>(call_scalar_map(lam, c, n_iter));
  auto K = call_divided_differences(lam, c, n_iter);
  auto Gb = at::bmm(at::bmm(Q.mT(), grad), Q);
  auto gsigma = at::bmm(at::bmm(Q, K * Gb), Q.mT());
  auto gc = (Gb.diagonal(0, -2, -1) * dpsi_dc).sum(-1);
  return gsigma + sigma * (gc / c).view({-1, 1, 1});
}

// ---- folding the whitening into the weights ---------------------------------------------
// Conv (interleaved): weight row o of group gamma, viewed as (d, G) in unfold order, gets
// W~[:, g] = D W[:, g] and b~ = b - sum_g W~[:, g] . mu.  Linear: W~ = W.view(-1, B) D.

namespace {
struct FoldShape {
  int64_t groups, out, out_per_group, d, G;
};

FoldShape fold_shape(const Tensor& weight, const Tensor& D, const Tensor& mu, const Tensor& bias,
                     int64_t groups, bool interleaved) {
  TORCH_CHECK(D.dim() == 3 && D.size(0) == groups && D.size(1) == D.size(2),
              "fold_weights: whitening must have shape (groups, d, d), got ", D.sizes());
  TORCH_CHECK(mu.dim() == 2 && mu.size(0) == groups && mu.size(1) == D.size(1),
              "fold_weights: mean must have shape (groups, d), got ", mu.sizes());
  FoldShape f{groups, weight.size(0), weight.size(0) / groups, D.size(1), 0};
  TORCH_CHECK(weight.size(0) % groups == 0, "fold_weights: groups must divide out channels");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == f.out, "fold_weights: bias must have shape (",
              f.out, ",), got ", bias.sizes());
  const int64_t row = weight.numel() / f.out;
  TORCH_CHECK(row % f.d == 0, "fold_weights: d=", f.d, " does not divide the weight row ", row);
  TORCH_CHECK(interleaved || groups == 1, "fold_weights: linear folding has one group");
  f.G = row / f.d;
  return f;
}

double fold_macs(const FoldShape& f) {
  return static_cast<double>(f.out) * static_cast<double>(f.G) * static_cast<double>(f.d * f.d);
}

// (out, row) -> (groups, d, out_per_group * G) with entry f = a * G + g of the row at [a, o*G+g]
Tensor to_block_columns(const Tensor& w, const FoldShape& f) {
  return w.reshape({f.groups, f.out_per_group, f.d, f.G}).permute({0, 2, 1, 3})
      .reshape({f.groups, f.d, f.out_per_group * f.G});
}

Tensor from_block_columns(const Tensor& cols, const FoldShape& f, at::IntArrayRef sizes) {
  return cols.reshape({f.groups, f.d, f.out_per_group, f.G}).permute({0, 2, 1, 3})
      .reshape(sizes);
}
}  // namespace

std::tuple<Tensor, Tensor> fold_weights(const Tensor& weight, const Tensor& D, const Tensor& mu,
                                        const Tensor& bias, int64_t groups, bool interleaved) {
  const auto f = fold_shape(weight, D, mu, bias, groups, interleaved);
  SmallMathThreads scope(weight.is_cpu() && fold_macs(f) < kSmallFoldMacs);
  if (!interleaved) {
    auto Wt = at::mm(weight.reshape({-1, f.d}), D[0]);
    auto Wsum = Wt.view({f.out, f.G, f.d}).sum(1);
    return {Wt.view(weight.sizes()), bias - at::mv(Wsum, mu[0])};
  }
  auto cols = at::bmm(D, to_block_columns(weight, f));
  auto Wsum = cols.view({f.groups, f.d, f.out_per_group, f.G}).sum(-1);
  auto shift = at::bmm(mu.unsqueeze(1), Wsum).reshape({f.out});
  return {from_block_columns(cols, f, weight.sizes()).contiguous(), bias - shift};
}

// output_mask = which of (weight, whitening, mean) need a gradient; the others are returned
// undefined (None), which saves the d x d product of gD when the running buffers are folded.
std::tuple<Tensor, Tensor, Tensor, Tensor> fold_weights_backward(
    const Tensor& grad_weight, const Tensor& grad_bias, const Tensor& weight, const Tensor& D,
    const Tensor& mu, const Tensor& folded, int64_t groups, bool interleaved,
    std::array<bool, 3> output_mask) {
  const auto f = fold_shape(weight, D, mu, grad_bias, groups, interleaved);
  SmallMathThreads scope(weight.is_cpu() && fold_macs(f) < kSmallFoldMacs);
  Tensor gW, gD, gmu;
  if (!interleaved) {
    // b~ = b - sum_g W~_g . mu  ->  the total gradient of W~_g is gW~_g - gb~ mu^T
    auto tot = (grad_weight.reshape({f.out, f.G, f.d}) -
                grad_bias.view({f.out, 1, 1}) * mu.view({1, 1, f.d}))
                   .reshape({-1, f.d});
    if (output_mask[0]) gW = at::mm(tot, D[0].t()).view(weight.sizes());
    if (output_mask[1]) gD = at::mm(weight.reshape({-1, f.d}).t(), tot).unsqueeze(0);
    if (output_mask[2])
      gmu = -at::mm(grad_bias.view({1, f.out}), folded.reshape({f.out, f.G, f.d}).sum(1));
    return {gW, gD, gmu, grad_bias.clone()};
  }
  auto gcols = grad_weight.reshape({f.groups, f.out_per_group, f.d, f.G}).permute({0, 2, 1, 3});
  auto tot = (gcols - mu.view({f.groups, f.d, 1, 1}) *
                          grad_bias.view({f.groups, 1, f.out_per_group, 1}))
                 .reshape({f.groups, f.d, f.out_per_group * f.G});
  if (output_mask[0])
    gW = from_block_columns(at::bmm(D.mT(), tot), f, weight.sizes()).contiguous();
  if (output_mask[1]) gD = at::bmm(tot, to_block_columns(weight, f).mT());
  if (output_mask[2]) {
    auto Wsum = folded.reshape({f.groups, f.out_per_group, f.d, f.G}).sum(-1);
    gmu = -at::bmm(grad_bias.view({f.groups, 1, f.out_per_group}), Wsum).squeeze(1);
  }
  return {gW, gD, gmu, grad_bias.clone()};
}

}  // namespace invariance
