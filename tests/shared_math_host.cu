// Host driver of the shared per-element math (TK_HD headers), compiled by bare nvcc so the
// functions are the __host__ __device__ versions the CUDA kernels call.  It recomputes each op
// the way the CUDA kernels do (same functions, same order of operations, in double) and prints
// the results; tests/test_invariance_cuda.py compares them with the CPU ops.  Runs without a
// GPU: no CUDA runtime call is made.
//
//   shared_math_host patches N C H W kh kw ph pw dh dw sh sw groups block   (x[i] = i + 1)
//   shared_math_host sample_norm rows len eps          < x g
//   shared_math_host local_stats N C H W window rf_eps < x grad_mean grad_std
//   shared_math_host ns batch d n_iter                 < lam norm
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "local_stats_math.h"
#include "ns_scalar.h"
#include "patch_geometry.h"
#include "sample_norm_math.h"

using namespace invariance;

namespace {

std::vector<double> read(size_t n) {
  std::vector<double> v(n);
  for (auto& x : v)
    if (std::scanf("%lf", &x) != 1) std::exit(3);
  return v;
}

void print(const std::vector<double>& v) {
  for (double x : v) std::printf("%.17g\n", x);
}

// Mirrors patch_geometry() of geometry.cpp for valid arguments (the op checks them).
PatchGeometry geometry(char** a) {
  PatchGeometry g{};
  int64_t* f[] = {&g.N, &g.C, &g.H, &g.W, &g.kh, &g.kw, &g.ph, &g.pw,
                  &g.dh, &g.dw, &g.sh, &g.sw, &g.groups, &g.block};
  for (int i = 0; i < 14; ++i) *f[i] = std::atoll(a[i]);
  g.Cg = g.C / g.groups;
  g.G = g.Cg / g.block;
  g.kk = g.kh * g.kw;
  g.d = g.block * g.kk;
  g.flat = g.kh == 1 && g.kw == 1;
  if (g.flat) {
    g.rows = (g.N * g.H * g.W + g.sh * g.sw - 1) / (g.sh * g.sw);
  } else {
    g.Ho = (g.H + 2 * g.ph - g.dh * (g.kh - 1) - 1) / g.sh + 1;
    g.Wo = (g.W + 2 * g.pw - g.dw * (g.kw - 1) - 1) / g.sw + 1;
    g.rows = g.N * g.Ho * g.Wo;
  }
  return g;
}

void patches(char** a) {  // gather_kernel of patches.cu, one entry at a time
  const PatchGeometry g = geometry(a);
  const int64_t width = g.G * g.d, total = g.groups * g.rows * width;
  for (int64_t i = 0; i < total; ++i) {
    const int64_t t = i % width, rest = i / width;
    int64_t src;
    const bool in = patch_source(g, rest / g.rows, rest % g.rows, t, &src);
    std::printf("%lld\n", in ? static_cast<long long>(src + 1) : 0LL);
  }
}

void sample_norm(char** a) {  // forward_kernel and backward_kernel of sample_norm.cu
  const int64_t rows = std::atoll(a[0]), len = std::atoll(a[1]);
  const double eps = std::atof(a[2]);
  const auto x = read(rows * len), g = read(rows * len);
  std::vector<double> y(rows * len), sigma(rows), gx(rows * len);
  for (int64_t r = 0; r < rows; ++r) {
    const double* xr = &x[r * len];
    double s = 0, q = 0;
    for (int64_t i = 0; i < len; ++i) s += xr[i];
    const double mean = s / static_cast<double>(len);
    for (int64_t i = 0; i < len; ++i) q += (xr[i] - mean) * (xr[i] - mean);
    sigma[r] = sample_norm_std(q, len);
    const double inv = 1.0 / (sigma[r] + eps);
    for (int64_t i = 0; i < len; ++i) y[r * len + i] = sample_norm_apply(xr[i], mean, inv);
    double sg = 0, sgy = 0;
    for (int64_t i = 0; i < len; ++i) {
      sg += g[r * len + i];
      sgy += g[r * len + i] * y[r * len + i];
    }
    const SampleNormGrad k = sample_norm_grad_coeffs(sg, sgy, sigma[r], len, eps);
    for (int64_t i = 0; i < len; ++i)
      gx[r * len + i] = sample_norm_grad(g[r * len + i], y[r * len + i], k.a, k.b, k.inv);
  }
  print(y), print(sigma), print(gx);
}

void local_stats(char** a) {  // the five kernels of local_stats.cu
  const int64_t N = std::atoll(a[0]), C = std::atoll(a[1]), H = std::atoll(a[2]),
                W = std::atoll(a[3]), r = std::atoll(a[4]) / 2;
  const double rf_eps = std::atof(a[5]);
  const int64_t P = N * H * W, hw = H * W;
  const auto x = read(P * C), gmean = read(P), gstd = read(P);
  std::vector<double> A(P, 0.0), Q(P, 0.0), mean(P), sd(P), var(P), gA(P), gQ(P), GA(P), GQ(P);
  for (int64_t i = 0; i < P; ++i) {
    for (int64_t c = 0; c < C; ++c) {
      const double v = x[(i / hw * C + c) * hw + i % hw];
      A[i] += v;
      Q[i] += v * v;
    }
  }
  for (int64_t i = 0; i < P; ++i) {
    const Window b = window_at(i / W % H, i % W, r, H, W);
    const int64_t plane = i / hw * hw;
    const double cnt = static_cast<double>(b.count() * C);
    const LocalMoments m =
        local_moments(box_direct(&A[plane], W, b), box_direct(&Q[plane], W, b), cnt, rf_eps);
    mean[i] = m.mean, var[i] = m.var, sd[i] = m.std;
    const BoxGrads bg = local_box_grads(gmean[i], gstd[i], m.mean, m.var, cnt);
    gA[i] = bg.a, gQ[i] = bg.q;
  }
  for (int64_t i = 0; i < P; ++i) {
    const Window b = window_at(i / W % H, i % W, r, H, W);
    const int64_t plane = i / hw * hw;
    GA[i] = box_direct(&gA[plane], W, b);
    GQ[i] = box_direct(&gQ[plane], W, b);
  }
  std::vector<double> gx(P * C);
  for (int64_t i = 0; i < P * C; ++i) {
    const int64_t o = i / (C * hw) * hw + i % hw;
    gx[i] = local_input_grad(GA[o], GQ[o], x[i]);
  }
  print(mean), print(sd), print(var), print(gx);
}

void ns(char** a) {  // map_kernel and divided_kernel of ns_scalar.cu
  const int64_t B = std::atoll(a[0]), d = std::atoll(a[1]), n_iter = std::atoll(a[2]);
  const auto lam = read(B * d), norm = read(B);
  std::vector<double> psi(B * d), dpsi(B * d), dd(B * d * d);
  for (int64_t i = 0; i < B * d; ++i) {
    const ScalarMap m = ns_scalar(lam[i], norm[i / d], n_iter);
    psi[i] = m.psi, dpsi[i] = m.dpsi_dc;
  }
  for (int64_t k = 0; k < B * d * d; ++k) {
    const int64_t b = k / (d * d), r = k / d % d, c = k % d;
    const int64_t i = r < c ? r : c, j = r < c ? c : r;
    dd[k] = ns_divided_difference(lam[b * d + i], lam[b * d + j], norm[b], n_iter);
  }
  print(psi), print(dpsi), print(dd);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  const char* op = argv[1];
  if (!std::strcmp(op, "patches") && argc == 16) patches(argv + 2);
  else if (!std::strcmp(op, "sample_norm") && argc == 5) sample_norm(argv + 2);
  else if (!std::strcmp(op, "local_stats") && argc == 8) local_stats(argv + 2);
  else if (!std::strcmp(op, "ns") && argc == 5) ns(argv + 2);
  else return 2;
  return 0;
}
