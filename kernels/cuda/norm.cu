// CUDA RMSNorm and LayerNorm over the last dim, with a fused residual add, and their backward.
// The twin of kernels/cpu/norm.cpp: the same passes and formulas (see there).
//
// Forward (v2, default): the row in registers, like the backward below: thread t of a group owns
// the 16-byte vectors t, t + kThreads, ... of its row (NV ≤ 4 per thread: C ≤ 8192 for bf16,
// ≤ 4096 for f32/f64; short rows put G = 2, 4 or 8 rows in a block), loads all of them (x, and r
// when fused) before its first arithmetic, forms h = x + r (stored in the storage dtype; the
// stats use the rounded h), Σh (layer) or Σh² (rms), a block reduction, for LayerNorm the
// two-pass Σ(h − mean)² from the registers and a second reduction, and writes y from the
// registers. DRAM traffic per element: one read of x (+ r), one write of y (+ h); nothing is
// re-read. With G = 1 every sum is formed in v1's order: the results are bitwise v1's.
// Why (H100, 2026-11-26, 16384×4096): v1 reached 0.89 (RMS) / 0.78 (Layer) of copy in bf16 and
// 0.77 / 0.73 in f32 without the residual, but 0.88–0.99 with it: v1 loads one vector per thread
// at a time in a runtime loop and re-reads the row for each further pass, so with 2 bytes moved
// per element (vs 4 with the residual) the serial load → reduce → re-read → write chain of a
// row is not hidden. v2 has a whole row in flight per block (8 KiB bf16, 16 KiB f32); ptxas
// sm_90 (reviewbw): bf16 NV = 2 43 registers → 5 blocks of 256 threads per SM, 40 KiB of loads
// in flight (80 KiB with the residual); f32 NV = 4 56 registers → 4 blocks, 64 KiB; bf16 NV = 4
// 74 → 3. Predicted (not yet measured): the forwards without residual at 0.88–0.95 of copy,
// like the fused ones (which should not lose: same bytes, fewer instructions); if the bf16
// forward without residual stays short, its 40 KiB in flight is the first suspect.
// Forward v1 (SOMNUS_NORM_FWD=v1, and the fallback for wider rows): one block of kThreads per
// row (grid-stride over rows). Pass 1 forms h = x + r
// (stored in the storage dtype; the stats use the rounded h), accumulating Σh (layer) or Σh²
// (rms); pass 2 (layer) the two-pass Σ(h − mean)²; pass 3 writes y. Passes 2–3 re-read the
// row from L1/L2, so DRAM traffic is one read of x (+r) and one write of y (+h).
// Backward (v2, default): one block of kThreads per chunk of kNormRowsPerChunk rows (the
// (chunks, C) partial contract of backend.h). Thread t owns the 16-byte vectors t, t + kThreads,
// ..., t + (NV − 1)·kThreads of every row (NV ≤ 4, a template parameter: C ≤ 8192 for bf16,
// ≤ 4096 for f32/f64, ≤ 1024 on the scalar path). Per row it loads its dy, h, dh_in vectors
// once into registers (w, C values shared by all rows, comes from L1/L2), forms Σg and Σg∘x̂
// (g = dy∘w) with one block reduction of the pair, and writes dh from the registers: one DRAM
// read of dy, h, dh_in and one write of dh per element. Short rows (at most kThreads / 2
// vectors) split the block into G = 2, 4 or 8 groups that take every G-th row of the chunk, so
// that most threads work (G = 8: a warp per row, shuffles only). dw/db accumulate in
// thread-private shared memory (a thread owns its columns: no atomics, deterministic) and are
// written once per chunk (G > 1: the groups' sums added in group order). Shared memory rather
// than registers: NV·V f32 accumulators each for dw and db would double the registers, and at
// ≤ 64 registers 4 blocks of 256 threads fit an SM, so the 512 chunks of a 16384-row batch are
// one wave on 132 SMs with ~96 KiB of loads in flight per SM.
// Bytes per element (bf16, with dh_in): 3 · 2 read + 2 written = 8; the f32 partials add
// 4 / 32 per parameter written here and the same read by ops.cpp's sum over chunks: ~2% for
// RMSNorm (dw), ~4% for LayerNorm (dw, db). Predicted on an H100 (copy 2926 GB/s), 16384×4096
// bf16 with dh_in (512 MiB counted): the kernel near 90% of copy (~2.6 TB/s, ~200 µs) plus
// ~10 µs per parameter for the (512, 4096) f32 partial sum and cast, so ≈ 2.4–2.5 TB/s
// counted for RMSNorm and ≈ 2.3–2.4 TB/s for LayerNorm (80–85% of copy; v1: 645 and 345
// GB/s). f32 (NV = 4, 96 registers, 2 blocks per SM, two waves) similarly ≈ 2.3–2.5 TB/s.
// Measured (H100, 2026-11-26, same run as the v1 baseline): bf16 RMSNorm 2475–2526 GB/s
// (0.86–0.87 of copy; v1 639–645), LayerNorm 2166–2181 (0.75; v1 339–345); f32 RMSNorm
// 2727–2790 (0.94–0.95), LayerNorm 2674–2678 (0.91). bf16 LayerNorm misses 80%: the two (512,
// 4096) partial sums (dw, db) and casts in ops.cpp are the likely remainder (not profiled).
// 2026-11-27 (H100, runs 4 and 5): bf16 LayerNorm 0.71–0.74, RMSNorm 0.86–0.87 (246 vs 211 µs).
// Then ops.cpp summed dw and db as the two planes of one buffer (one column-sum launch and one
// cast instead of two each): predicted ~10 µs off; measured in run 6: 245.5 µs, no gain.
// ncu (run 6, RMSNorm bf16): the kernel at 76.6% of the DRAM peak, 64% of issue slots busy;
// the PTX had a branch per element on db_part and bf16's integer rounding per store. Both
// removed (see norm_backward_reg_kernel): run 7, LayerNorm 237.8 µs (0.77 of copy), RMSNorm
// 209.8 (0.87); ncu of the LayerNorm kernel: 228.6 µs at ncu's clocks, 70.4% of DRAM peak, and
// ~10 µs more for the partial sum (reduce.cu's column kernel, 47.8% of DRAM). The LayerNorm
// kernel stays ~10% behind RMSNorm's: its second shared-memory accumulator (db: for bf16
// NV = 2, 16 loads, 16 adds and 16 stores more per row and thread). Tried and dropped: the
// accumulators as 16- or 8-byte vectors (4× / 2× fewer shared accesses) — ptxas then spilled
// 14–54 bytes in bf16 NV = 2 (the 16384×4096 case, which fits 64 registers, 4 blocks per SM,
// the 512 chunks in one wave). Next to try, on a GPU (both opt-in, written 2026-11-27/28, not
// yet run): dw and db as one 8-byte pair per column (SOMNUS_NORM_BWD=pair, kPair below, 16 bytes
// of spill, 8 with the row body inline; bench rows layer_norm_bwd_pair/*); the accumulators in registers with half the
// elements per thread and twice the threads per block (SOMNUS_NORM_BWD=racc,
// norm_backward_racc_kernel: 512 threads at C = 4096, 64 registers, no spill, the same 1024
// threads per SM; bench rows {layer,rms}_norm_bwd_racc/*). Its risk: each row's two block sums
// run over 16 warps instead of 8, for half the elements per thread. Further: 3 blocks per SM
// with 16 elements per thread in registers (1.3 waves: needs rows redistributed); the partial
// sum folded into this kernel (a grid-wide step over the L2-resident partials, which changes
// the (chunks, C) contract of backend.h).
// Backward v1 (SOMNUS_NORM_BWD=v1, and the fallback for wider rows): per row, two passes over
// dy and h (the second from L1/L2), a block reduction each of Σg and Σg∘x̂, and a
// read-modify-write of the chunk's (C,) partial row in global memory per row.
// Loads and stores are 16-byte vectors (8 bf16, 4 f32, 2 f64) when C is a multiple of the
// vector width and the pointers are aligned; otherwise scalar. Reductions: warp shuffles,
// then one shared-memory step across the block's warps.
#include <cuda_bf16.h>

