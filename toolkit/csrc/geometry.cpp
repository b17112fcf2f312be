// Shape bookkeeping of the sampled im2col, shared by the CPU and CUDA kernels.
#include <ATen/ATen.h>

#include "invariance.h"

namespace invariance {

PatchGeometry patch_geometry(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef padding,
                             at::IntArrayRef dilation, at::IntArrayRef stride, int64_t groups,
                             int64_t block) {
  TORCH_CHECK(x.dim() == 4, "sampled im2col: expected x of shape (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(kernel.size() == 2 && padding.size() == 2 && dilation.size() == 2 &&
                  stride.size() == 2,
              "sampled im2col: kernel, padding, dilation and stride must have two entries");
  PatchGeometry g{};
  g.N = x.size(0);
  g.C = x.size(1);
  g.H = x.size(2);
  g.W = x.size(3);
  g.kh = kernel[0];
  g.kw = kernel[1];
  g.ph = padding[0];
  g.pw = padding[1];
  g.dh = dilation[0];
  g.dw = dilation[1];
  g.sh = stride[0];
  g.sw = stride[1];
  g.groups = groups;
  g.block = block;
  TORCH_CHECK(g.kh >= 1 && g.kw >= 1 && g.dh >= 1 && g.dw >= 1 && g.sh >= 1 && g.sw >= 1 &&
                  g.ph >= 0 && g.pw >= 0,
              "sampled im2col: kernel, dilation and stride must be >= 1 and padding >= 0");
  TORCH_CHECK(groups >= 1 && g.C % groups == 0, "sampled im2col: groups=", groups,
              " does not divide C=", g.C);
  g.Cg = g.C / groups;
  TORCH_CHECK(block >= 1 && g.Cg % block == 0, "sampled im2col: block=", block,
              " does not divide the channels per group (", g.Cg, ")");
  g.G = g.Cg / block;
  g.kk = g.kh * g.kw;
  g.d = block * g.kk;
  g.flat = g.kh == 1 && g.kw == 1;
  if (g.flat) {
    const int64_t total = g.N * g.H * g.W;
    const int64_t step = g.sh * g.sw;
    g.Ho = g.Wo = 0;
    g.rows = (total + step - 1) / step;
  } else {
    const int64_t eh = g.dh * (g.kh - 1) + 1, ew = g.dw * (g.kw - 1) + 1;
    TORCH_CHECK(g.H + 2 * g.ph >= eh && g.W + 2 * g.pw >= ew, "sampled im2col: the input (",
                g.H, "x", g.W, ") padded by (", g.ph, ", ", g.pw,
                ") is smaller than the dilated kernel (", eh, "x", ew, ")");
    g.Ho = (g.H + 2 * g.ph - eh) / g.sh + 1;
    g.Wo = (g.W + 2 * g.pw - ew) / g.sw + 1;
    g.rows = g.N * g.Ho * g.Wo;
  }
  return g;
}

int64_t sample_norm_row_length(const at::Tensor& x, int64_t norm_dims) {
  TORCH_CHECK(norm_dims >= 1 && norm_dims <= x.dim(),
              "sample_norm: norm_dims must be in [1, x.dim()], got ", norm_dims);
  int64_t n = 1;
  for (int64_t i = x.dim() - norm_dims; i < x.dim(); ++i) n *= x.size(i);
  return n;
}

}  // namespace invariance
