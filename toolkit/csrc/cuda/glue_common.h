// Tensor-side helpers of the CUDA glue (host C++, built only for CUDA torch): device checks,
// the device guard, and turning a launcher's cudaError_t into a c10 error.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "launchers.h"

namespace invariance {
namespace cuda {

inline void check_cuda(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.is_cuda(), what, ": expected a CUDA tensor");
}

// The stream every launcher enqueues on: the caller's current stream on the guarded device.
inline cudaStream_t current_stream() {
  return c10::cuda::getCurrentCUDAStream().stream();
}

}  // namespace cuda
}  // namespace invariance
