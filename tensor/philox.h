// Philox4x32-10 counter-based RNG (Salmon et al., SC'11). Identical on host and device:
// element i of a draw with (seed, offset) uses counter (offset + i/4) and lane i%4, so a
// CPU fill and a CUDA fill of the same tensor give the same uniform bits.
#pragma once
#include <cstdint>

#include "tensor/dtype.h"

namespace somnus::philox {

struct U4 { uint32_t x, y, z, w; };

SOMNUS_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// 4 random 32-bit words for the 128-bit counter (c0..c3) under the 64-bit key.
SOMNUS_HD U4 philox4x32_10(uint64_t counter_lo, uint64_t counter_hi, uint64_t key) {
  uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
  uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(0xD2511F53u, c0, hi0, lo0);
    mulhilo(0xCD9E8D57u, c2, hi1, lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return {c0, c1, c2, c3};
}

SOMNUS_HD uint32_t lane(const U4& r, int i) { return i == 0 ? r.x : i == 1 ? r.y : i == 2 ? r.z : r.w; }

// Uniform in (0, 1]: never 0, so log() is safe. 24 bits of mantissa.
SOMNUS_HD float uniform01(uint32_t bits) { return (static_cast<float>(bits >> 8) + 1.0f) * (1.0f / 16777216.0f); }

// 53 random bits of one Philox block (lanes x, y) as a double in (0, 1]: never 0, so an
// inverse CDF never lands before the first token with mass (the samplers use it).
SOMNUS_HD double uniform53(const U4& r) {
  const uint64_t bits = ((static_cast<uint64_t>(r.x) << 32) | r.y) >> 11;  // [0, 2^53)
  return (static_cast<double>(bits) + 1.0) * (1.0 / 9007199254740992.0);
}

// Element i of a uniform draw.
SOMNUS_HD float uniform_at(uint64_t seed, uint64_t offset, uint64_t i) {
  U4 r = philox4x32_10(offset + i / 4, 0, seed);
  return uniform01(lane(r, static_cast<int>(i % 4)));
}

// Element i of a standard-normal draw: Box-Muller on lanes (0,1) and (2,3) of counter i/4,
// computed in double so that host and device agree to within rounding of the final cast.
SOMNUS_HD float normal_at(uint64_t seed, uint64_t offset, uint64_t i) {
  U4 r = philox4x32_10(offset + i / 4, 0, seed);
  int l = static_cast<int>(i % 4);
  int pair = l / 2;
  double u1 = (static_cast<double>(lane(r, 2 * pair)) + 1.0) * (1.0 / 4294967296.0);  // (0, 1]
  double u2 = static_cast<double>(lane(r, 2 * pair + 1)) * (1.0 / 4294967296.0);      // [0, 1)
  double radius = sqrt(-2.0 * log(u1));
  double theta = 6.283185307179586 * u2;
  return static_cast<float>((l % 2 == 0) ? radius * cos(theta) : radius * sin(theta));
}

}  // namespace somnus::philox
