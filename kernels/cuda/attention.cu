// Fused attention on CUDA: the FlashAttention-2 forward and the SIMT backward, and the
// backward's dispatch. The CPU twin (kernels/cpu/attention.cpp) runs the same algorithm; its
// header gives the math. Split-K decode: attention_decode.cu; the tensor-core backward:
// attention_bwd.cu; shared helpers: attention_common.cuh.
//
// Shapes: q, o (B, Hq, T, D); k, v (B, Hkv, S, D), query head h reads kv head h / (Hq/Hkv);
// lse (B, Hq, T) f32. D ∈ {64, 128} (template parameter). Causal: query i sees keys
// j <= q_offset + i. All tensors contiguous (ops.cpp makes them so).
//
// Kernels:
//   attn_fwd_mma    bf16 forward on tensor cores (mma.sync.m16n8k16 bf16 -> f32). A block is
//                   4 warps = 64 query rows (16 per warp) of one (b, h); key tiles of 64 are
//                   staged in shared memory (rows padded by 8 elements against bank conflicts).
//                   Per tile: S = Q Kᵀ in registers (16 × 64 per warp), masked, online softmax
//                   (row max/sum over the quad of lanes that share a row), O rescaled, P
//                   rounded to bf16 and fed straight from the S accumulators as the A operand
//                   of O += P V (the FA2 register trick: the C layout of two n-tiles is the A
//                   layout of one k-step). Causal blocks stop at the last key their last row
//                   sees. Versions (SOMNUS_ATTN_FWD; all give bitwise the same result):
//                     v1   fragments from plain 32/16-bit shared loads, tiles loaded
//                          synchronously (3 · 64 · (D + 8) · 2 bytes of shared memory);
//                     v2   Q fragments kept in registers, K and V fragments by ldmatrix
//                          (.trans for V);
//                     default: v2 + K/V tiles double-buffered with cp.async (5 tiles of
//                          shared memory, 87 KiB at D = 128).
//   attn_rows_simt  (attention_common.cuh) SIMT forward, one warp per query row; f32 inputs.
//   Backward: attn_bwd_delta (Δ = rowsum(dO ∘ O), a warp per row), then for bf16 the
//   tensor-core kernels of attention_bwd.cu, or (f32, or SOMNUS_ATTN_BWD=simt) the SIMT
//   kernels: attn_bwd_dkdv (a warp per key, 8 keys per block, all warps walk the same query
//   rows so that each row's dQ contribution is first summed over the block's 8 keys in shared
//   memory and then added with D f32 atomics); the deterministic mode instead runs
//   attn_bwd_dq (a warp per query row, keys in a fixed order; no atomics anywhere).
//
// FLOPs: forward 4·B·Hq·T·S·D (≈ half when causal); backward 2.5× that. H100 (2026-11-26,
// B·T = 16k, H·D = 2048, T = 4096, causal, D = 64 / 128): v1 107 / 88 TFLOP/s, v2 125 / 73,
// default 184 / 188 (0.55–0.88× PyTorch SDPA's flash forward over all shapes); all figures in
// bench/RESULTS.md.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/backend.h"
#include "kernels/cuda/attention_common.cuh"
#include "kernels/cuda/common.cuh"