#include <cstdlib>
#include <cstring>

#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"

namespace somnus::kernels::cuda {

namespace {

constexpr int kThreads = 256;

// Sums a value over each group of kThreads / G consecutive threads (G = 1: the block; G =
// kThreads / 32: each warp), every thread of the group getting it. Called by all threads of the
// block. `smem` holds kThreads / 32 values.
template <int G, class C>
__device__ __forceinline__ C group_allreduce_sum(C a, C* smem) {
  a = warp_allreduce_sum(a);
  constexpr int kWarps = kThreads / 32, kGroupWarps = kWarps / G;
  if constexpr (kGroupWarps > 1) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, first = warp - warp % kGroupWarps;
    __syncthreads();  // smem may still be read from the previous reduction
    if (lane == 0) smem[warp] = a;
    __syncthreads();
    a = warp_allreduce_sum(lane < kGroupWarps ? smem[first + lane] : C(0));
  }
  return a;
}

// Sum over the block (of kThreads threads); every thread gets the result.
template <class C>
__device__ __forceinline__ C block_allreduce_sum(C v, C* smem) {
  return group_allreduce_sum<1>(v, smem);
}

// Sums two values over each group of TB / G consecutive threads of a block of TB threads (G =
// 1: the block; G = TB / 32: each warp), every thread of the group getting both. Called by all
// threads of the block. `smem` holds 2 · TB / 32.
template <int G, class C, int TB = kThreads>
__device__ __forceinline__ void group_allreduce_sum2(C& a, C& b, C* smem) {
  a = warp_allreduce_sum(a);
  b = warp_allreduce_sum(b);
  constexpr int kWarps = TB / 32, kGroupWarps = kWarps / G;
  if constexpr (kGroupWarps > 1) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, first = warp - warp % kGroupWarps;
    __syncthreads();  // smem may still be read from the previous reduction
    if (lane == 0) {
      smem[warp] = a;
      smem[kWarps + warp] = b;
    }
    __syncthreads();
    a = warp_allreduce_sum(lane < kGroupWarps ? smem[first + lane] : C(0));
    b = warp_allreduce_sum(lane < kGroupWarps ? smem[kWarps + first + lane] : C(0));
  }
}

