// Shared by the CUDA attention files (attention.cu: forward and the SIMT backward;
// attention_bwd.cu: the tensor-core backward; attention_decode.cu: split-K decode): the
// problem's dimensions, the mma.sync helpers, the SIMT row kernel (f32 forward, decode
// fallback) and the dtype / head-dim dispatch. Templates and inline functions only, so each
// .cu gets its own copy.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"

namespace somnus::kernels::cuda::attn {

// ---------------------------------------------------------------- helpers

struct AttnDims {
  int B, Hq, Hkv, T, S, g;
  int causal;
  int q_offset;
  float scale;
  // Keys [0, visible(i)) are visible from query row i.
  __device__ __forceinline__ int visible(int i) const {
    if (!causal) return S;
    const int v = q_offset + i + 1;
    return v < 0 ? 0 : (v < S ? v : S);
  }
};

inline AttnDims dims_of(const Tensor& q, const Tensor& k, bool causal, double scale, int64_t q_offset) {
  const int64_t lim = int64_t(1) << 30;
  // (b, h) pairs go on grid.y, which holds at most 65535 blocks.
  if (q.size(2) >= lim || k.size(2) >= lim || q_offset >= lim || q.size(0) * q.size(1) > 65535) {
    throw_error("attention (CUDA): sizes beyond the kernels' limits (T, S < 2^30, B·Hq <= 65535): q " +
                shape_str(q.shape()) + " k " +
                shape_str(k.shape()));
  }
  AttnDims d;
  d.B = static_cast<int>(q.size(0));
  d.Hq = static_cast<int>(q.size(1));
  d.Hkv = static_cast<int>(k.size(1));
  d.T = static_cast<int>(q.size(2));
  d.S = static_cast<int>(k.size(2));
  d.g = d.Hq / d.Hkv;
  d.causal = causal ? 1 : 0;
  d.q_offset = static_cast<int>(q_offset);
  d.scale = static_cast<float>(scale);
  return d;
}

template <class T>
__device__ __forceinline__ float to_f(T x) {
  return static_cast<float>(x);
}

// The value a bf16 kernel feeds to an mma (the CPU twin's mma_round).
template <class T>
__device__ __forceinline__ float mma_round(float x) {
  if constexpr (std::is_same_v<T, bf16>) {
    return __bfloat162float(__float2bfloat16_rn(x));
  } else {
    return x;
  }
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return *reinterpret_cast<const uint32_t*>(&v);
}

__device__ __forceinline__ uint32_t pack_u16(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

// D = A·B + C, m16n8k16, bf16 inputs, f32 accumulators (in place).
__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                         uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// ---------------------------------------------------------------- device limits, alignment

// The most dynamic shared memory a block may opt into on the current device (227 KB on
// sm_90, 163 KB on sm_80, 99 KB on sm_86/sm_89): a kernel version that needs more is not
// launched there (attention_bwd.cu falls back to its version without the prefetch buffers).
inline int max_dynamic_smem_bytes() {
  int dev = 0, bytes = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return bytes;
}

// The tensor-core kernels read q, k, v, dO with 16-byte vector loads. ops.cpp passes
// contiguous tensors, but a contiguous view may start at an offset that is not a multiple of
// 16 bytes: such an input is copied (a fresh allocation is aligned); an output the caller
// allocated must be aligned already.
inline Tensor aligned16(const Tensor& t) { return aligned_to(t.data_ptr(), 16) ? t : t.clone(); }
inline void check_aligned16(const Tensor& t, const char* op, const char* name) {
  if (!aligned_to(t.data_ptr(), 16)) {
    throw_error(std::string(op) + " (CUDA): output " + name + " must start on a 16-byte boundary");
  }
}

// ---------------------------------------------------------------- tiles and fragments
// (used by the forward in attention.cu and the backward in attention_bwd.cu)

// rows × D bf16 from global (row-major) into shared memory with row stride D + 8, zero rows
// at and past `valid` (masked products stay finite: a zero V row times p = 0 stays 0, garbage could be NaN).
template <int D>
__device__ __forceinline__ void load_tile_bf16(uint16_t* sm, const uint16_t* g, int rows, int valid) {
  constexpr int kChunks = D / 8;  // 16-byte chunks per row
  for (int c = threadIdx.x; c < rows * kChunks; c += blockDim.x) {
    const int r = c / kChunks, x = (c % kChunks) * 8;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r < valid) val = *reinterpret_cast<const uint4*>(g + static_cast<int64_t>(r) * D + x);
    *reinterpret_cast<uint4*>(sm + r * (D + 8) + x) = val;
  }
}

// cp.async of 16 bytes global → shared, zero-filled when !valid (src-size 0: nothing is read,
// but `g` must still be a mapped address: callers pass the tile's base for invalid rows).
__device__ __forceinline__ void cp_async16(uint16_t* sm, const uint16_t* g, bool valid) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(sm));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(g), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// load_tile_bf16 through cp.async (asynchronous: the caller commits and waits).
template <int D>
__device__ __forceinline__ void issue_tile_bf16(uint16_t* sm, const uint16_t* g, int rows, int valid) {
  constexpr int kChunks = D / 8;
  for (int c = threadIdx.x; c < rows * kChunks; c += blockDim.x) {
    const int r = c / kChunks, x = (c % kChunks) * 8;
    const bool ok = r < valid;
    cp_async16(sm + r * (D + 8) + x, ok ? g + static_cast<int64_t>(r) * D + x : g, ok);
  }
}

