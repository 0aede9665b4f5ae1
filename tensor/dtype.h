// Element types and the bf16 storage type.
//   f32, bf16: model dtypes.   f64: the reference dtype (CPU; gradcheck, tests).
//   i32, i64: indices, labels, token ids.
// bf16 <-> f32 conversion rounds to nearest-even; usable from host and device code.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__CUDACC__)
#define SOMNUS_HD __host__ __device__ __forceinline__
#else
#define SOMNUS_HD inline
#endif

namespace somnus {

enum class DType : uint8_t { f32, f64, bf16, i32, i64 };

inline constexpr int64_t dtype_size(DType d) {
  switch (d) {
    case DType::f32: return 4;
    case DType::f64: return 8;
    case DType::bf16: return 2;
    case DType::i32: return 4;
    case DType::i64: return 8;
  }
  return 0;
}
inline constexpr bool is_floating(DType d) { return d == DType::f32 || d == DType::f64 || d == DType::bf16; }
inline constexpr bool is_integral(DType d) { return d == DType::i32 || d == DType::i64; }
const char* dtype_name(DType d);

// Brain float16: the top 16 bits of an IEEE f32.
struct bf16 {
  uint16_t bits = 0;
  bf16() = default;
  SOMNUS_HD explicit bf16(float f) : bits(from_float(f)) {}
  SOMNUS_HD operator float() const { return to_float(bits); }

  SOMNUS_HD static uint16_t from_float(float f) {
    uint32_t u;
#if defined(__CUDA_ARCH__)
    u = __float_as_uint(f);
#else
    std::memcpy(&u, &f, 4);
#endif
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
    uint32_t rounding_bias = 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    return static_cast<uint16_t>((u + rounding_bias) >> 16);
  }
  SOMNUS_HD static float to_float(uint16_t b) {
    uint32_t u = static_cast<uint32_t>(b) << 16;
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#endif
  }
};
static_assert(sizeof(bf16) == 2);

template <class T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<bf16> { static constexpr DType value = DType::bf16; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };

}  // namespace somnus