namespace somnus::kernels::cuda {

namespace {

using namespace attn;

// The environment switches that select a previous kernel version (SOMNUS_ATTN_FWD=v1,
// SOMNUS_ATTN_BWD=simt): kept so a regression on a GPU can be bisected without a rebuild.
bool env_equals(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e != nullptr && std::strcmp(e, value) == 0;
}

// ---------------------------------------------------------------- bf16 forward, tensor cores

constexpr int kMmaWarps = 4;
constexpr int kMmaBr = 16 * kMmaWarps;  // 64 query rows per block
constexpr int kMmaBc = 64;              // keys per tile

template <int D>
constexpr int mma_smem_bytes(bool pipe = false) {
  return (pipe ? 5 : 3) * kMmaBr * (D + 8) * 2;
}

// kLdsm (the default since 2026-11-26): Q's A fragments loaded once into registers, K's and
// V's B fragments with ldmatrix (V's transposed by ldmatrix.trans) instead of 32-bit and
// 16-bit shared loads — the v1 kernel (kLdsm = false, SOMNUS_ATTN_FWD=v1) issued two 16-bit
// loads per V register, 4 per mma, and measured 61–125 TFLOP/s on an H100.
// kPipe (needs kLdsm; the default): K and V tiles double-buffered with cp.async, tile j + 1
// in flight while tile j is computed (shared memory 5 · 64 · (D + 8) · 2 bytes: 87 KiB at
// D = 128). SOMNUS_ATTN_FWD=v2 runs kLdsm without kPipe.
template <int D, bool kLdsm, bool kPipe>
__global__ void __launch_bounds__(kMmaWarps * 32) attn_fwd_mma(const uint16_t* __restrict__ q,
                                                             const uint16_t* __restrict__ k,
                                                             const uint16_t* __restrict__ v, uint16_t* __restrict__ o,
                                                             float* __restrict__ lse, AttnDims d) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  constexpr int LD = D + 8;
  uint16_t* Qs = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* Ks = Qs + kMmaBr * LD;
  uint16_t* Vs = Ks + kMmaBc * LD;

  const int bh = blockIdx.y, b = bh / d.Hq, h = bh % d.Hq;
  const int64_t kvh = static_cast<int64_t>(b) * d.Hkv + h / d.g;
  // The default version takes the query tiles in reverse: under a causal mask the last tiles
  // see the most keys, and starting them first leaves the short ones for the tail of the grid.
  const int qt = kPipe && d.causal ? static_cast<int>(gridDim.x - 1 - blockIdx.x) : static_cast<int>(blockIdx.x);
  const int q0 = qt * kMmaBr;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, gr = lane >> 2, tq = lane & 3;
  const uint16_t* qh = q + (static_cast<int64_t>(bh) * d.T) * D;
  const uint16_t* kh = k + kvh * d.S * D;
  const uint16_t* vh = v + kvh * d.S * D;

  load_tile_bf16<D>(Qs, qh + static_cast<int64_t>(q0) * D, kMmaBr, d.T - q0);

  // This thread's two rows (within the block): wr and wr + 8.
  const int wr = warp * 16 + gr;
  // ldmatrix addressing: this lane gives row `lrow` of matrix `lmat`.
  const int lmat = lane >> 3, lrow = lane & 7;
  uint32_t qf[kLdsm ? D / 16 : 1][4];
  if constexpr (kLdsm) {
    __syncthreads();  // Qs is loaded
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      const int c = kk * 16 + 2 * tq;
      qf[kk][0] = *reinterpret_cast<const uint32_t*>(Qs + wr * LD + c);
      qf[kk][1] = *reinterpret_cast<const uint32_t*>(Qs + (wr + 8) * LD + c);
      qf[kk][2] = *reinterpret_cast<const uint32_t*>(Qs + wr * LD + c + 8);
      qf[kk][3] = *reinterpret_cast<const uint32_t*>(Qs + (wr + 8) * LD + c + 8);
    }
  }
  const int row0 = q0 + wr, row1 = row0 + 8;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};
  float oacc[D / 8][4];