// Note (reviewbw, 2026-11-27): ptxas issues every load here as LDG.CONSTANT (non-coherent),
// also passes 2–3's re-reads of h, which pass 1 wrote (with or without __restrict__ on h). It
// passed on the H100 and is benign in practice — each thread re-reads only lines the block
// finished writing before the barrier, never cached before — but PTX allows .nc only for data
// read-only during the kernel; v2 does not re-read h. Left as is: v1 is the fallback for rows
// wider than v2 takes and SOMNUS_NORM_FWD=v1.
template <class T, int V>
__global__ void __launch_bounds__(kThreads)
    norm_forward_kernel(bool layer, const T* __restrict__ x, const T* __restrict__ res, const T* __restrict__ w,
                        const T* __restrict__ b, compute_t<T> eps, T* __restrict__ y, T* __restrict__ h,
                        compute_t<T>* __restrict__ mean, compute_t<T>* __restrict__ rstd, int64_t rows, int64_t n) {
  using C = compute_t<T>;
  __shared__ C smem[kThreads / 32];
  const int64_t nv = n / V;
  const C inv_n = C(1) / static_cast<C>(n);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * n;
    const T* src = xr;
    C s1 = 0;
    if (res != nullptr) {
      const T* rr = res + r * n;
      T* hr = h + r * n;
      for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
        const Vec<T, V> a = load_vec<V>(xr, vi), c = load_vec<V>(rr, vi);
        Vec<T, V> o;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          o.v[k] = static_cast<T>(static_cast<C>(a.v[k]) + static_cast<C>(c.v[k]));
          const C v = static_cast<C>(o.v[k]);
          s1 += layer ? v : v * v;
        }
        store_vec<V>(hr, vi, o);
      }
      src = hr;
    } else {
      for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
        const Vec<T, V> a = load_vec<V>(xr, vi);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const C v = static_cast<C>(a.v[k]);
          s1 += layer ? v : v * v;
        }
      }
    }
    s1 = block_allreduce_sum(s1, smem);
    C mu = 0, rs;
    if (layer) {
      mu = s1 * inv_n;
      C s2 = 0;
      for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
        const Vec<T, V> a = load_vec<V>(src, vi);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const C d = static_cast<C>(a.v[k]) - mu;
          s2 += d * d;
        }
      }
      s2 = block_allreduce_sum(s2, smem);
      rs = C(1) / m_sqrt(s2 * inv_n + eps);
    } else {
      rs = C(1) / m_sqrt(s1 * inv_n + eps);
    }
    if (threadIdx.x == 0) {
      rstd[r] = rs;
      if (layer) mean[r] = mu;
    }
    T* yr = y + r * n;
    for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
      const Vec<T, V> a = load_vec<V>(src, vi), wv = load_vec<V>(w, vi);
      Vec<T, V> o;
      if (b != nullptr) {
        const Vec<T, V> bv = load_vec<V>(b, vi);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          o.v[k] = static_cast<T>((static_cast<C>(a.v[k]) - mu) * rs * static_cast<C>(wv.v[k]) +
                                  static_cast<C>(bv.v[k]));
        }
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          o.v[k] = static_cast<T>((static_cast<C>(a.v[k]) - mu) * rs * static_cast<C>(wv.v[k]));
        }
      }
      store_vec<V>(yr, vi, o);
    }
  }
}

// Register-resident forward (v2, the default; see the header). The block's G groups of
// kTPG = kThreads / G threads each take every G-th row; thread lt of a group owns the vectors
// lt, lt + kTPG, ..., lt + (NV − 1)·kTPG of its row (the order v1's loop visits them), loads
// them all at once (x, and r when fused), and computes the statistics and y from registers.
// With G = 1 every sum is formed in v1's order, so y, h, mean and rstd are bitwise v1's.
template <class T, int V, int NV, int G>
__global__ void __launch_bounds__(kThreads)
    norm_forward_reg_kernel(bool layer, const T* __restrict__ x, const T* __restrict__ res, const T* __restrict__ w,
                            const T* __restrict__ b, compute_t<T> eps, T* __restrict__ y, T* __restrict__ h,
                            compute_t<T>* __restrict__ mean, compute_t<T>* __restrict__ rstd, int64_t rows,
                            int64_t n) {
  using C = compute_t<T>;
  constexpr int kTPG = kThreads / G;
  __shared__ C red[kThreads / 32];
  const int t = threadIdx.x, grp = G == 1 ? 0 : t / kTPG, lt = G == 1 ? t : t % kTPG;
  const int64_t nv = n / V;
  const C inv_n = C(1) / static_cast<C>(n);
  bool own[NV];
#pragma unroll
  for (int i = 0; i < NV; ++i) own[i] = static_cast<int64_t>(i) * kTPG + lt < nv;
  // Every group of the block runs the same number of iterations (the reductions are block-wide
  // barriers when G < 8); a group past the last row computes nothing and writes nothing.
  for (int64_t rb = static_cast<int64_t>(blockIdx.x) * G; rb < rows; rb += static_cast<int64_t>(gridDim.x) * G) {
    const int64_t r = rb + grp;
    const bool live = G == 1 || r < rows;
    Vec<T, V> hv[NV];
    if (live) {
      const T* xr = x + r * n;
      if (res != nullptr) {
        const T* rr = res + r * n;
        Vec<T, V> rv[NV];
#pragma unroll
        for (int i = 0; i < NV; ++i) {
          if (own[i]) {
            const int64_t vi = static_cast<int64_t>(i) * kTPG + lt;
            hv[i] = load_vec<V>(xr, vi);
            rv[i] = load_vec<V>(rr, vi);
          }
        }
        T* hr = h + r * n;
#pragma unroll
        for (int i = 0; i < NV; ++i) {
          if (own[i]) {
#pragma unroll
            for (int k = 0; k < V; ++k) {
              hv[i].v[k] = static_cast<T>(static_cast<C>(hv[i].v[k]) + static_cast<C>(rv[i].v[k]));
            }
            store_vec<V>(hr, static_cast<int64_t>(i) * kTPG + lt, hv[i]);
          }
        }
      } else {
#pragma unroll
        for (int i = 0; i < NV; ++i) {
          if (own[i]) hv[i] = load_vec<V>(xr, static_cast<int64_t>(i) * kTPG + lt);
        }
      }
    }
    C s1 = 0;
    if (live) {
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        if (own[i]) {
#pragma unroll
          for (int k = 0; k < V; ++k) {
            const C v = static_cast<C>(hv[i].v[k]);
            s1 += layer ? v : v * v;
          }
        }
      }
    }
    s1 = group_allreduce_sum<G>(s1, red);
    C mu = 0, rs;
    if (layer) {
      mu = s1 * inv_n;
      C s2 = 0;
      if (live) {
#pragma unroll
        for (int i = 0; i < NV; ++i) {
          if (own[i]) {
#pragma unroll
            for (int k = 0; k < V; ++k) {
              const C d = static_cast<C>(hv[i].v[k]) - mu;
              s2 += d * d;
            }
          }
        }
      }
      s2 = group_allreduce_sum<G>(s2, red);
      rs = C(1) / m_sqrt(s2 * inv_n + eps);
    } else {
      rs = C(1) / m_sqrt(s1 * inv_n + eps);
    }
    if (!live) continue;
    if (lt == 0) {
      rstd[r] = rs;
      if (layer) mean[r] = mu;
    }
    T* yr = y + r * n;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      if (own[i]) {
        const int64_t vi = static_cast<int64_t>(i) * kTPG + lt;
        const Vec<T, V> wv = load_vec<V>(w, vi);
        Vec<T, V> o;
        if (b != nullptr) {
          const Vec<T, V> bv = load_vec<V>(b, vi);
#pragma unroll
          for (int k = 0; k < V; ++k) {
            o.v[k] = static_cast<T>((static_cast<C>(hv[i].v[k]) - mu) * rs * static_cast<C>(wv.v[k]) +
                                    static_cast<C>(bv.v[k]));
          }
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) {
            o.v[k] = static_cast<T>((static_cast<C>(hv[i].v[k]) - mu) * rs * static_cast<C>(wv.v[k]));
          }
        }
        store_vec<V>(yr, vi, o);
      }
    }
  }
}

