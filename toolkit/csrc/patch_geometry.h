// Geometry of the sampled im2col and the index arithmetic of one patch entry, shared by the CPU
// and CUDA kernels (ATen-free: the CUDA launchers take the struct by value).
#pragma once

#include <cstdint>

#include "host_device.h"

namespace invariance {

// Where the sampled patches of a conv input come from, and how they are cut into vectors.
// A row is one sampled patch of one group (length Cg*kh*kw, unfold order f = c*kk + i*kw + j);
// it is viewed as a (d, G) matrix and each of its G columns (entries f = a*G + g) is one
// vector of length d.  All vectors of one group are samples of that group's covariance.
struct PatchGeometry {
  int64_t N, C, H, W;
  int64_t kh, kw, ph, pw, dh, dw, sh, sw;  // kernel, padding, dilation, sampling stride
  int64_t groups, block;
  int64_t Cg, G, kk, d;   // channels per group, blocks per row, kernel area, vector length
  int64_t Ho, Wo;         // sampling grid (unused when flat)
  int64_t rows;           // sampled rows per group
  bool flat;              // 1x1 kernel: every (sh*sw)-th row of the NHWC-flattened input
  TK_HD int64_t vectors() const { return rows * G; }
};

// Entry t = blk*d + a of a row reads unfold feature f = a*G + blk: channel c (within the
// group) at kernel offset (di, dj) from the patch origin.
struct PatchTap {
  int64_t c, di, dj;
};

TK_HD inline PatchTap patch_tap(const PatchGeometry& g, int64_t t) {
  const int64_t blk = t / g.d, a = t % g.d;
  const int64_t f = a * g.G + blk;
  const int64_t tap = f % g.kk;
  return {f / g.kk, (tap / g.kw) * g.dh, (tap % g.kw) * g.dw};
}

// Sample n and top-left input pixel (h0, w0) of row r's patch; may lie in the padding.  Flat
// (1x1) rows are every (sh*sw)-th pixel of the NHWC-flattened input.
struct PatchOrigin {
  int64_t n, h0, w0;
};

TK_HD inline PatchOrigin patch_origin(const PatchGeometry& g, int64_t r) {
  if (g.flat) {
    const int64_t q = r * g.sh * g.sw, hw = g.H * g.W;
    const int64_t rem = q % hw;
    return {q / hw, rem / g.W, rem % g.W};
  }
  const int64_t p = g.Ho * g.Wo;
  const int64_t rem = r % p;
  return {r / p, (rem / g.Wo) * g.sh - g.ph, (rem % g.Wo) * g.sw - g.pw};
}

// True when no tap of a patch at (h0, w0) falls into the padding.
TK_HD inline bool patch_inside(const PatchGeometry& g, int64_t h0, int64_t w0) {
  return h0 >= 0 && w0 >= 0 && h0 + (g.kh - 1) * g.dh < g.H && w0 + (g.kw - 1) * g.dw < g.W;
}

// Flat NCHW index of the input pixel read by entry t of row r of group grp; false for padding.
TK_HD inline bool patch_source(const PatchGeometry& g, int64_t grp, int64_t r, int64_t t,
                               int64_t* index) {
  const PatchOrigin o = patch_origin(g, r);
  const PatchTap k = patch_tap(g, t);
  const int64_t h = o.h0 + k.di, w = o.w0 + k.dj;
  if (h < 0 || h >= g.H || w < 0 || w >= g.W) return false;
  *index = ((o.n * g.C + grp * g.Cg + k.c) * g.H + h) * g.W + w;
  return true;
}

}  // namespace invariance
