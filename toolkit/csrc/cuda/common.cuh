// Device helpers shared by the CUDA kernels of the invariance layer (CUDA runtime only: the
// .cu files must compile with bare nvcc, without ATen/c10).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace invariance {
namespace cuda {

constexpr int kThreads = 256;

inline int64_t blocks_for(int64_t n, int threads = kThreads) {
  return (n + threads - 1) / threads;
}

// Grid of a grid-stride loop: enough blocks for n, capped at 65535 (the loop covers the rest).
inline unsigned int grid_stride_blocks(int64_t n) {
  const int64_t b = blocks_for(n);
  return static_cast<unsigned int>(b < 65535 ? b : 65535);
}

// Sum over the block; every thread gets the total.  shared must hold 33 doubles and
// blockDim.x must be a multiple of 32.
__device__ inline double block_sum(double v, double* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? shared[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) shared[32] = v;
  }
  __syncthreads();
  const double total = shared[32];
  __syncthreads();
  return total;
}

}  // namespace cuda
}  // namespace invariance
