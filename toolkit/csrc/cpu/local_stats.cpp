// Local statistics for norm="local" on the CPU: mean and variance over a window x window
// neighbourhood and all channels of every pixel (zero padding, divided by the number of valid
// pixels), as a box filter on summed-area tables.  One sample per task.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/ATen.h>

#include "invariance.h"
#include "local_stats_math.h"  // window, moments and chain rule shared with the CUDA kernels

namespace invariance {
namespace cpu {
namespace {

// Summed-area table of a (H, W) plane: S[(h+1)*(W+1) + (w+1)] = sum of plane[0..h][0..w].
void integral(const double* plane, int64_t H, int64_t W, double* S) {
  std::fill(S, S + (W + 1), 0.0);
  for (int64_t h = 0; h < H; ++h) {
    double run = 0;
    S[(h + 1) * (W + 1)] = 0;
    for (int64_t w = 0; w < W; ++w) {
      run += plane[h * W + w];
      S[(h + 1) * (W + 1) + w + 1] = S[h * (W + 1) + w + 1] + run;
    }
  }
}

void check(const at::Tensor& x, int64_t window) {
  TORCH_CHECK(x.dim() == 4, "local_stats: expected x of shape (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(window >= 1 && window % 2 == 1, "local_stats: window must be odd, got ", window);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> local_stats_forward(const at::Tensor& x_in,
                                                                   int64_t window, double rf_eps) {
  check(x_in, window);
  auto x = x_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), r = window / 2;
  auto mean = at::empty({N, 1, H, W}, x.options());
  auto std_ = at::empty_like(mean), var = at::empty_like(mean);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "local_stats_forward", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t *mp = mean.data_ptr<scalar_t>(), *sp = std_.data_ptr<scalar_t>(),
             *vp = var.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> A(H * W), Q(H * W), SA((H + 1) * (W + 1)), SQ((H + 1) * (W + 1));
      for (int64_t n = begin; n < end; ++n) {
        std::fill(A.begin(), A.end(), 0.0);
        std::fill(Q.begin(), Q.end(), 0.0);
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* plane = xp + (n * C + c) * H * W;
          for (int64_t i = 0; i < H * W; ++i) {
            const double v = plane[i];
            A[i] += v;
            Q[i] += v * v;
          }
        }
        integral(A.data(), H, W, SA.data());
        integral(Q.data(), H, W, SQ.data());
        for (int64_t h = 0; h < H; ++h) {
          for (int64_t w = 0; w < W; ++w) {
            const auto b = window_at(h, w, r, H, W);
            const auto m = local_moments(box_from_integral(SA.data(), W, b),
                                         box_from_integral(SQ.data(), W, b),
                                         static_cast<double>(b.count() * C), rf_eps);
            const int64_t o = n * H * W + h * W + w;
            mp[o] = static_cast<scalar_t>(m.mean);
            vp[o] = static_cast<scalar_t>(m.var);
            sp[o] = static_cast<scalar_t>(m.std);
          }
        }
      }
    });
  });
  return {mean, std_, var};
}

// mean = boxA / cnt, var = boxQ / cnt - mean^2, std = sqrt(max(var, 0)) + rf_eps, with
// A = sum_c x and Q = sum_c x^2.  The box sum is its own adjoint (the window is symmetric).
at::Tensor local_stats_backward(const at::Tensor& gmean_in, const at::Tensor& gstd_in,
                                const at::Tensor& x_in, const at::Tensor& mean_in,
                                const at::Tensor& var_in, int64_t window) {
  check(x_in, window);
  auto x = x_in.contiguous();
  auto gmean = gmean_in.contiguous(), gstd = gstd_in.contiguous();
  auto mean = mean_in.contiguous(), var = var_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), r = window / 2;
  auto gx = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "local_stats_backward", [&] {
    const scalar_t *xp = x.data_ptr<scalar_t>(), *gm = gmean.data_ptr<scalar_t>(),
                   *gs = gstd.data_ptr<scalar_t>(), *mp = mean.data_ptr<scalar_t>(),
                   *vp = var.data_ptr<scalar_t>();
    scalar_t* out = gx.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> gA(H * W), gQ(H * W), SA((H + 1) * (W + 1)), SQ((H + 1) * (W + 1));
      for (int64_t n = begin; n < end; ++n) {
        for (int64_t h = 0; h < H; ++h) {
          for (int64_t w = 0; w < W; ++w) {
            const int64_t i = h * W + w, o = n * H * W + i;
            const double cnt = static_cast<double>(window_at(h, w, r, H, W).count() * C);
            const auto g = local_box_grads(gm[o], gs[o], mp[o], vp[o], cnt);
            gA[i] = g.a;
            gQ[i] = g.q;
          }
        }
        integral(gA.data(), H, W, SA.data());
        integral(gQ.data(), H, W, SQ.data());
        for (int64_t h = 0; h < H; ++h) {
          for (int64_t w = 0; w < W; ++w) {
            const auto b = window_at(h, w, r, H, W);
            gA[h * W + w] = box_from_integral(SA.data(), W, b);
            gQ[h * W + w] = box_from_integral(SQ.data(), W, b);
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* plane = xp + (n * C + c) * H * W;
          scalar_t* op = out + (n * C + c) * H * W;
          for (int64_t i = 0; i < H * W; ++i)
            op[i] = static_cast<scalar_t>(local_input_grad(gA[i], gQ[i], plane[i]));
        }
      }
    });
  });
  return gx;
}

}  // namespace cpu
}  // namespace invariance
