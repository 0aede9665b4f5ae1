// CUDA RoPE (rotate-half pairing), forward and inverse (= backward); the twin of
// kernels/cpu/rope.cpp (same formula, f32 compute, one rounding on store):
//   y[i] = x[i]·c − x[i+D/2]·s,   y[i+D/2] = x[i+D/2]·c + x[i]·s,   (c, s) = table[pos][i]
//
// v2 (the default, rope_vec_kernel). A thread takes one vector slot (V = 16 / sizeof(T)
// consecutive i of the first half, and the same i + D/2) of one (b, t) for a chunk of
// kHeadsPerThread = 4 heads: the heads of a (b, t) share its position, so the cos/sin vectors are
// loaded once per 4 rows, and the thread has up to 8 16-byte x loads in flight. Block (bx, by) =
// (vector slots of a row, (b, t) pairs), so a warp reads whole half-rows of consecutive t;
// blockIdx.y walks the head chunks. Index math per (b, t) and thread, not per element: one
// 32-bit division g / T (the host keeps B·T < 2^31). 16-byte vectors need D/2 % V == 0 and x,
// y, cos, sin 16-byte aligned (then every half-row and table row is); else the same kernel with
// V = 1 (scalar). The per-element arithmetic is v1's (rope_rotate, with the roundings pinned,
// and the sign a runtime factor as in v1): bitwise v1 in the host emulation (tests/kernels/
// cuda_emu/rope.cpp asserts it) and on the GPU (the CUDA test asserts it; before rope_rotate the
// two kernels' a·c − b·s contracted differently there); both are compared to the CPU twin.
// __launch_bounds__(256, 3): ≤ 85 registers (77–80 on sm_90), no spills, 3 blocks per SM; ptxas
// then issues 6 of the 8 x loads and both table loads before the first store (left free it
// picks ~64 registers, spills a little and interleaves loads and stores per head).
//
// v1 (rope_kernel; SOMNUS_ROPE=v1, read on every call; also the fallback when B·T ≥ 2^31 or
// H or D/2 > 2^30): one thread per (row, i) pair, 2-byte scalar accesses for bf16, three 64-bit
// divisions and a table gather per pair. On an H100 at (16, 32, 1024, 128): 994 GB/s bf16 (0.35
// of copy), 1599 GB/s f32 (0.57), 270 vs 336 µs for the same 33.5M pairs: bound by the per-pair
// index math, not by memory.
//
// Traffic of v2 per element: 2·sizeof(T) bytes of DRAM (read x, write y), 4 B bf16, 8 B f32.
// The tables are (P, D/2) each, L2-resident (2 × 128 KiB bf16 at the bench shape); they add
// D·sizeof(T) bytes of L2→SM reads per 4 rows, 1/8 of the x + y traffic (v1: 1/2).
// PREDICTION, not measured (no GPU when written): a streaming copy with 10–14 instructions per
// element, so ≈ 0.9 of the copy bandwidth (H100 copy 2826–2926 GB/s, read + write):
// ≈ 2500–2700 GB/s for bf16 and for f32 at (16, 32, 1024, 128), ≈ 100 µs bf16 and ≈ 200 µs f32,
// 2.5–2.7× v1 for bf16 and 1.6–1.7× for f32 (bench rows rope/* vs rope_v1/*).
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"