#pragma unroll
  for (int n = 0; n < D / 8; ++n) oacc[n][0] = oacc[n][1] = oacc[n][2] = oacc[n][3] = 0.f;

  const int k_end = d.visible(min(q0 + kMmaBr, d.T) - 1);  // the block's last row sees the most
  if constexpr (kPipe) {
    if (k_end > 0) {
      issue_tile_bf16<D>(Ks, kh, kMmaBc, k_end);
      issue_tile_bf16<D>(Vs, vh, kMmaBc, k_end);
    }
    cp_async_commit();
  }
  for (int j0 = 0, t = 0; j0 < k_end; j0 += kMmaBc, ++t) {
    uint16_t* Kt = Ks;
    uint16_t* Vt = Vs;
    if constexpr (kPipe) {
      // Buffers alternate: tile t in buffer t & 1. The next tile goes into the other buffer,
      // which every thread finished reading at the end of iteration t − 1.
      Kt = Ks + (t & 1) * 2 * kMmaBc * LD;
      Vt = Kt + kMmaBc * LD;
      if (j0 + kMmaBc < k_end) {
        uint16_t* Kn = Ks + ((t + 1) & 1) * 2 * kMmaBc * LD;
        issue_tile_bf16<D>(Kn, kh + static_cast<int64_t>(j0 + kMmaBc) * D, kMmaBc, k_end - j0 - kMmaBc);
        issue_tile_bf16<D>(Kn + kMmaBc * LD, vh + static_cast<int64_t>(j0 + kMmaBc) * D, kMmaBc,
                           k_end - j0 - kMmaBc);
        cp_async_commit();
        cp_async_wait<1>();  // tile t has landed (this thread's copies)
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();  // ... and every thread's
    } else {
      __syncthreads();  // the previous tile is no longer read (and Qs is loaded on the first pass)
      load_tile_bf16<D>(Ks, kh + static_cast<int64_t>(j0) * D, kMmaBc, k_end - j0);
      load_tile_bf16<D>(Vs, vh + static_cast<int64_t>(j0) * D, kMmaBc, k_end - j0);
      __syncthreads();
    }

    // S = Q Kᵀ: 16 × 64 per warp, 8 n-tiles of 8 keys.
    float s[kMmaBc / 8][4];
#pragma unroll
    for (int nt = 0; nt < kMmaBc / 8; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
    if constexpr (kLdsm) {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
        for (int nt = 0; nt < kMmaBc / 8; nt += 2) {
          // Matrices: (keys nt·8.., d kk·16..), (.., d + 8), (keys (nt+1)·8.., d), (.., d + 8).
          uint32_t kb[4];
          ldsm_x4<false>(kb, Kt + ((nt + (lmat >> 1)) * 8 + lrow) * LD + kk * 16 + (lmat & 1) * 8);
          mma_bf16(s[nt], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], kb[0], kb[1]);
          mma_bf16(s[nt + 1], qf[kk][0], qf[kk][1], qf[kk][2], qf[kk][3], kb[2], kb[3]);
        }
      }
    } else {
#pragma unroll
      for (int kk = 0; kk < D / 16; ++kk) {
        const int c = kk * 16 + 2 * tq;
        const uint32_t a0 = *reinterpret_cast<const uint32_t*>(Qs + wr * LD + c);
        const uint32_t a1 = *reinterpret_cast<const uint32_t*>(Qs + (wr + 8) * LD + c);
        const uint32_t a2 = *reinterpret_cast<const uint32_t*>(Qs + wr * LD + c + 8);
        const uint32_t a3 = *reinterpret_cast<const uint32_t*>(Qs + (wr + 8) * LD + c + 8);
#pragma unroll
        for (int nt = 0; nt < kMmaBc / 8; ++nt) {
          const uint16_t* kr = Kt + (nt * 8 + gr) * LD + c;
          mma_bf16(s[nt], a0, a1, a2, a3, *reinterpret_cast<const uint32_t*>(kr),
                   *reinterpret_cast<const uint32_t*>(kr + 8));
        }
      }
    }

    // Scale, mask, online softmax. s[nt][0..1] belong to row0, s[nt][2..3] to row1.
    const int vis0 = d.visible(row0), vis1 = d.visible(row1);
    float mt[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < kMmaBc / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int col = j0 + nt * 8 + 2 * tq + (e & 1);
        const int vis = e < 2 ? vis0 : vis1;
        s[nt][e] = col < vis ? s[nt][e] * d.scale : -INFINITY;
        mt[e >> 1] = fmaxf(mt[e >> 1], s[nt][e]);
      }
    }
    float alpha[2], mb[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffffu, mt[r], 1));
      mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffffu, mt[r], 2));
      const float m_new = fmaxf(m[r], mt[r]);
      mb[r] = m_new == -INFINITY ? 0.f : m_new;  // a row with nothing visible yet: p = 0, not NaN
      alpha[r] = __expf(m[r] - mb[r]);
      m[r] = m_new;
      l[r] *= alpha[r];
    }
