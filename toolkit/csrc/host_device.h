// TK_HD marks the per-element math that the CPU kernels (g++) and the CUDA kernels (nvcc) both
// call, so the CPU tests exercise the same formulas the GPU runs.  Headers using it must stay
// free of ATen/c10/torch includes: the .cu files are compiled by bare nvcc in the tests.
#pragma once

#ifdef __CUDACC__
#define TK_HD __host__ __device__
#else
#define TK_HD
#endif