template <class T, int V>
__global__ void __launch_bounds__(kThreads)
    norm_backward_kernel(bool layer, const T* __restrict__ dy, const T* __restrict__ dh_in, const T* __restrict__ h,
                         const T* __restrict__ w, const compute_t<T>* __restrict__ mean,
                         const compute_t<T>* __restrict__ rstd, T* __restrict__ dh, compute_t<T>* __restrict__ dw_part,
                         compute_t<T>* __restrict__ db_part, int64_t rows, int64_t n, int64_t chunks) {
  using C = compute_t<T>;
  __shared__ C smem[kThreads / 32];
  const int64_t nv = n / V;
  const C inv_n = C(1) / static_cast<C>(n);
  for (int64_t k = blockIdx.x; k < chunks; k += gridDim.x) {
    C* dw = dw_part + k * n;
    C* db = db_part != nullptr ? db_part + k * n : nullptr;
    // Each thread zeroes exactly the columns it accumulates below (vector vi → V columns).
    for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        dw[vi * V + j] = 0;
        if (db != nullptr) db[vi * V + j] = 0;
      }
    }
    const int64_t r_end = min(rows, (k + 1) * kNormRowsPerChunk);
    for (int64_t r = k * kNormRowsPerChunk; r < r_end; ++r) {
      const T* gr = dy + r * n;
      const T* hr = h + r * n;
      const C mu = layer ? mean[r] : C(0), rs = rstd[r];
      C sg = 0, sgx = 0;
      for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
        const Vec<T, V> gv = load_vec<V>(gr, vi), hv = load_vec<V>(hr, vi), wv = load_vec<V>(w, vi);
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const C g = static_cast<C>(gv.v[j]) * static_cast<C>(wv.v[j]);
          sg += g;
          sgx += g * (static_cast<C>(hv.v[j]) - mu) * rs;
        }
      }
      sg = block_allreduce_sum(sg, smem);
      sgx = block_allreduce_sum(sgx, smem);
      const C mg = layer ? sg * inv_n : C(0), mgx = sgx * inv_n;
      const T* di = dh_in != nullptr ? dh_in + r * n : nullptr;
      T* dr = dh + r * n;
      for (int64_t vi = threadIdx.x; vi < nv; vi += blockDim.x) {
        const Vec<T, V> gv = load_vec<V>(gr, vi), hv = load_vec<V>(hr, vi), wv = load_vec<V>(w, vi);
        Vec<T, V> dv;
        if (di != nullptr) dv = load_vec<V>(di, vi);
        Vec<T, V> o;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          const C gy = static_cast<C>(gv.v[j]);
          const C xh = (static_cast<C>(hv.v[j]) - mu) * rs;
          C d = rs * (gy * static_cast<C>(wv.v[j]) - mg - xh * mgx);
          if (di != nullptr) d += static_cast<C>(dv.v[j]);
          o.v[j] = static_cast<T>(d);
          dw[vi * V + j] = fma(gy, xh, dw[vi * V + j]);  // one rounding, as every dw accumulator here
          if (db != nullptr) db[vi * V + j] += gy;
        }
        store_vec<V>(dr, vi, o);
      }
    }
  }
}

