// The cudaCheck discipline: every CUDA/cuBLAS call and every kernel launch is checked and a
// failure becomes somnus::Error with the expression, file and line.
#pragma once
#include <cuda_runtime.h>

#include <string>

#include "tensor/error.h"

namespace somnus::cuda {

inline void check(cudaError_t err, const char* expr, const char* file, int line) {
  if (err != cudaSuccess) [[unlikely]] {
    throw_error(std::string("CUDA error: ") + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ") in " +
                expr + " at " + file + ":" + std::to_string(line));
  }
}

// Grid size for n elements at `threads` per block, capped so it fits the launch limits
// (kernels use grid-stride loops).
inline unsigned grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  if (blocks < 1) blocks = 1;
  if (blocks > 65535LL * 32) blocks = 65535LL * 32;
  return static_cast<unsigned>(blocks);
}

}  // namespace somnus::cuda

#define CUDA_CHECK(expr) ::somnus::cuda::check((expr), #expr, __FILE__, __LINE__)
#define CUDA_CHECK_LAUNCH() ::somnus::cuda::check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)