namespace somnus::kernels::cuda {

namespace {

// ---------------------------------------------------------------- rope kernels (extract.py's bundle "rope")
constexpr int kThreads = 256;

// The rotation of one pair with its roundings pinned: y1 = fma(a, c, −(b·s)), y2 = fma(a, s, b·c),
// the lone products by __fmul_rn / __dmul_rn, which the compiler never contracts. v1 and v2 both
// call it, so they agree bit for bit whatever each kernel's context: written as a·c − b·s, nvcc
// fused different products in the two kernels on sm_90a (f32 results 1 ulp apart; the H100 run
// of 2026-11-27 found it, the host emulation, which does not contract, could not).
template <class C>
__device__ __forceinline__ void rope_rotate(C a, C b, C c, C s, C& y1, C& y2) {
  if constexpr (std::is_same_v<C, double>) {
    y1 = fma(a, c, -__dmul_rn(b, s));
    y2 = fma(a, s, __dmul_rn(b, c));
  } else {
    y1 = fmaf(a, c, -__fmul_rn(b, s));
    y2 = fmaf(a, s, __fmul_rn(b, c));
  }
}

template <class T>
__global__ void rope_kernel(const T* __restrict__ x, const T* __restrict__ cs, const T* __restrict__ sn,
                            const int64_t* __restrict__ pos, bool per_batch, bool inverse, T* __restrict__ y,
                            int64_t H, int64_t T_, int64_t half, int64_t total) {
  using C = compute_t<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total; idx += stride) {
    const int64_t r = idx / half, i = idx - r * half;
    const int64_t t = r % T_, b = r / (H * T_);
    const int64_t p = pos[per_batch ? b * T_ + t : t];
    const C c = static_cast<C>(cs[p * half + i]);
    const C s = (inverse ? C(-1) : C(1)) * static_cast<C>(sn[p * half + i]);
    const int64_t base = r * 2 * half;
    const C a = static_cast<C>(x[base + i]), bb = static_cast<C>(x[base + half + i]);
    C y1, y2;
    rope_rotate(a, bb, c, s, y1, y2);
    y[base + i] = static_cast<T>(y1);
    y[base + half + i] = static_cast<T>(y2);
  }
}

// Heads per thread in v2: 2·HC vector loads of x per thread, the tables read once per HC rows.
constexpr int kHeadsPerThread = 4;

// v2's block: bx threads over the nv = D/2 / V vector slots of a row (a thread loops over slots
// when nv > kThreads), by = kThreads / bx (b, t) pairs.
struct RopeBlock {
  int bx, by;
};
inline RopeBlock rope_block(int64_t nv) {
  const int bx = static_cast<int>(nv < kThreads ? nv : kThreads);
  return {bx, kThreads / bx};
}

// N rows (b, h..h+N−1, t) of v2 at one vector slot: o = the element offset of (b, h, t, V·vi) in
// x and y, cr/sr the position's table rows. The x loads first, then the tables.
template <int N, int V, class T>
__device__ __forceinline__ void rope_rows(const T* __restrict__ x, T* __restrict__ y, int64_t o, int64_t head_stride,
                                          int64_t half, const T* __restrict__ cr, const T* __restrict__ sr, int vi,
                                          compute_t<T> sign) {
  using C = compute_t<T>;
  Vec<T, V> a[N], bv[N];
#pragma unroll
  for (int k = 0; k < N; ++k) {
    a[k] = load_vec<V>(x + o + k * head_stride, 0);
    bv[k] = load_vec<V>(x + o + k * head_stride + half, 0);
  }
  const Vec<T, V> cv = load_vec<V>(cr, vi), sv = load_vec<V>(sr, vi);
#pragma unroll
  for (int k = 0; k < N; ++k) {
    Vec<T, V> o1, o2;
#pragma unroll
    for (int e = 0; e < V; ++e) {
      // v1's operands and rotation (bitwise-identical results)
      const C c = static_cast<C>(cv.v[e]);
      const C s = sign * static_cast<C>(sv.v[e]);
      C y1, y2;
      rope_rotate(static_cast<C>(a[k].v[e]), static_cast<C>(bv[k].v[e]), c, s, y1, y2);
      o1.v[e] = static_cast<T>(y1);
      o2.v[e] = static_cast<T>(y2);
    }
    store_vec<V>(y + o + k * head_stride, 0, o1);
    store_vec<V>(y + o + k * head_stride + half, 0, o2);
  }
}

// x, y: (B, H, T, 2·half); cs, sn: (P, half); pos: (T,) or (B, T) (per_batch), in [0, P);
// sign −1 for the inverse. groups = B·T < 2^31 (so g + the grid stride fits in 32 bits),
// H ≤ 2^30, nv = half / V ≤ 2^30. Any grid and block shape (loops stride over all three).
template <class T, int V, int HC>
__global__ void __launch_bounds__(kThreads, 3)
    rope_vec_kernel(const T* __restrict__ x, const T* __restrict__ cs, const T* __restrict__ sn,
                    const int64_t* __restrict__ pos, bool per_batch, compute_t<T> sign, T* __restrict__ y,
                    int H, uint32_t T_, uint32_t groups, int nv, int64_t half) {
  const int64_t row = 2 * half, head_stride = static_cast<int64_t>(T_) * row;
  const uint32_t gstride = gridDim.x * blockDim.y;
  for (uint32_t g = blockIdx.x * blockDim.y + threadIdx.y; g < groups; g += gstride) {
    const uint32_t b = g / T_, t = g - b * T_;
    const int64_t p = pos[per_batch ? g : t];
    const T* cr = cs + p * half;
    const T* sr = sn + p * half;
    for (int vi = threadIdx.x; vi < nv; vi += blockDim.x) {
      for (int h0 = blockIdx.y * HC; h0 < H; h0 += gridDim.y * HC) {
        const int64_t o = (static_cast<int64_t>(b) * H + h0) * head_stride + t * row + static_cast<int64_t>(vi) * V;
        if (h0 + HC <= H) {
          rope_rows<HC, V>(x, y, o, head_stride, half, cr, sr, vi, sign);
        } else {
          for (int k = 0; k < H - h0; ++k) {
            rope_rows<1, V>(x, y, o + k * head_stride, head_stride, half, cr, sr, vi, sign);
          }
        }
      }
    }
  }
}
// ---------------------------------------------------------------- end rope kernels

// SOMNUS_ROPE=v1 selects the previous kernel (read on every call, so that tests and benchmarks
// can switch it).
bool use_rope_v1() {
  const char* e = std::getenv("SOMNUS_ROPE");
  return e != nullptr && std::strcmp(e, "v1") == 0;
}

}  // namespace