// A compute-type value rounded to the storage type: T(x). For bf16 a cvt.rn.bf16.f32 instead
// of bf16::from_float's integer rounding; the same round-to-nearest-even bits, and a NaN still
// takes bf16's own quieting (a select, not a branch), so the result is bitwise T(x) for every
// input.
template <class T, class C>
__device__ __forceinline__ T to_storage(C x) {
  if constexpr (std::is_same_v<T, bf16>) {
    const uint32_t u = __float_as_uint(x);
    const uint16_t rounded = __bfloat16_as_ushort(__float2bfloat16_rn(x));
    const uint16_t quiet_nan = static_cast<uint16_t>((u >> 16) | 0x0040u);  // bf16::from_float's NaN
    bf16 r;
    r.bits = (u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded;
    return r;
  } else {
    return static_cast<T>(x);
  }
}

// One row of the register backwards (norm_backward_reg_kernel, norm_backward_racc_kernel): the
// thread's NV vectors of V elements at vector indices i · kStride + lt (own[i]: in the row; live:
// the thread's group has a row, else it only joins the reduction) are loaded once, Σg and Σg∘x̂
// (g = dy∘w) reduced over the thread's group of TB / G threads, dh written, and acc(i, j, gy,
// x̂) called per element for the caller's dw / db accumulators. inv_n = 1 / n.
// The body was inline in both kernels until 2026-11-27. With it here, the PTX of the measured
// instances (bf16 and f32, G = 1, the default layout) is the same modulo register names, but
// ptxas allocates some instances differently: f32 NV 1 without db 55 → 58 registers, and the
// pair layout's spill 8 → 16 bytes (a review's ptxas comparison).
template <class T, int V, int NV, int G, int TB, class Acc>
__device__ __forceinline__ void norm_backward_row(bool layer, const T* __restrict__ dy, const T* __restrict__ dh_in,
                                                  const T* __restrict__ h, const T* __restrict__ w,
                                                  const compute_t<T>* __restrict__ mean,
                                                  const compute_t<T>* __restrict__ rstd, T* __restrict__ dh,
                                                  int64_t r, int64_t n, compute_t<T> inv_n, int lt,
                                                  const bool (&own)[NV], bool live, compute_t<T>* red, Acc&& acc) {
  using C = compute_t<T>;
  constexpr int kStride = TB / G;
  const T* gr = dy + r * n;
  const T* hr = h + r * n;
  const T* di = dh_in != nullptr ? dh_in + r * n : nullptr;
  Vec<T, V> gv[NV], hv[NV], dv[NV];
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    if (live && own[i]) {
      const int64_t vi = static_cast<int64_t>(i) * kStride + lt;
      gv[i] = load_vec<V>(gr, vi);
      hv[i] = load_vec<V>(hr, vi);
      if (di != nullptr) dv[i] = load_vec<V>(di, vi);
    }
  }
  const C mu = live && layer ? mean[r] : C(0), rs = live ? rstd[r] : C(0);
  C sg = 0, sgx = 0;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    if (live && own[i]) {
      const Vec<T, V> wv = load_vec<V>(w, static_cast<int64_t>(i) * kStride + lt);
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const C g = static_cast<C>(gv[i].v[j]) * static_cast<C>(wv.v[j]);
        sg += g;
        sgx += g * (static_cast<C>(hv[i].v[j]) - mu) * rs;
      }
    }
  }
  group_allreduce_sum2<G, C, TB>(sg, sgx, red);
  const C mg = layer ? sg * inv_n : C(0), mgx = sgx * inv_n;
  T* dr = dh + r * n;
#pragma unroll
  for (int i = 0; i < NV; ++i) {
    if (live && own[i]) {
      const int64_t vi = static_cast<int64_t>(i) * kStride + lt;
      const Vec<T, V> wv = load_vec<V>(w, vi);  // (C,): L1/L2-resident, not held across the reduction
      Vec<T, V> o;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const C gy = static_cast<C>(gv[i].v[j]);
        const C xh = (static_cast<C>(hv[i].v[j]) - mu) * rs;
        C d = rs * (gy * static_cast<C>(wv.v[j]) - mg - xh * mgx);
        if (di != nullptr) d += static_cast<C>(dv[i].v[j]);
        o.v[j] = to_storage<T>(d);
        acc(i, j, gy, xh);
      }
      store_vec<V>(dr, vi, o);
    }
  }
}

// Register-resident backward (v2, see the header). The block's G groups of kTPG = kThreads / G
// threads each take every G-th row of the chunk (G > 1 for short rows, so that most threads
// work); NV: vectors of V elements per thread per row. kDb: db_part is written (LayerNorm with
// a bias): a template parameter, so that the loop over elements has no branch on it. Dynamic
// shared memory: NV · V · kThreads compute-type accumulators for dw, as many again for db when
// kDb; element (i, j) of thread t at [(i · V + j) · kThreads + t] (consecutive threads,
// consecutive words: no bank conflicts), private to the thread until the chunk's end sums the
// G groups in order.
// Why (H100, 2026-11-27, ncu of the bf16 NV = 2 instance): 64% of the issue slots busy, ~840
// instructions per thread and row; the PTX had a branch per element on db_part (which also
// split the loop into basic blocks of one element) and bf16's integer rounding per stored
// element. The arithmetic and its order are unchanged: dh, dw and db are bitwise as before
// (checked under the emulation, 132 cases, before and after).
// kPair (SOMNUS_NORM_BWD=pair, with kDb only; 2026-11-27, not yet run on a GPU): dw and db of
// a slot side by side (AccWB), one 8-byte (f32) / 16-byte (f64) shared access each way instead
// of two; the same arithmetic in the same order. ptxas spills 16 bytes (32 reloaded) in the
// bf16 NV = 2 instance at its 64 registers since the row body moved into norm_backward_row
// (8 / 4 with the body inline, as at 9b8fd57; a review, 2026-11-27); the default layout does
// not spill. Whether that costs more than the 16 shared accesses per row and thread it saves
// is for a GPU to say (bench rows layer_norm_bwd_pair/*); if pair comes close, try its body
// inline again first.
template <class C>
struct alignas(2 * sizeof(C)) AccWB {
  C w, b;
};