// ldmatrix.x4 (kTrans: .trans) from shared memory: lane l gives the address of row l % 8 of
// 8×8 matrix l / 8 (16-byte aligned); register i receives this thread's part of matrix i:
// without .trans (row lane/4, cols 2·(lane%4) + {0, 1}), with .trans (rows 2·(lane%4) + {0, 1},
// col lane/4), the lower index in the low half.
template <bool kTrans>
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const uint16_t* p) {
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
  if constexpr (kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a)
                 : "memory");
  }
}

// ---------------------------------------------------------------- SIMT forward / decode splits

constexpr int kRowWarps = 4;
constexpr int kSimtBc = 32;

// grid (ceil(Tq / warps), B·Hq, n_split), blockDim = 32·warps (warps = min(4, Tq): a decode
// step with one query runs one-warp blocks, so no warp idles); a warp per query row; keys
// [split·chunk, +chunk).
// partial: write f32 (o_s, lse_s) to o_part (B·Hq, n_split, Tq, D), lse_part (B·Hq, n_split, Tq)
// (o_s normalised by its own l; lse_s = −inf and o_s = 0 for a split the row cannot see);
// otherwise o (T) and lse directly.
template <class T, int D>
__global__ void __launch_bounds__(kRowWarps * 32) attn_rows_simt(const T* __restrict__ q, const T* __restrict__ k,
                                                               const T* __restrict__ v, T* __restrict__ o,
                                                               float* __restrict__ lse, float* __restrict__ o_part,
                                                               float* __restrict__ lse_part, int chunk, AttnDims d) {
  constexpr int E = D / 32;
  __shared__ float Ks[kSimtBc][D];
  __shared__ float Vs[kSimtBc][D];
  const int bh = blockIdx.y, b = bh / d.Hq, h = bh % d.Hq, sp = blockIdx.z, n_split = gridDim.z;
  const int64_t kvh = static_cast<int64_t>(b) * d.Hkv + h / d.g;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int warps = static_cast<int>(blockDim.x / 32);
  const int i = static_cast<int>(blockIdx.x) * warps + warp;
  const int k_lo = sp * chunk, k_hi = min(d.S, k_lo + chunk);
  const int last = min((static_cast<int>(blockIdx.x) + 1) * warps, d.T) - 1;
  const int k_end = min(k_hi, d.visible(last));
  const int my_end = i < d.T ? min(k_hi, d.visible(i)) : k_lo;

  float qv[E], acc[E];
  const T* qr = q + (static_cast<int64_t>(bh) * d.T + (i < d.T ? i : 0)) * D;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    qv[e] = to_f(qr[lane + 32 * e]) * d.scale;
    acc[e] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int j0 = k_lo; j0 < k_end; j0 += kSimtBc) {
    __syncthreads();
    for (int c = threadIdx.x; c < kSimtBc * D; c += blockDim.x) {
      const int r = c / D, x = c % D, j = j0 + r;
      Ks[r][x] = j < k_end ? to_f(k[(kvh * d.S + j) * D + x]) : 0.f;
      Vs[r][x] = j < k_end ? to_f(v[(kvh * d.S + j) * D + x]) : 0.f;
    }
    __syncthreads();
    const int n = min(kSimtBc, my_end - j0);  // warp-uniform
    for (int r = 0; r < n; ++r) {
      float s = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) s += qv[e] * Ks[r][lane + 32 * e];
      s = warp_allreduce_sum(s);
      const float m_new = fmaxf(m, s);
      const float alpha = __expf(m - m_new), p = __expf(s - m_new);
      l = l * alpha + p;
      const float pv = mma_round<T>(p);
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] = acc[e] * alpha + pv * Vs[r][lane + 32 * e];
      m = m_new;
    }
  }
  if (i >= d.T) return;
  const float inv = l > 0.f ? 1.f / l : 0.f;
  if (o_part != nullptr) {
    const int64_t idx = (static_cast<int64_t>(bh) * n_split + sp) * d.T + i;
#pragma unroll
    for (int e = 0; e < E; ++e) o_part[idx * D + lane + 32 * e] = acc[e] * inv;
    if (lane == 0) lse_part[idx] = l > 0.f ? m + logf(l) : -INFINITY;
  } else {
    const int64_t row = static_cast<int64_t>(bh) * d.T + i;
#pragma unroll
    for (int e = 0; e < E; ++e) o[row * D + lane + 32 * e] = static_cast<T>(acc[e] * inv);
    if (lane == 0) lse[row] = m + logf(l);
  }
}

