// Registers the CUDA kernels (compiled only when torch has CUDA and nvcc is available).
#include <torch/library.h>

#include "invariance.h"

TORCH_LIBRARY_IMPL(invariance, CUDA, m) {
  m.impl("sample_norm_forward", &invariance::cuda::sample_norm_forward);
  m.impl("sample_norm_backward", &invariance::cuda::sample_norm_backward);
  m.impl("sampled_patches", &invariance::cuda::sampled_patches);
  m.impl("sampled_patches_backward", &invariance::cuda::sampled_patches_backward);
  m.impl("local_stats_forward", &invariance::cuda::local_stats_forward);
  m.impl("local_stats_backward", &invariance::cuda::local_stats_backward);
  m.impl("ns_scalar_map", &invariance::cuda::ns_scalar_map);
  m.impl("ns_divided_differences", &invariance::cuda::ns_divided_differences);
}