template <class T, int V, int NV, int G, bool kDb, bool kPair = false>
__global__ void __launch_bounds__(kThreads, NV <= 2 ? 4 : 2)
    norm_backward_reg_kernel(bool layer, const T* __restrict__ dy, const T* __restrict__ dh_in,
                             const T* __restrict__ h, const T* __restrict__ w, const compute_t<T>* __restrict__ mean,
                             const compute_t<T>* __restrict__ rstd, T* __restrict__ dh,
                             compute_t<T>* __restrict__ dw_part, compute_t<T>* __restrict__ db_part, int64_t rows,
                             int64_t n, int64_t chunks) {
  using C = compute_t<T>;
  constexpr int kTPG = kThreads / G;
  extern __shared__ __align__(16) unsigned char norm_bwd_smem[];
  __shared__ C red[2 * (kThreads / 32)];
  static_assert(kDb || !kPair, "the pair layout holds dw and db");
  C* acc_w = reinterpret_cast<C*>(norm_bwd_smem);
  C* acc_b = acc_w + NV * V * kThreads;                          // kDb && !kPair
  AccWB<C>* acc_p = reinterpret_cast<AccWB<C>*>(norm_bwd_smem);  // kPair
  const int t = threadIdx.x, grp = G == 1 ? 0 : t / kTPG, lt = G == 1 ? t : t % kTPG;
  const int64_t nv = n / V;
  const C inv_n = C(1) / static_cast<C>(n);
  bool own[NV];
#pragma unroll
  for (int i = 0; i < NV; ++i) own[i] = static_cast<int64_t>(i) * kTPG + lt < nv;
  for (int64_t k = blockIdx.x; k < chunks; k += gridDim.x) {
#pragma unroll
    for (int i = 0; i < NV; ++i) {
#pragma unroll
      for (int j = 0; j < V; ++j) {
        if constexpr (kPair) {
          acc_p[(i * V + j) * kThreads + t] = AccWB<C>{C(0), C(0)};
        } else {
          acc_w[(i * V + j) * kThreads + t] = C(0);
          if constexpr (kDb) acc_b[(i * V + j) * kThreads + t] = C(0);
        }
      }
    }
    const int64_t r0 = k * kNormRowsPerChunk, r_end = min(rows, r0 + kNormRowsPerChunk);
    for (int64_t rb = r0; rb < r_end; rb += G) {  // the same trip count for every group
      const int64_t r = rb + grp;
      const bool live = G == 1 || r < r_end;  // a group past the chunk's end still joins the reduction
      norm_backward_row<T, V, NV, G, kThreads>(layer, dy, dh_in, h, w, mean, rstd, dh, r, n, inv_n, lt, own, live, red,
                                               [&](int i, int j, C gy, C xh) {
        if constexpr (kPair) {
          AccWB<C> a = acc_p[(i * V + j) * kThreads + t];
          a.w = fma(gy, xh, a.w);
          a.b += gy;
          acc_p[(i * V + j) * kThreads + t] = a;
        } else {
          acc_w[(i * V + j) * kThreads + t] = fma(gy, xh, acc_w[(i * V + j) * kThreads + t]);
          if constexpr (kDb) acc_b[(i * V + j) * kThreads + t] += gy;
        }
      });
    }
    // The chunk's partial row, written once.
    C* dw = dw_part + k * n;
    C* db = kDb ? db_part + k * n : nullptr;
    if constexpr (G == 1) {  // the thread's own columns
#pragma unroll
      for (int i = 0; i < NV; ++i) {
        if (own[i]) {
          const int64_t c0 = (static_cast<int64_t>(i) * kThreads + t) * V;
#pragma unroll
          for (int j = 0; j < V; ++j) {
            if constexpr (kPair) {
              const AccWB<C> a = acc_p[(i * V + j) * kThreads + t];
              dw[c0 + j] = a.w;
              db[c0 + j] = a.b;
            } else {
              dw[c0 + j] = acc_w[(i * V + j) * kThreads + t];
              if constexpr (kDb) db[c0 + j] = acc_b[(i * V + j) * kThreads + t];
            }
          }
        }
      }
    } else {  // column c = vi · V + j with vi = i · kTPG + l: the G groups' sums in group order
      __syncthreads();  // every group's accumulators are complete
      for (int64_t c = t; c < n; c += kThreads) {
        const int64_t vi = c / V;
        const int j = static_cast<int>(c % V), i = static_cast<int>(vi / kTPG), l = static_cast<int>(vi % kTPG);
        const int base = (i * V + j) * kThreads + l;
        if constexpr (kPair) {
          AccWB<C> a = acc_p[base];
#pragma unroll
          for (int q = 1; q < G; ++q) {
            a.w += acc_p[base + q * kTPG].w;
            a.b += acc_p[base + q * kTPG].b;
          }
          dw[c] = a.w;
          db[c] = a.b;
        } else {
          C sw = acc_w[base];
#pragma unroll
          for (int q = 1; q < G; ++q) sw += acc_w[base + q * kTPG];
          dw[c] = sw;
          if constexpr (kDb) {
            C sb = acc_b[base];
#pragma unroll
            for (int q = 1; q < G; ++q) sb += acc_b[base + q * kTPG];
            db[c] = sb;
          }
        }
      }
      __syncthreads();  // the next chunk zeroes the accumulators read above
    }
  }
}

