// Sampled im2col on the CPU: gathers only the patches on the sampling grid (never the full
// unfold) straight into the (groups, vectors, d) layout the covariance needs, and scatters
// gradients back.  Vector (row r, block g) entry a reads unfold feature f = a*G + g.
#include <ATen/Parallel.h>

#include <vector>

#include <ATen/ATen.h>

#include "invariance.h"
#include "patch_geometry.h"  // patch index math shared with the CUDA kernels

namespace invariance {
namespace cpu {
namespace {

// For each output entry t = g*d + a of a row: channel offset within the group and kernel tap.
struct Taps {
  std::vector<int64_t> c, di, dj, offset;  // offset = c*H*W + di*W + dj
};

Taps make_taps(const PatchGeometry& g) {
  Taps t;
  const int64_t n = g.G * g.d;
  t.c.resize(n);
  t.di.resize(n);
  t.dj.resize(n);
  t.offset.resize(n);
  for (int64_t k = 0; k < n; ++k) {
    const PatchTap tap = patch_tap(g, k);
    t.c[k] = tap.c;
    t.di[k] = tap.di;
    t.dj[k] = tap.dj;
    t.offset[k] = (tap.c * g.H + tap.di) * g.W + tap.dj;
  }
  return t;
}

// Calls fn(row, n, h0, w0) with the top-left input pixel of the row's patch (flat: the pixel).
template <typename Fn>
inline void locate(const PatchGeometry& g, int64_t r, Fn&& fn) {
  const PatchOrigin o = patch_origin(g, r);
  fn(o.n, o.h0, o.w0);
}

template <typename scalar_t>
void gather(const PatchGeometry& g, const Taps& taps, const scalar_t* x, scalar_t* out) {
  const int64_t width = g.G * g.d, hw = g.H * g.W;
  at::parallel_for(0, g.rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      locate(g, r, [&](int64_t n, int64_t h0, int64_t w0) {
        const bool inside = patch_inside(g, h0, w0);
        for (int64_t grp = 0; grp < g.groups; ++grp) {
          const int64_t plane0 = (n * g.C + grp * g.Cg) * hw;
          scalar_t* o = out + (grp * g.rows + r) * width;
          if (inside) {
            const scalar_t* base = x + plane0 + h0 * g.W + w0;
            for (int64_t t = 0; t < width; ++t) o[t] = base[taps.offset[t]];
          } else {
            for (int64_t t = 0; t < width; ++t) {
              const int64_t h = h0 + taps.di[t], w = w0 + taps.dj[t];
              o[t] = (h >= 0 && h < g.H && w >= 0 && w < g.W)
                         ? x[plane0 + taps.c[t] * hw + h * g.W + w]
                         : scalar_t(0);
            }
          }
        }
      });
    }
  });
}

// True when the sampled patches tile the input exactly: every pixel lies in exactly one patch
// (k x k kernel, no dilation, sampling stride k, padding < k, tiles reaching the last pixel;
// the default k = 3, sampling stride 3 on a stride-1 conv).  The backward then writes every
// pixel once and needs neither a zero fill nor accumulation.
bool tiles_input(const PatchGeometry& g) {
  return !g.flat && g.dh == 1 && g.dw == 1 && g.sh == g.kh && g.sw == g.kw && g.ph < g.kh &&
         g.pw < g.kw && g.Ho * g.kh - g.ph >= g.H && g.Wo * g.kw - g.pw >= g.W;
}

template <bool assign, typename scalar_t>
inline void put(scalar_t& dst, scalar_t v) {
  if constexpr (assign) {
    dst = v;
  } else {
    dst += v;
  }
}

template <bool assign, typename scalar_t>
void scatter_rows(const PatchGeometry& g, const Taps& taps, const scalar_t* gX, scalar_t* gx,
                  int64_t r_begin, int64_t r_end) {
  const int64_t width = g.G * g.d, hw = g.H * g.W;
  const int64_t* offset = taps.offset.data();
  for (int64_t r = r_begin; r < r_end; ++r) {
    locate(g, r, [&](int64_t n, int64_t h0, int64_t w0) {
      const bool inside = patch_inside(g, h0, w0);
      for (int64_t grp = 0; grp < g.groups; ++grp) {
        const int64_t plane0 = (n * g.C + grp * g.Cg) * hw;
        const scalar_t* src = gX + (grp * g.rows + r) * width;
        if (inside) {  // no padding taps: one offset table, no bounds checks
          scalar_t* base = gx + plane0 + h0 * g.W + w0;
          for (int64_t t = 0; t < width; ++t) put<assign>(base[offset[t]], src[t]);
          continue;
        }
        for (int64_t t = 0; t < width; ++t) {
          const int64_t h = h0 + taps.di[t], w = w0 + taps.dj[t];
          if (h >= 0 && h < g.H && w >= 0 && w < g.W)
            put<assign>(gx[plane0 + taps.c[t] * hw + h * g.W + w], src[t]);
        }
      }
    });
  }
}

template <typename scalar_t>
void scatter(const PatchGeometry& g, const Taps& taps, const scalar_t* gX, scalar_t* gx) {
  // Rows touch disjoint pixels for 1x1 kernels and whenever the dilated kernel fits inside
  // the sampling stride; otherwise overlapping patches share pixels within one sample only.
  const bool disjoint =
      g.flat || ((g.kh - 1) * g.dh < g.sh && (g.kw - 1) * g.dw < g.sw);
  if (tiles_input(g)) {
    at::parallel_for(0, g.rows, 16, [&](int64_t b, int64_t e) {
      scatter_rows<true>(g, taps, gX, gx, b, e);
    });
  } else if (disjoint) {
    at::parallel_for(0, g.rows, 16, [&](int64_t b, int64_t e) {
      scatter_rows<false>(g, taps, gX, gx, b, e);
    });
  } else {
    const int64_t per_sample = g.Ho * g.Wo;
    at::parallel_for(0, g.N, 1, [&](int64_t b, int64_t e) {
      scatter_rows<false>(g, taps, gX, gx, b * per_sample, e * per_sample);
    });
  }
}

}  // namespace