#pragma unroll
    for (int nt = 0; nt < kMmaBc / 8; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nt][e] = __expf(s[nt][e] - mb[e >> 1]);
        l[e >> 1] += s[nt][e];  // this thread's columns; the quad is summed at the end
      }
    }
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
      oacc[n][0] *= alpha[0];
      oacc[n][1] *= alpha[0];
      oacc[n][2] *= alpha[1];
      oacc[n][3] *= alpha[1];
    }

    // O += P V: 4 k-steps of 16 keys; P's A fragments come from the S accumulators.
#pragma unroll
    for (int kk = 0; kk < kMmaBc / 16; ++kk) {
      const uint32_t a0 = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
      const uint32_t a1 = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
      const uint32_t a2 = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
      const uint32_t a3 = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
      if constexpr (kLdsm) {
#pragma unroll
        for (int n = 0; n < D / 8; n += 2) {
          // Transposed matrices: (keys kk·16.., d n·8..), (keys + 8, d n·8..), (keys, d (n+1)·8..),
          // (keys + 8, d (n+1)·8..): b0, b1 of n-tile n, then of n + 1.
          uint32_t vb[4];
          ldsm_x4<true>(vb, Vt + (kk * 16 + (lmat & 1) * 8 + lrow) * LD + (n + (lmat >> 1)) * 8);
          mma_bf16(oacc[n], a0, a1, a2, a3, vb[0], vb[1]);
          mma_bf16(oacc[n + 1], a0, a1, a2, a3, vb[2], vb[3]);
        }
      } else {
        const int kr = kk * 16 + 2 * tq;  // key rows of V for b0 (and + 8 for b1)
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
          const int col = n * 8 + gr;
          const uint32_t b0 = pack_u16(Vt[kr * LD + col], Vt[(kr + 1) * LD + col]);
          const uint32_t b1 = pack_u16(Vt[(kr + 8) * LD + col], Vt[(kr + 9) * LD + col]);
          mma_bf16(oacc[n], a0, a1, a2, a3, b0, b1);
        }
      }
    }
    if constexpr (kPipe) __syncthreads();  // buffer t & 1 is free for tile t + 2
  }

  // Finish: sum l over the quad, normalise, store.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
  }
  const float inv0 = l[0] > 0.f ? 1.f / l[0] : 0.f, inv1 = l[1] > 0.f ? 1.f / l[1] : 0.f;
  uint16_t* oh = o + static_cast<int64_t>(bh) * d.T * D;
#pragma unroll
  for (int n = 0; n < D / 8; ++n) {
    const int col = n * 8 + 2 * tq;
    if (row0 < d.T) {
      *reinterpret_cast<uint32_t*>(oh + static_cast<int64_t>(row0) * D + col) =
          pack_bf16(oacc[n][0] * inv0, oacc[n][1] * inv0);
    }
    if (row1 < d.T) {
      *reinterpret_cast<uint32_t*>(oh + static_cast<int64_t>(row1) * D + col) =
          pack_bf16(oacc[n][2] * inv1, oacc[n][3] * inv1);
    }
  }
  if (tq == 0) {
    if (row0 < d.T) lse[static_cast<int64_t>(bh) * d.T + row0] = m[0] + logf(l[0]);
    if (row1 < d.T) lse[static_cast<int64_t>(bh) * d.T + row1] = m[1] + logf(l[1]);
  }
}

// ---------------------------------------------------------------- backward (SIMT)

// Δ = rowsum(dO ∘ O): a warp per row.
template <class T, int D>
__global__ void attn_bwd_delta(const T* __restrict__ o, const T* __restrict__ dout, float* __restrict__ delta,
                               int64_t rows) {
  const int lane = threadIdx.x % 32;
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  if (row >= rows) return;
  float s = 0.f;
#pragma unroll
  for (int e = 0; e < D / 32; ++e) s += to_f(o[row * D + lane + 32 * e]) * to_f(dout[row * D + lane + 32 * e]);
  s = warp_allreduce_sum(s);
  if (lane == 0) delta[row] = s;
}