// Register-accumulator backward (SOMNUS_NORM_BWD=racc; 2026-11-28, not yet run on a GPU). The
// default kernel keeps dw/db in shared memory because 16 elements per thread (bf16, C = 4096,
// 256 threads) would need 32 more registers for them. Here a block of TB = 256, 512 or 1024
// threads (a template parameter) takes one row at a time, each thread NV vectors of V elements
// with NV · V = 8 (bf16 NV 1, f32 NV 2): 8 dw and 8 db accumulators in registers, no shared
// memory accesses per element, and the same 1024 threads per SM at ≤ 64 registers (bf16, C =
// 4096: 2 blocks of 512). Per element and row that removes a shared load and store for dw and
// for db: 4 of the ~52 instructions per element (ncu, run 6: ~840 per thread and row of 16).
// Thread t owns the vectors t, t + TB, ... of every row. For any TB, dw and db are bitwise the
// default kernel's: each thread adds its columns' products in row order as the default does,
// dw with one rounding per row (an explicit fma in every backward here: left to nvcc, the
// contraction of `acc += gy * xh` differed between the shared-memory accumulators, always FFMA,
// and these registers, where the branch on dh_in split the loop and left 7 of 8 products as
// FMUL + FADD — seen in the SASS by a review, 2026-11-27). dh's row sums Σg, Σg∘x̂ are formed
// over TB threads: at TB = 256 the default's layout (G = 1), bitwise under the emulation (which
// never contracts; on nvcc not guaranteed), otherwise a different grouping, checked against f64.
// The chunks take 1.94 waves at 2 blocks per SM (264 slots, 512 chunks of a 16384-row batch)
// instead of one at 4 (528 slots); at 32 rows a chunk the tail is ~3% of the kernel, as before.
template <class T, int V, int NV, int TB, bool kDb>
__global__ void __launch_bounds__(TB, 1024 / TB)
    norm_backward_racc_kernel(bool layer, const T* __restrict__ dy, const T* __restrict__ dh_in,
                              const T* __restrict__ h, const T* __restrict__ w, const compute_t<T>* __restrict__ mean,
                              const compute_t<T>* __restrict__ rstd, T* __restrict__ dh,
                              compute_t<T>* __restrict__ dw_part, compute_t<T>* __restrict__ db_part, int64_t rows,
                              int64_t n, int64_t chunks) {
  using C = compute_t<T>;
  __shared__ C red[2 * (TB / 32)];
  const int t = threadIdx.x;
  const int64_t nv = n / V;
  const C inv_n = C(1) / static_cast<C>(n);
  bool own[NV];
#pragma unroll
  for (int i = 0; i < NV; ++i) own[i] = static_cast<int64_t>(i) * TB + t < nv;
  for (int64_t k = blockIdx.x; k < chunks; k += gridDim.x) {
    C aw[NV][V], ab[NV][V];
#pragma unroll
    for (int i = 0; i < NV; ++i) {
#pragma unroll
      for (int j = 0; j < V; ++j) aw[i][j] = ab[i][j] = C(0);
    }
    const int64_t r0 = k * kNormRowsPerChunk, r_end = min(rows, r0 + kNormRowsPerChunk);
    for (int64_t r = r0; r < r_end; ++r) {
      norm_backward_row<T, V, NV, 1, TB>(layer, dy, dh_in, h, w, mean, rstd, dh, r, n, inv_n, t, own, true, red,
                                         [&](int i, int j, C gy, C xh) {
        aw[i][j] = fma(gy, xh, aw[i][j]);  // explicit: see the comment above the kernel
        if constexpr (kDb) ab[i][j] += gy;
      });
    }
    // The chunk's partial row: the thread's own columns, written once.
    C* dwr = dw_part + k * n;
#pragma unroll
    for (int i = 0; i < NV; ++i) {
      if (own[i]) {
        const int64_t c0 = (static_cast<int64_t>(i) * TB + t) * V;
#pragma unroll
        for (int j = 0; j < V; ++j) {
          dwr[c0 + j] = aw[i][j];
          if constexpr (kDb) db_part[k * n + c0 + j] = ab[i][j];
        }
      }
    }
  }
}