void rope(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& positions, bool inverse,
          const Tensor& out) {
  set_device(out);
  const int64_t B = x.size(0), H = x.size(1), T_ = x.size(2), half = x.size(3) / 2;
  const int64_t total = x.numel() / 2;
  const bool per_batch = positions.dim() == 2;
  const int64_t* pp = static_cast<const int64_t*>(positions.data_ptr());
  visit_floating(x.dtype(), "rope", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x.data_ptr());
    const T* cp = static_cast<const T*>(cos.data_ptr());
    const T* sp = static_cast<const T*>(sin.data_ptr());
    T* yp = static_cast<T*>(out.data_ptr());
    if (use_rope_v1() || B * T_ >= (int64_t{1} << 31) || H > (int64_t{1} << 30) || half > (int64_t{1} << 30)) {
      rope_kernel<T><<<grid_for(total, kThreads), kThreads>>>(xp, cp, sp, pp, per_batch, inverse, yp, H, T_, half,
                                                             total);
      CUDA_CHECK_LAUNCH();
      return;
    }
    constexpr int kV = 16 / sizeof(T);
    const bool vec = half % kV == 0 && aligned_to(xp, 16) && aligned_to(cp, 16) && aligned_to(sp, 16) &&
                     aligned_to(yp, 16);
    auto launch = [&](auto vw) {
      constexpr int V = decltype(vw)::value;
      const int64_t nv = half / V;
      const RopeBlock blk = rope_block(nv);
      const int64_t chunks = (H + kHeadsPerThread - 1) / kHeadsPerThread;
      const dim3 grid(grid_for(B * T_, blk.by), static_cast<unsigned>(chunks < 65535 ? chunks : 65535));
      const compute_t<T> sign = inverse ? compute_t<T>(-1) : compute_t<T>(1);
      rope_vec_kernel<T, V, kHeadsPerThread><<<grid, dim3(blk.bx, blk.by)>>>(
          xp, cp, sp, pp, per_batch, sign, yp, static_cast<int>(H), static_cast<uint32_t>(T_),
          static_cast<uint32_t>(B * T_), static_cast<int>(nv), half);
      CUDA_CHECK_LAUNCH();
    };
    if (vec) {
      launch(std::integral_constant<int, kV>{});
    } else {
      launch(std::integral_constant<int, 1>{});
    }
  });
}

}  // namespace somnus::kernels::cuda