constexpr int kKeyWarps = 8;  // keys per dK/dV block

// grid (ceil(S / 8), B·Hkv); a warp per key j holds k_j, v_j, dk_j, dv_j (D/32 per lane).
// Every warp walks the same query rows (those that see the block's first key), so that the
// dQ contributions of the block's 8 keys are summed in shared memory before the f32 atomics
// (dq_acc null: deterministic mode, dQ comes from attn_bwd_dq).
template <class T, int D>
__global__ void __launch_bounds__(kKeyWarps * 32) attn_bwd_dkdv(const T* __restrict__ q, const T* __restrict__ k,
                                                              const T* __restrict__ v, const T* __restrict__ dout,
                                                              const float* __restrict__ lse,
                                                              const float* __restrict__ delta, T* __restrict__ dk,
                                                              T* __restrict__ dv, float* __restrict__ dq_acc,
                                                              AttnDims d) {
  constexpr int E = D / 32;
  __shared__ float red[kKeyWarps][D];
  const int bkv = blockIdx.y, b = bkv / d.Hkv, hkv = bkv % d.Hkv;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int j0 = static_cast<int>(blockIdx.x) * kKeyWarps, j = j0 + warp;
  const bool key_ok = j < d.S;
  const int64_t krow = (static_cast<int64_t>(bkv) * d.S + (key_ok ? j : 0)) * D;
  float kv[E], vv[E], dkv[E], dvv[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    kv[e] = to_f(k[krow + lane + 32 * e]);
    vv[e] = to_f(v[krow + lane + 32 * e]);
    dkv[e] = dvv[e] = 0.f;
  }
  const int i_first = d.causal ? max(0, j0 - d.q_offset) : 0;
  for (int hg = 0; hg < d.g; ++hg) {
    const int64_t bh = static_cast<int64_t>(b) * d.Hq + hkv * d.g + hg;
    for (int i = i_first; i < d.T; ++i) {
      const int64_t row = bh * d.T + i;
      const bool ok = key_ok && j < d.visible(i);  // warp-uniform
      float ds = 0.f;
      float qv[E];
#pragma unroll
      for (int e = 0; e < E; ++e) qv[e] = to_f(q[row * D + lane + 32 * e]);
      if (ok) {
        float gv[E], s = 0.f, dp = 0.f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
          gv[e] = to_f(dout[row * D + lane + 32 * e]);
          s += qv[e] * kv[e];
          dp += gv[e] * vv[e];
        }
        s = warp_allreduce_sum(s);
        dp = warp_allreduce_sum(dp);
        const float p = __expf(d.scale * s - lse[row]);
        ds = mma_round<T>(p * (dp - delta[row]));
        const float pv = mma_round<T>(p);
#pragma unroll
        for (int e = 0; e < E; ++e) {
          dvv[e] += pv * gv[e];
          dkv[e] += d.scale * ds * qv[e];
        }
      }
      if (dq_acc != nullptr) {
#pragma unroll
        for (int e = 0; e < E; ++e) red[warp][lane + 32 * e] = d.scale * ds * kv[e];
        __syncthreads();
        for (int x = threadIdx.x; x < D; x += blockDim.x) {
          float t = 0.f;
#pragma unroll
          for (int w = 0; w < kKeyWarps; ++w) t += red[w][x];
          if (t != 0.f) atomicAdd(dq_acc + row * D + x, t);
        }
        __syncthreads();
      }
    }
  }
  if (!key_ok) return;
#pragma unroll
  for (int e = 0; e < E; ++e) {
    dk[krow + lane + 32 * e] = static_cast<T>(dkv[e]);
    dv[krow + lane + 32 * e] = static_cast<T>(dvv[e]);
  }
}