at::Tensor sampled_patches(const at::Tensor& x_in, at::IntArrayRef kernel, at::IntArrayRef padding,
                           at::IntArrayRef dilation, at::IntArrayRef stride, int64_t groups,
                           int64_t block) {
  const auto g = patch_geometry(x_in, kernel, padding, dilation, stride, groups, block);
  auto x = x_in.contiguous();
  auto out = at::empty({g.groups, g.vectors(), g.d}, x.options());
  const auto taps = make_taps(g);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sampled_patches", [&] {
    gather<scalar_t>(g, taps, x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
  });
  return out;
}

at::Tensor sampled_patches_backward(const at::Tensor& grad_in, const at::Tensor& x,
                                    at::IntArrayRef kernel, at::IntArrayRef padding,
                                    at::IntArrayRef dilation, at::IntArrayRef stride,
                                    int64_t groups, int64_t block) {
  const auto g = patch_geometry(x, kernel, padding, dilation, stride, groups, block);
  TORCH_CHECK(grad_in.dim() == 3 && grad_in.size(0) == g.groups && grad_in.size(1) == g.vectors() &&
                  grad_in.size(2) == g.d,
              "sampled_patches_backward: gradient has shape ", grad_in.sizes());
  auto grad = grad_in.contiguous();
  auto gx = tiles_input(g) ? at::empty(x.sizes(), grad.options())
                           : at::zeros(x.sizes(), grad.options());
  const auto taps = make_taps(g);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "sampled_patches_backward", [&] {
    scatter<scalar_t>(g, taps, grad.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>());
  });
  return gx;
}

}  // namespace cpu
}  // namespace invariance
