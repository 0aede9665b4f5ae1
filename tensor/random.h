// Seeded random tensors. A Generator is (seed, offset): each draw of n elements uses
// counters [offset, offset + ceil(n/4)) and then advances offset, so draws never overlap
// and the same seed replays the same stream on CPU and CUDA (see philox.h).
#pragma once
#include <cstdint>

#include "tensor/tensor.h"

namespace somnus {

struct Generator {
  uint64_t seed = 0;
  uint64_t offset = 0;
  explicit Generator(uint64_t s = 0) : seed(s) {}
  // Reserve counters for n elements; returns the starting offset.
  uint64_t advance(uint64_t n) {
    uint64_t start = offset;
    offset += (n + 3) / 4;
    return start;
  }
};

// The splitmix64 finaliser: a well-mixed 64-bit value from any input (deriving seeds).
inline uint64_t splitmix64_mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// The process-wide default generator (seed 0 until manual_seed).
Generator& default_generator();
void manual_seed(uint64_t seed);

// Uniform in [low, high).
Tensor rand(const Shape& shape, Generator& gen, DType dtype = DType::f32, Device device = Device::cpu(),
            double low = 0.0, double high = 1.0);
Tensor randn(const Shape& shape, Generator& gen, DType dtype = DType::f32, Device device = Device::cpu(),
             double mean = 0.0, double std = 1.0);
// Uniform integers in [low, high).
Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator& gen, DType dtype = DType::i64,
               Device device = Device::cpu());
inline Tensor rand(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu()) {
  return rand(shape, default_generator(), dtype, device);
}
inline Tensor randn(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu()) {
  return randn(shape, default_generator(), dtype, device);
}

}  // namespace somnus