// Deterministic dQ: grid (ceil(T / 4), B·Hq), a warp per query row, keys in order.
template <class T, int D>
__global__ void __launch_bounds__(kRowWarps * 32) attn_bwd_dq(const T* __restrict__ q, const T* __restrict__ k,
                                                            const T* __restrict__ v, const T* __restrict__ dout,
                                                            const float* __restrict__ lse,
                                                            const float* __restrict__ delta, T* __restrict__ dq,
                                                            AttnDims d) {
  constexpr int E = D / 32;
  __shared__ float Ks[kSimtBc][D];
  __shared__ float Vs[kSimtBc][D];
  const int bh = blockIdx.y, b = bh / d.Hq, h = bh % d.Hq;
  const int64_t kvh = static_cast<int64_t>(b) * d.Hkv + h / d.g;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int i = static_cast<int>(blockIdx.x) * kRowWarps + warp;
  const int last = min((static_cast<int>(blockIdx.x) + 1) * kRowWarps, d.T) - 1;
  const int k_end = d.visible(last);
  const int my_end = i < d.T ? d.visible(i) : 0;
  const int64_t row = static_cast<int64_t>(bh) * d.T + (i < d.T ? i : 0);
  float qv[E], gv[E], acc[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    qv[e] = to_f(q[row * D + lane + 32 * e]);
    gv[e] = to_f(dout[row * D + lane + 32 * e]);
    acc[e] = 0.f;
  }
  const float lse_i = lse[row], delta_i = delta[row];
  for (int j0 = 0; j0 < k_end; j0 += kSimtBc) {
    __syncthreads();
    for (int c = threadIdx.x; c < kSimtBc * D; c += blockDim.x) {
      const int r = c / D, x = c % D, j = j0 + r;
      Ks[r][x] = j < k_end ? to_f(k[(kvh * d.S + j) * D + x]) : 0.f;
      Vs[r][x] = j < k_end ? to_f(v[(kvh * d.S + j) * D + x]) : 0.f;
    }
    __syncthreads();
    const int n = min(kSimtBc, my_end - j0);
    for (int r = 0; r < n; ++r) {
      float s = 0.f, dp = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        s += qv[e] * Ks[r][lane + 32 * e];
        dp += gv[e] * Vs[r][lane + 32 * e];
      }
      s = warp_allreduce_sum(s);
      dp = warp_allreduce_sum(dp);
      const float p = __expf(d.scale * s - lse_i);
      const float ds = mma_round<T>(p * (dp - delta_i));
#pragma unroll
      for (int e = 0; e < E; ++e) acc[e] += d.scale * ds * Ks[r][lane + 32 * e];
    }
  }
  if (i >= d.T) return;
#pragma unroll
  for (int e = 0; e < E; ++e) dq[row * D + lane + 32 * e] = static_cast<T>(acc[e]);
}

template <class T>
__global__ void cast_from_f32(const float* __restrict__ x, T* __restrict__ y, int64_t n) {
  SOMNUS_GRID_STRIDE(i, n) { y[i] = static_cast<T>(x[i]); }
}

// ---------------------------------------------------------------- dispatch

}  // namespace

using namespace attn;

void attention_fwd(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, bool causal, double scale,
                   int64_t q_offset, const Tensor& o, const Tensor& lse) {
  set_device(q_in);
  const Tensor q = aligned16(q_in), k = aligned16(k_in), v = aligned16(v_in);
  check_aligned16(o, "attention_fwd", "o");
  const AttnDims d = dims_of(q, k, causal, scale, q_offset);
  visit_attn_dtype(q.dtype(), "attention_fwd", [&](auto tag) {
    using T = decltype(tag);
    visit_head_dim(q.size(3), "attention_fwd", [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      if constexpr (std::is_same_v<T, bf16>) {
        const dim3 grid((d.T + kMmaBr - 1) / kMmaBr, d.B * d.Hq);
        auto launch = [&](auto kernel, int smem) {
          CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
          kernel<<<grid, kMmaWarps * 32, smem>>>(
              reinterpret_cast<const uint16_t*>(q.data_ptr()), reinterpret_cast<const uint16_t*>(k.data_ptr()),
              reinterpret_cast<const uint16_t*>(v.data_ptr()), reinterpret_cast<uint16_t*>(o.data_ptr()),
              lse.data<float>(), d);
          CUDA_CHECK_LAUNCH();
        };
        if (env_equals("SOMNUS_ATTN_FWD", "v1")) {
          launch(attn_fwd_mma<D, false, false>, mma_smem_bytes<D>());
        } else if (env_equals("SOMNUS_ATTN_FWD", "v2")) {
          launch(attn_fwd_mma<D, true, false>, mma_smem_bytes<D>());
        } else {
          launch(attn_fwd_mma<D, true, true>, mma_smem_bytes<D>(true));
        }
      } else {
        launch_rows<T, D>(q, k, v, d, 1, d.S, o, lse, nullptr, nullptr);
      }
    });
  });
}