// 16-byte vectors when every row start is aligned, else scalar.
template <class T, class F>
void with_vec(int64_t n, std::initializer_list<const void*> ptrs, F&& f) {
  constexpr int V = 16 / sizeof(T);
  bool ok = n % V == 0;
  for (const void* p : ptrs) ok = ok && (p == nullptr || aligned_to(p, 16));
  if (ok) {
    f(std::integral_constant<int, V>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

template <class T>
const T* ptr_or_null(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr;
}

// SOMNUS_NORM_FWD=v1 / SOMNUS_NORM_BWD=v1 select the previous forward / backward kernel,
// SOMNUS_NORM_BWD=pair the backward's pair layout and SOMNUS_NORM_BWD=racc its register
// accumulators (read on every call, so that tests and benchmarks can switch them).
bool env_is(const char* name, const char* value) {
  const char* e = std::getenv(name);
  return e != nullptr && std::strcmp(e, value) == 0;
}

// The register kernels' shape for rows of nv vectors: calls f(NV, G) with NV vectors per thread
// and G row groups per block, or returns false when a row needs more than 4 vectors per thread
// (the caller falls back to v1). Short rows (at most kThreads / 2 vectors) take G = 2, 4 or 8
// rows at once (G = 8: a warp per row) so that most threads work.
template <class F>
bool with_reg_shape(int64_t nv, F&& f) {
  using One = std::integral_constant<int, 1>;
  const int64_t per_thread = (nv + kThreads - 1) / kThreads;
  if (nv <= kThreads / 8) {
    f(One{}, std::integral_constant<int, 8>{});
  } else if (nv <= kThreads / 4) {
    f(One{}, std::integral_constant<int, 4>{});
  } else if (nv <= kThreads / 2) {
    f(One{}, std::integral_constant<int, 2>{});
  } else if (per_thread <= 1) {
    f(One{}, One{});
  } else if (per_thread <= 2) {
    f(std::integral_constant<int, 2>{}, One{});
  } else if (per_thread <= 4) {
    f(std::integral_constant<int, 4>{}, One{});
  } else {
    return false;
  }
  return true;
}

// The register-accumulator backward's shape (SOMNUS_NORM_BWD=racc) for rows of nv vectors of V
// elements of T: calls f(NV, TB) with NV = 8 / V vectors per thread and TB threads per block,
// or returns false where it does not apply (the caller takes the default kernel): scalar rows,
// 8-byte types, short rows (at most kThreads / 2 vectors, which the default splits into row
// groups), and rows of more than 1024 · NV vectors (bf16 / f32: 8192 elements).
template <class T, int V, class F>
bool with_racc_shape(int64_t nv, F&& f) {
  if constexpr (V == 1 || sizeof(T) > 4) {
    return false;
  } else {
    constexpr int NV = 8 / V;
    const int64_t threads = (nv + NV - 1) / NV;
    if (nv <= kThreads / 2) return false;
    if (threads <= 256) {
      f(std::integral_constant<int, NV>{}, std::integral_constant<int, 256>{});
    } else if (threads <= 512) {
      f(std::integral_constant<int, NV>{}, std::integral_constant<int, 512>{});
    } else if (threads <= 1024) {
      f(std::integral_constant<int, NV>{}, std::integral_constant<int, 1024>{});
    } else {
      return false;
    }
    return true;
  }
}

}  // namespace

void norm_forward(bool layer, const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                  double eps, const Tensor& y, const Tensor& h, const Tensor& mean, const Tensor& rstd) {
  set_device(y);
  const int64_t n = x.size(-1), rows = x.numel() / n;
  visit_floating(x.dtype(), layer ? "layer_norm" : "rms_norm", [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T *xp = ptr_or_null<T>(x), *rp = ptr_or_null<T>(residual), *wp = ptr_or_null<T>(weight),
            *bp = ptr_or_null<T>(bias);
    T* yp = static_cast<T*>(y.data_ptr());
    T* hp = h.defined() ? static_cast<T*>(h.data_ptr()) : nullptr;
    C* mp = mean.defined() ? static_cast<C*>(mean.data_ptr()) : nullptr;
    C* sp = static_cast<C*>(rstd.data_ptr());
    const bool v1 = env_is("SOMNUS_NORM_FWD", "v1");
    with_vec<T>(n, {xp, rp, wp, bp, yp, hp}, [&](auto vw) {
      constexpr int V = decltype(vw)::value;
      const bool reg = !v1 && with_reg_shape(n / V, [&](auto nvc, auto gc) {
        constexpr int NV = decltype(nvc)::value, G = decltype(gc)::value;
        norm_forward_reg_kernel<T, V, NV, G><<<grid_for((rows + G - 1) / G, 1), kThreads>>>(
            layer, xp, rp, wp, bp, static_cast<C>(eps), yp, hp, mp, sp, rows, n);
        CUDA_CHECK_LAUNCH();
      });
      if (!reg) {
        norm_forward_kernel<T, V><<<grid_for(rows, 1), kThreads>>>(layer, xp, rp, wp, bp, static_cast<C>(eps), yp, hp,
                                                                    mp, sp, rows, n);
        CUDA_CHECK_LAUNCH();
      }
    });
  });
}

void norm_backward(bool layer, const Tensor& dy, const Tensor& dh_in, const Tensor& h, const Tensor& weight,
                   const Tensor& mean, const Tensor& rstd, const Tensor& dh_out, const Tensor& dw_partial,
                   const Tensor& db_partial) {
  set_device(dh_out);
  const int64_t n = h.size(-1), rows = h.numel() / n;
  const int64_t chunks = (rows + kNormRowsPerChunk - 1) / kNormRowsPerChunk;
  visit_floating(h.dtype(), layer ? "layer_norm_backward" : "rms_norm_backward", [&](auto tag) {
    using T = decltype(tag);
    using C = compute_t<T>;
    const T *gp = ptr_or_null<T>(dy), *dip = ptr_or_null<T>(dh_in), *hp = ptr_or_null<T>(h),
            *wp = ptr_or_null<T>(weight);
    const C* mp = mean.defined() ? static_cast<const C*>(mean.data_ptr()) : nullptr;
    const C* sp = static_cast<const C*>(rstd.data_ptr());
    T* dp = static_cast<T*>(dh_out.data_ptr());
    C* dwp = static_cast<C*>(dw_partial.data_ptr());
    C* dbp = db_partial.defined() ? static_cast<C*>(db_partial.data_ptr()) : nullptr;
    const bool v1 = env_is("SOMNUS_NORM_BWD", "v1"), pair = env_is("SOMNUS_NORM_BWD", "pair"),
               racc = env_is("SOMNUS_NORM_BWD", "racc");
    with_vec<T>(n, {gp, dip, hp, wp, dp}, [&](auto vw) {
      constexpr int V = decltype(vw)::value;
      const bool took_racc = racc && with_racc_shape<T, V>(n / V, [&](auto nvc, auto tbc) {
        constexpr int NV = decltype(nvc)::value, TB = decltype(tbc)::value;
        const auto kernel = dbp != nullptr ? norm_backward_racc_kernel<T, V, NV, TB, true>
                                           : norm_backward_racc_kernel<T, V, NV, TB, false>;
        kernel<<<grid_for(chunks, 1), TB>>>(layer, gp, dip, hp, wp, mp, sp, dp, dwp, dbp, rows, n, chunks);
        CUDA_CHECK_LAUNCH();
      });
      if (took_racc) return;
      const bool reg = !v1 && with_reg_shape(n / V, [&](auto nvc, auto gc) {
        constexpr int NV = decltype(nvc)::value, G = decltype(gc)::value;
        const auto launch = [&](auto kernel, size_t smem) {
          if (smem > 48 * 1024) {
            CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
          }
          kernel<<<grid_for(chunks, 1), kThreads, smem>>>(layer, gp, dip, hp, wp, mp, sp, dp, dwp, dbp, rows, n, chunks);
          CUDA_CHECK_LAUNCH();
        };
        const size_t acc_bytes = size_t{NV} * V * kThreads * sizeof(C);
        if (dbp != nullptr && pair) {
          launch(norm_backward_reg_kernel<T, V, NV, G, true, true>, 2 * acc_bytes);
        } else if (dbp != nullptr) {
          launch(norm_backward_reg_kernel<T, V, NV, G, true>, 2 * acc_bytes);
        } else {
          launch(norm_backward_reg_kernel<T, V, NV, G, false>, acc_bytes);
        }
      });
      if (!reg) {
        norm_backward_kernel<T, V><<<grid_for(chunks, 1), kThreads>>>(layer, gp, dip, hp, wp, mp, sp, dp, dwp, dbp,
                                                                       rows, n, chunks);
        CUDA_CHECK_LAUNCH();
      }
    });
  });
}

}  // namespace somnus::kernels::cuda