template <class F>
inline void visit_head_dim(int64_t D, const char* op, F&& f) {
  switch (D) {
    case 64: return f(std::integral_constant<int, 64>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default: throw_error(std::string(op) + ": the CUDA kernels take head dim 64 or 128, got " + std::to_string(D));
  }
}

template <class F>
inline void visit_attn_dtype(DType dt, const char* op, F&& f) {
  switch (dt) {
    case DType::f32: return f(float{});
    case DType::bf16: return f(bf16{});
    default: throw_error(std::string(op) + ": the CUDA kernels take f32 or bf16, got " + dtype_name(dt));
  }
}

template <class T, int D>
inline void launch_rows(const Tensor& q, const Tensor& k, const Tensor& v, const AttnDims& d, int n_split, int chunk,
                 const Tensor& o, const Tensor& lse, float* o_part, float* lse_part) {
  const int warps = std::min(kRowWarps, d.T);
  const dim3 grid((d.T + warps - 1) / warps, d.B * d.Hq, n_split);
  attn_rows_simt<T, D><<<grid, warps * 32>>>(q.data<T>(), k.data<T>(), v.data<T>(),
                                                o.defined() ? o.data<T>() : nullptr,
                                                lse.defined() ? lse.data<float>() : nullptr, o_part, lse_part, chunk,
                                                d);
  CUDA_CHECK_LAUNCH();
}

// The tensor-core backward (attention_bwd.cu): bf16, D ∈ {64, 128}. dq_acc: f32 (B·Hq·T·D)
// zero-filled accumulator for the atomic dQ, or null in deterministic mode (dQ then written
// by a separate pass). delta = rowsum(dO ∘ O) (B·Hq·T) already computed.
void attention_bwd_mma(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout, const Tensor& lse,
                       const Tensor& delta, const AttnDims& d, float* dq_acc, const Tensor& dq, const Tensor& dk,
                       const Tensor& dv);

}  // namespace somnus::kernels::cuda::attn