void attention_bwd(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, const Tensor& o, const Tensor& lse,
                   const Tensor& dout_in, bool causal, double scale, int64_t q_offset, bool deterministic,
                   const Tensor& dq, const Tensor& dk, const Tensor& dv) {
  set_device(q_in);
  const Tensor q = aligned16(q_in), k = aligned16(k_in), v = aligned16(v_in), dout = aligned16(dout_in);
  check_aligned16(dq, "attention_bwd", "dq");
  check_aligned16(dk, "attention_bwd", "dk");
  check_aligned16(dv, "attention_bwd", "dv");
  const AttnDims d = dims_of(q, k, causal, scale, q_offset);
  const int64_t rows = static_cast<int64_t>(d.B) * d.Hq * d.T;
  Tensor delta = Tensor::empty({rows}, DType::f32, q.device());
  Tensor dq_acc;
  if (!deterministic) {
    dq_acc = Tensor::empty({q.numel()}, DType::f32, q.device());
    CUDA_CHECK(cudaMemsetAsync(dq_acc.data_ptr(), 0, q.numel() * sizeof(float)));
  }
  visit_attn_dtype(q.dtype(), "attention_bwd", [&](auto tag) {
    using T = decltype(tag);
    visit_head_dim(q.size(3), "attention_bwd", [&](auto dim) {
      constexpr int D = decltype(dim)::value;
      // A warp per row and no grid-stride loop: one block per 4 rows (grid_for caps the grid).
      attn_bwd_delta<T, D><<<static_cast<unsigned>((rows + 3) / 4), 128>>>(o.data<T>(), dout.data<T>(),
                                                                          delta.data<float>(), rows);
      CUDA_CHECK_LAUNCH();
      if constexpr (std::is_same_v<T, bf16>) {
        // bf16: the tensor-core kernels (attention_bwd.cu) unless SOMNUS_ATTN_BWD=simt.
        if (!env_equals("SOMNUS_ATTN_BWD", "simt")) {
          attention_bwd_mma(q, k, v, dout, lse, delta, d, deterministic ? nullptr : dq_acc.data<float>(), dq, dk, dv);
          if (!deterministic) {
            cast_from_f32<T><<<grid_for(q.numel(), 256), 256>>>(dq_acc.data<float>(), dq.data<T>(), q.numel());
            CUDA_CHECK_LAUNCH();
          }
          return;
        }
      }
      const dim3 kv_grid((d.S + kKeyWarps - 1) / kKeyWarps, d.B * d.Hkv);
      attn_bwd_dkdv<T, D><<<kv_grid, kKeyWarps * 32>>>(q.data<T>(), k.data<T>(), v.data<T>(), dout.data<T>(),
                                                      lse.data<float>(), delta.data<float>(), dk.data<T>(),
                                                      dv.data<T>(), deterministic ? nullptr : dq_acc.data<float>(), d);
      CUDA_CHECK_LAUNCH();
      if (deterministic) {
        const dim3 q_grid((d.T + kRowWarps - 1) / kRowWarps, d.B * d.Hq);
        attn_bwd_dq<T, D><<<q_grid, kRowWarps * 32>>>(q.data<T>(), k.data<T>(), v.data<T>(), dout.data<T>(),
                                                     lse.data<float>(), delta.data<float>(), dq.data<T>(), d);
      } else {
        cast_from_f32<T><<<grid_for(q.numel(), 256), 256>>>(dq_acc.data<float>(), dq.data<T>(), q.numel());
      }
      CUDA_CHECK_LAUNCH();
    });
  });
}

}  // namespace somnus::kernels::cuda
