// Shared declarations of the invariance-layer ops (namespace `invariance`).
//
// Layout of the library:
//   registration.cpp      operator schemas (TORCH_LIBRARY) and the Python module stub
//   backend_kernels.inc   the kernel declarations every backend (cpu::, cuda::) implements
//   geometry.cpp          shapes of the sampled im2col (shared by CPU and CUDA kernels)
//   composite.cpp         device-agnostic ops built from ATen (matrix products, eigh)
//   autograd.cpp          the autograd kernels, registered once for every device
//   cpu/*.cpp             CPU kernels (at::parallel_for, OpenMP)
//   *_math.h, patch_geometry.h, ns_scalar.h
//                         per-element math shared by CPU and CUDA (ATen-free, TK_HD)
//   cuda/*.cu             CUDA kernels + plain launchers (cuda/launchers.h; no ATen/c10)
//   cuda/*.cpp            tensor glue calling the launchers, and the CUDA registration
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "patch_geometry.h"  // PatchGeometry (ATen-free, shared with the CUDA launchers)

namespace invariance {

// Entries per sample for sample_norm over the last `norm_dims` dimensions (checked).
int64_t sample_norm_row_length(const at::Tensor& x, int64_t norm_dims);

PatchGeometry patch_geometry(const at::Tensor& x, at::IntArrayRef kernel, at::IntArrayRef padding,
                             at::IntArrayRef dilation, at::IntArrayRef stride, int64_t groups,
                             int64_t block);

// CPU kernels (toolkit/csrc/cpu) and CUDA kernels (toolkit/csrc/cuda): the same list,
// the same contracts.
namespace cpu {
#include "backend_kernels.inc"
}  // namespace cpu

namespace cuda {
#include "backend_kernels.inc"
}  // namespace cuda

}  // namespace invariance
