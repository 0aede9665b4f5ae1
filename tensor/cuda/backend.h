// The tensor layer's CUDA entry points (implemented in tensor/cuda/*.cu). In a build without
// CUDA they are defined in tensor/cuda_stubs.cpp and throw somnus::Error: no tensor can live
// on a CUDA device there, so they are only reached through misuse.
#pragma once
#include <cstddef>
#include <cstdint>

#include "tensor/device.h"

namespace somnus {
class Tensor;
class RawAllocator;
}

namespace somnus::cuda {

int device_count();  // 0 when no driver/device (never throws)
RawAllocator* raw_allocator(int device);
// Copy n bytes between any two of {cpu, cuda:N}; synchronous with respect to the host.
void memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t nbytes);
void synchronize(int device = 0);

void fill(const Tensor& dst, double value);
void strided_copy(const Tensor& dst, const Tensor& src);  // same device, same shape, casting
void fill_uniform(const Tensor& dst, uint64_t seed, uint64_t offset, double low, double high);
void fill_normal(const Tensor& dst, uint64_t seed, uint64_t offset, double mean, double std);
void fill_randint(const Tensor& dst, uint64_t seed, uint64_t offset, int64_t low, int64_t high);

}  // namespace somnus::cuda
