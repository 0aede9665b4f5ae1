// Reductions over one dim on CUDA: sum, mean, max, and argmax (first index on ties; NaN
// counts as the maximum, as in torch). x is viewed as (outer, n, inner) around the reduced
// dim; out holds outer·inner values, out[o·inner + i].
//
// Algorithm (v2; the default for rows and whole tensors — columns with many outputs take v1's
// kernel by default, see reduce_version), by shape:
//   inner == 1, n ≤ 512    one warp per row (cub::WarpReduce), 8 rows per 256-thread block.
//   inner == 1, n > 512    a 256-thread block per (row, chunk): thread t takes the groups of
//                          V = 16 / sizeof(T) adjacent elements g = t, t + 256, ... (one 16-byte
//                          load each where the row is contiguous and aligned, else V scalar
//                          loads in the same order), 4 groups in flight; a warp butterfly, then
//                          the 8 warps in order. Rows are cut into chunks when there are few
//                          (rows < 2048, n ≥ 32768): chunks of ≥ 16384 elements, ~4096 blocks
//                          in all; a second kernel (one block per row) sums the chunk partials
//                          in a fixed tree.
//   inner > 1              a 32×8 block per (tile of 32·V adjacent outputs, segment of the
//                          reduced dim): threadIdx.x takes V adjacent outputs (one 16-byte load
//                          per row where the inner dim is one aligned unit-stride run, else
//                          V = 1), threadIdx.y the rows j ≡ y (mod 8) of the segment, 4 rows in
//                          flight; the 8 partials are combined in y order through shared memory.
//                          When there are few tiles (< 1024) the reduced dim is cut into
//                          segments of ≥ 32 rows (a multiple of 8), ~2048 blocks in all; their
//                          partials go to a scratch tensor (segs, outputs) and a second kernel
//                          sums them in segment order, one thread per output. The same kernels
//                          serve inner == 1 when the reduced dim is strided and the outer dim is
//                          not (a transposed view), so reads stay coalesced.
// Every summation order is fixed by the shape (and dtype) alone, never by timing, alignment or
// the GPU model, so results are bitwise reproducible: the plans (chunks, segments) use the
// dtype's nominal V, and the scalar fallbacks visit elements in the vector paths' order (a
// column's order does not depend on V at all). Accumulates in f32 (f64 for f64); the CPU twin
// uses f64.
// v1 (SOMNUS_REDUCE=v1, read on every call): the previous kernels, scalar loads: a 512-thread
// cub::BlockReduce block per row (chunks only for rows < 128, n ≥ 65536, combined by one thread
// per row), and for inner > 1 one 32×16 block per 32 outputs walking the whole reduced dim.
//
// Cost: numel reads, outer·inner writes, ~1 FLOP per element: memory bound. Measured on an H100
// (2026-11-27, bench/bench_kernels_cuda.cpp, which counts the reads only; ratio to the copy
// bandwidth of the same run; v1 → v2, the default's kernel marked *):
//   sum_lastdim 8192² f32   0.99 → 1.01*        bf16  0.66 → 1.04*
//   sum_all     8192² f32   0.80 → 0.93*        bf16  0.60 → 0.79*
//   sum_dim0    8192² f32   0.99* → 0.91        bf16  0.88* → 0.84
//   sum_dim0 512×4096 f32   9.0* → 13.0 µs (v2 predicted 5–7 µs: its 512 blocks of 32 rows and
//                           the second launch cost more than v1's 128 blocks of dependent loads)
//   argmax 2048×50304       f32 0.97, bf16 0.80 (v2's row kernel)
// The v2 predictions for the rows (0.95–1.0 f32, ~0.9 bf16) held; for the columns they did not.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include <cub/block/block_reduce.cuh>
#include <cub/warp/warp_reduce.cuh>

#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"

namespace somnus::kernels::cuda {

namespace {

// ---------------------------------------------------------------- reducers
// init() is the identity, make(v, j) lifts element j, operator() combines (commutative and
// associative), store() finalises into the output.

template <class T>
struct SumReducer {
  using Acc = compute_t<T>;
  using Out = T;
  bool mean;
  int64_t n;
  __device__ __forceinline__ Acc init() const { return Acc(0); }
  __device__ __forceinline__ Acc make(Acc v, int64_t) const { return v; }
  __device__ __forceinline__ Acc operator()(const Acc& a, const Acc& b) const { return a + b; }
  __device__ __forceinline__ void store(Out* out, int64_t i, const Acc& a) const {
    out[i] = static_cast<T>(mean ? a / static_cast<Acc>(n) : a);
  }
};

template <class T>
struct MaxReducer {
  using Acc = compute_t<T>;
  using Out = T;
  __device__ __forceinline__ Acc init() const { return m_neg_inf<Acc>(); }
  __device__ __forceinline__ Acc make(Acc v, int64_t) const { return v; }
  __device__ __forceinline__ Acc operator()(const Acc& a, const Acc& b) const {
    return (m_isnan(a) || a >= b) ? a : b;
  }
  __device__ __forceinline__ void store(Out* out, int64_t i, const Acc& a) const { out[i] = static_cast<T>(a); }
};

template <class A>
struct ValueIndex {
  A v;
  int64_t i;
};

template <class T>
struct ArgmaxReducer {
  using Acc = ValueIndex<compute_t<T>>;
  using Out = int64_t;
  __device__ __forceinline__ Acc init() const { return {m_neg_inf<compute_t<T>>(), INT64_MAX}; }
  __device__ __forceinline__ Acc make(compute_t<T> v, int64_t j) const { return {v, j}; }
  __device__ __forceinline__ Acc operator()(const Acc& a, const Acc& b) const {
    const bool an = m_isnan(a.v), bn = m_isnan(b.v);
    if (an || bn) {
      if (an && bn) return a.i <= b.i ? a : b;
      return an ? a : b;
    }
    if (a.v > b.v) return a;
    if (b.v > a.v) return b;
    return a.i <= b.i ? a : b;  // first occurrence on ties
  }
  __device__ __forceinline__ void store(Out* out, int64_t i, const Acc& a) const { out[i] = a.i; }
};

// ---------------------------------------------------------------- kernels (v1)

constexpr int kWarpRowsPerBlock = 8;  // 256 threads
constexpr int kBlockThreads = 512;
constexpr int kColX = 32, kColY = 16;

template <class T, class R>
__global__ void reduce_rows_warp_kernel(const T* x, StridedLayout<1> outer, int64_t sn, int64_t n, int64_t rows, R r,
                                        typename R::Out* out) {
  using Acc = typename R::Acc;
  using WarpReduce = cub::WarpReduce<Acc>;
  __shared__ typename WarpReduce::TempStorage temp[kWarpRowsPerBlock];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t row = blockIdx.x * static_cast<int64_t>(kWarpRowsPerBlock) + warp; row < rows;
       row += static_cast<int64_t>(gridDim.x) * kWarpRowsPerBlock) {
    int64_t off[1];
    outer.offsets(row, off);
    const T* base = x + off[0];
    Acc acc = r.init();
    for (int64_t j = lane; j < n; j += 32) acc = r(acc, r.make(load_c(base + j * sn), j));
    acc = WarpReduce(temp[warp]).Reduce(acc, r);
    if (lane == 0) r.store(out, row, acc);
    __syncwarp();
  }
}

// One block per (row, chunk). With splits == 1 it writes the final value, else the partial.
template <class T, class R>
__global__ void reduce_rows_block_kernel(const T* x, StridedLayout<1> outer, int64_t sn, int64_t n, int64_t rows,
                                         int64_t splits, int64_t chunk, R r, typename R::Acc* partial,
                                         typename R::Out* out) {
  using Acc = typename R::Acc;
  using BlockReduce = cub::BlockReduce<Acc, kBlockThreads>;
  __shared__ typename BlockReduce::TempStorage temp;
  for (int64_t v = blockIdx.x; v < rows * splits; v += gridDim.x) {
    const int64_t row = v / splits, s = v % splits;
    const int64_t j0 = s * chunk, j1 = min(n, j0 + chunk);
    int64_t off[1];
    outer.offsets(row, off);
    const T* base = x + off[0];
    Acc acc = r.init();
    for (int64_t j = j0 + threadIdx.x; j < j1; j += kBlockThreads) acc = r(acc, r.make(load_c(base + j * sn), j));
    acc = BlockReduce(temp).Reduce(acc, r);
    if (threadIdx.x == 0) {
      if (splits == 1) {
        r.store(out, row, acc);
      } else {
        partial[v] = acc;
      }
    }
    __syncthreads();  // temp is reused by the next row
  }
}

// Combines each row's chunk partials in chunk order.
template <class R>
__global__ void reduce_partials_kernel(const typename R::Acc* partial, int64_t rows, int64_t splits, R r,
                                       typename R::Out* out) {
  SOMNUS_GRID_STRIDE(row, rows) {
    typename R::Acc acc = partial[row * splits];
    for (int64_t s = 1; s < splits; ++s) acc = r(acc, partial[row * splits + s]);
    r.store(out, row, acc);
  }
}

template <class T, class R>
__global__ void reduce_cols_kernel(const T* x, StridedLayout<1> outer, StridedLayout<1> inner, int64_t sn,
                                   int64_t n, int64_t outer_n, int64_t inner_n, R r, typename R::Out* out) {
  using Acc = typename R::Acc;
  __shared__ Acc partial[kColY][kColX];
  const int64_t tiles = (inner_n + kColX - 1) / kColX;
  for (int64_t t = blockIdx.x; t < outer_n * tiles; t += gridDim.x) {
    const int64_t o = t / tiles, i = (t % tiles) * kColX + threadIdx.x;
    const bool valid = i < inner_n;
    Acc acc = r.init();
    if (valid) {
      int64_t oo[1], io[1];
      outer.offsets(o, oo);
      inner.offsets(i, io);
      const T* base = x + oo[0] + io[0];
      // Unrolled 16 deep (2026-11-27): the loads do not depend on acc, so 16 are in flight per
      // thread; the fold stays in j order (bitwise as before). nvcc's own unroll was 4: 8 KiB
      // in flight per 512-thread block, and the (512, 4096) f32 sum of the norm backward's
      // partials (128 blocks) ran at 1.08 TB/s, latency-bound (ncu, H100).
#pragma unroll 16
      for (int64_t j = threadIdx.y; j < n; j += kColY) acc = r(acc, r.make(load_c(base + j * sn), j));
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && valid) {
      Acc a = partial[0][threadIdx.x];
#pragma unroll
      for (int y = 1; y < kColY; ++y) a = r(a, partial[y][threadIdx.x]);
      r.store(out, o * inner_n + i, a);
    }
    __syncthreads();  // partial is reused by the next tile
  }
}

// ---------------------------------------------------------------- kernels (v2)

constexpr int kRowThreads = 256, kRowUnroll = 4;
constexpr int kColsY = 8, kColsThreads = 32 * kColsY, kColsUnroll = 4;
constexpr int kSegUnroll = 8;

// A shuffle of any reducer accumulator (ValueIndex in two).
template <class A>
__device__ __forceinline__ A shfl_xor_acc(const A& v, int m) {
  return __shfl_xor_sync(0xffffffffu, v, m);
}
template <class A>
__device__ __forceinline__ ValueIndex<A> shfl_xor_acc(const ValueIndex<A>& v, int m) {
  return {__shfl_xor_sync(0xffffffffu, v.v, m), __shfl_xor_sync(0xffffffffu, v.i, m)};
}

// Reduces a 1-D block's values in a fixed order: a butterfly per warp, then thread 0 folds the
// warps' results in warp order. The result is valid in thread 0; warp_part (kThreads / 32) may
// be reused only after a __syncthreads.
template <int kThreads, class R>
__device__ __forceinline__ typename R::Acc block_reduce_ordered(typename R::Acc a, const R& r,
                                                                typename R::Acc* warp_part) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) a = r(a, shfl_xor_acc(a, o));
  if (threadIdx.x % 32 == 0) warp_part[threadIdx.x / 32] = a;
  __syncthreads();
  if (threadIdx.x == 0) {
    a = warp_part[0];
#pragma unroll
    for (int w = 1; w < kThreads / 32; ++w) a = r(a, warp_part[w]);
  }
  return a;
}

// Group g of a row: its elements g·V … g·V + V − 1 in the compute type, one aligned 16-byte
// load when kVec (unit stride), else V scalar loads (same values, same order).
template <int V, bool kVec, class T>
__device__ __forceinline__ void load_group(const T* base, int64_t g, int64_t sn, compute_t<T> (&v)[V]) {
  if constexpr (kVec) {
    const Vec<T, V> q = load_vec<V>(base, g);
#pragma unroll
    for (int e = 0; e < V; ++e) v[e] = static_cast<compute_t<T>>(q.v[e]);
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) v[e] = load_c(base + (g * V + e) * sn);
  }
}

// One block per (row, chunk) of rows of n elements at stride sn (grid: rows × chunks; no
// launch bounds: with them ptxas spills on sm_80); chunk is a multiple of V. Thread t folds
// groups j0 / V + t, + kRowThreads, ... in order (kRowUnroll loads in flight), then the row's
// last n % V elements (in the chunk that ends the row, one per thread); then
// block_reduce_ordered. splits == 1: writes the final value, else partial[row · splits + chunk].
template <class T, class R, int V, bool kVec>
__global__ void reduce_rows_vec_kernel(const T* x, StridedLayout<1> outer, int64_t sn, int64_t n, int64_t rows,
                                       int64_t splits, int64_t chunk, R r, typename R::Acc* partial,
                                       typename R::Out* out) {
  using Acc = typename R::Acc;
  using C = compute_t<T>;
  __shared__ Acc warp_part[kRowThreads / 32];
  const int64_t s = blockIdx.y;  // the chunk
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t j0 = s * chunk, j1 = min(n, j0 + chunk);
    int64_t off[1];
    outer.offsets(row, off);
    const T* base = x + off[0];
    const int64_t g1 = j1 / V;  // groups [j0 / V, g1) are whole
    Acc acc = r.init();
    int64_t g = j0 / V + threadIdx.x;
    for (; g + (kRowUnroll - 1) * kRowThreads < g1; g += kRowUnroll * kRowThreads) {
      C v[kRowUnroll][V];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) load_group<V, kVec>(base, g + u * kRowThreads, sn, v[u]);
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) {
#pragma unroll
        for (int e = 0; e < V; ++e) acc = r(acc, r.make(v[u][e], (g + u * kRowThreads) * V + e));
      }
    }
    for (; g < g1; g += kRowThreads) {
      C v[V];
      load_group<V, kVec>(base, g, sn, v);
#pragma unroll
      for (int e = 0; e < V; ++e) acc = r(acc, r.make(v[e], g * V + e));
    }
    if (threadIdx.x < j1 - g1 * V) {
      const int64_t j = g1 * V + threadIdx.x;
      acc = r(acc, r.make(load_c(base + j * sn), j));
    }
    acc = block_reduce_ordered<kRowThreads>(acc, r, warp_part);
    if (threadIdx.x == 0) {
      if (splits == 1) {
        r.store(out, row, acc);
      } else {
        partial[row * splits + s] = acc;
      }
    }
    __syncthreads();  // warp_part is reused by the next row
  }
}

// Combines each row's chunk partials (rows, splits): thread t folds chunks t, t + kRowThreads,
// ... in order (kRowUnroll loads in flight), then block_reduce_ordered. One block per row.
template <class R>
__global__ void __launch_bounds__(kRowThreads)
    reduce_chunks_kernel(const typename R::Acc* partial, int64_t rows, int64_t splits, R r, typename R::Out* out) {
  using Acc = typename R::Acc;
  __shared__ Acc warp_part[kRowThreads / 32];
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const Acc* p = partial + row * splits;
    Acc acc = r.init();
    int64_t s = threadIdx.x;
    for (; s + (kRowUnroll - 1) * kRowThreads < splits; s += kRowUnroll * kRowThreads) {
      Acc v[kRowUnroll];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) v[u] = p[s + u * kRowThreads];
#pragma unroll
      for (int u = 0; u < kRowUnroll; ++u) acc = r(acc, v[u]);
    }
    for (; s < splits; s += kRowThreads) acc = r(acc, p[s]);
    acc = block_reduce_ordered<kRowThreads>(acc, r, warp_part);
    if (threadIdx.x == 0) r.store(out, row, acc);
    __syncthreads();
  }
}

// A (32, kColsY) block per (tile of 32·V adjacent outputs, segment [s·seg_len, +seg_len) of the
// reduced dim); grid: tiles × segments. Thread (x, y) folds, for its V outputs, rows j0 + y, + kColsY, ... in order
// (kColsUnroll loads in flight); the kColsY partials of each output are then folded in y order.
// V > 1 needs the inner dim as one unit-stride run with inner_n, sn and the outer strides
// multiples of V and x 16-byte aligned; V == 1 takes any inner layout. An output's order is
// the same for every V. segs == 1: writes out[o·inner_n + i], else partial[s·outputs + o·inner_n + i].
template <class T, class R, int V>
__global__ void __launch_bounds__(kColsThreads)
    reduce_cols_seg_kernel(const T* x, StridedLayout<1> outer, StridedLayout<1> inner, int64_t sn, int64_t n,
                           int64_t outer_n, int64_t inner_n, int64_t segs, int64_t seg_len, R r,
                           typename R::Acc* partial, typename R::Out* out) {
  using Acc = typename R::Acc;
  using C = compute_t<T>;
  constexpr int kW = 32 * V;
  __shared__ Acc part[kColsY][kW];
  const int64_t tiles = (inner_n + kW - 1) / kW, tiles_all = outer_n * tiles, outputs = outer_n * inner_n;
  const int64_t s = blockIdx.y;  // the segment (a 2-D grid: with one 64-bit division more, sm_80 spills)
  for (int64_t t = blockIdx.x; t < tiles_all; t += gridDim.x) {
    const int64_t o = t / tiles, i0 = (t % tiles) * kW, i = i0 + threadIdx.x * V;
    const int64_t j1 = min(n, (s + 1) * seg_len);
    Acc acc[V];
#pragma unroll
    for (int e = 0; e < V; ++e) acc[e] = r.init();
    if (i < inner_n) {
      int64_t oo[1], io[1] = {i};
      outer.offsets(o, oo);
      if (V == 1) inner.offsets(i, io);
      const T* base = x + oo[0] + io[0];
      int64_t j = s * seg_len + threadIdx.y;
      for (; j + (kColsUnroll - 1) * kColsY < j1; j += kColsUnroll * kColsY) {
        Vec<T, V> q[kColsUnroll];
#pragma unroll
        for (int u = 0; u < kColsUnroll; ++u) q[u] = load_vec<V>(base + (j + u * kColsY) * sn, 0);
#pragma unroll
        for (int u = 0; u < kColsUnroll; ++u) {
#pragma unroll
          for (int e = 0; e < V; ++e) acc[e] = r(acc[e], r.make(static_cast<C>(q[u].v[e]), j + u * kColsY));
        }
      }
      for (; j < j1; j += kColsY) {
        const Vec<T, V> q = load_vec<V>(base + j * sn, 0);
#pragma unroll
        for (int e = 0; e < V; ++e) acc[e] = r(acc[e], r.make(static_cast<C>(q.v[e]), j));
      }
    }
#pragma unroll
    for (int e = 0; e < V; ++e) part[threadIdx.y][threadIdx.x * V + e] = acc[e];
    __syncthreads();
    for (int c = threadIdx.y * 32 + threadIdx.x; c < kW; c += kColsThreads) {
      if (i0 + c < inner_n) {
        Acc a = part[0][c];
#pragma unroll
        for (int y = 1; y < kColsY; ++y) a = r(a, part[y][c]);
        const int64_t k = o * inner_n + i0 + c;
        if (segs == 1) {
          r.store(out, k, a);
        } else {
          partial[s * outputs + k] = a;
        }
      }
    }
    __syncthreads();  // part is reused by the next tile
  }
}

// Sums the segment partials (segs, outputs) of each output in segment order, one thread per
// output, kSegUnroll loads in flight.
template <class R>
__global__ void reduce_segments_kernel(const typename R::Acc* partial, int64_t outputs, int64_t segs, R r,
                                       typename R::Out* out) {
  using Acc = typename R::Acc;
  SOMNUS_GRID_STRIDE(k, outputs) {
    Acc acc = partial[k];
    int64_t s = 1;
    for (; s + kSegUnroll - 1 < segs; s += kSegUnroll) {
      Acc v[kSegUnroll];
#pragma unroll
      for (int u = 0; u < kSegUnroll; ++u) v[u] = partial[(s + u) * outputs + k];
#pragma unroll
      for (int u = 0; u < kSegUnroll; ++u) acc = r(acc, v[u]);
    }
    for (; s < segs; ++s) acc = r(acc, partial[s * outputs + k]);
    r.store(out, k, acc);
  }
}

// ---------------------------------------------------------------- split plans (v2)
// How many parts a reduced dim is cut into (one block's work each, their partials combined in
// part order by a second kernel) and their length: functions of the shape alone, so that the
// summation order is too.

struct SplitPlan {
  int64_t parts, len;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Rows (inner == 1, n > 512): chunks of ≥ 16384 elements, a multiple of 2048 (of kRowThreads·V
// for every dtype), ~4096 blocks in all; none when the rows alone give 2048 blocks.
inline SplitPlan plan_row_chunks(int64_t rows, int64_t n) {
  constexpr int64_t kMinChunk = 16384, kTarget = 4096, kAlign = 2048;
  if (rows >= kTarget / 2 || n < 2 * kMinChunk) return {1, n};
  int64_t parts = std::min(ceil_div(n, kMinChunk), ceil_div(kTarget, rows));
  const int64_t len = ceil_div(ceil_div(n, parts), kAlign) * kAlign;
  parts = ceil_div(n, len);
  return {parts, parts == 1 ? n : len};
}

// Columns (inner > 1), `tiles` = outer_n · ceil(inner_n / (32·V)) for the dtype's nominal V:
// segments of ≥ 32 rows, a multiple of kColsY, ~2048 blocks in all; none from 1024 tiles up.
inline SplitPlan plan_col_segments(int64_t tiles, int64_t n) {
  constexpr int64_t kMinSeg = 32, kTarget = 2048;
  if (tiles >= kTarget / 2 || n < 2 * kMinSeg) return {1, n};
  int64_t parts = std::min(ceil_div(kTarget, tiles), ceil_div(n, kMinSeg));
  const int64_t len = ceil_div(ceil_div(n, parts), kColsY) * kColsY;
  parts = ceil_div(n, len);
  return {parts, parts == 1 ? n : len};
}

// ---------------------------------------------------------------- host side

// x as (outer, n, inner) around `dim`, each side collapsed to as few dims as its strides allow.
struct Geometry {
  Collapsed<1> outer, inner;
  int64_t outer_n = 1, inner_n = 1, n = 1, sn = 0;
};

Geometry geometry(const Tensor& x, int64_t dim) {
  Geometry g;
  if (x.dim() == 0) {  // a scalar: one row of one element
    g.outer = collapse<1>({}, {Strides{}});
    g.inner = g.outer;
    return g;
  }
  const Shape& s = x.shape();
  const Strides& st = x.strides();
  const Shape outer_shape(s.begin(), s.begin() + dim), inner_shape(s.begin() + dim + 1, s.end());
  const Strides outer_st(st.begin(), st.begin() + dim), inner_st(st.begin() + dim + 1, st.end());
  g.outer = collapse<1>(outer_shape, {outer_st});
  g.inner = collapse<1>(inner_shape, {inner_st});
  g.outer_n = shape_numel(outer_shape);
  g.inner_n = shape_numel(inner_shape);
  g.n = s[dim];
  g.sn = st[dim];
  return g;
}

// Scratch for partials from the caching allocator (f64 elements: 8-byte aligned).
template <class Acc>
Tensor scratch_for(int64_t count, const Tensor& x) {
  const int64_t bytes = count * static_cast<int64_t>(sizeof(Acc));
  return Tensor::empty({(bytes + 7) / 8}, DType::f64, x.device());
}

// Whether every outer stride is a multiple of v (so that 16-byte alignment carries from x to
// each row or column start).
bool outer_multiple_of(const Geometry& g, int64_t v) {
  for (int64_t s : g.outer.strides[0]) {
    if (s % v != 0) return false;
  }
  return true;
}

template <class T, class R>
void run_rows_warp(const T* xp, const Geometry& g, R r, typename R::Out* op, const char* name) {
  const int64_t rows = g.outer_n;
  reduce_rows_warp_kernel<T, R><<<grid_for(rows, kWarpRowsPerBlock), kWarpRowsPerBlock * 32>>>(
      xp, g.outer.layout(name), g.sn, g.n, rows, r, op);
  CUDA_CHECK_LAUNCH();
}

// The previous kernels (SOMNUS_REDUCE=v1).
template <class T, class R>
void run_reduce_v1(const T* xp, const Geometry& g, const Tensor& x, R r, typename R::Out* op, const char* name) {
  using Acc = typename R::Acc;
  if (g.inner_n > 1) {
    const int64_t tiles = g.outer_n * ((g.inner_n + kColX - 1) / kColX);
    const dim3 block(kColX, kColY);
    reduce_cols_kernel<T, R><<<grid_for(tiles, 1), block>>>(xp, g.outer.layout(name), g.inner.layout(name), g.sn,
                                                            g.n, g.outer_n, g.inner_n, r, op);
    CUDA_CHECK_LAUNCH();
    return;
  }

  const int64_t rows = g.outer_n;
  if (g.n <= 512) {
    run_rows_warp(xp, g, r, op, name);
    return;
  }

  // Few long rows: split each into chunks so that the whole GPU works on them. The chunk
  // count depends only on the shape, so the summation order is reproducible everywhere.
  int64_t splits = 1, chunk = g.n;
  if (rows < 128 && g.n >= 65536) {
    splits = std::min<int64_t>((g.n + 16383) / 16384, std::max<int64_t>(1, 512 / rows));
    chunk = (g.n + splits - 1) / splits;
    splits = (g.n + chunk - 1) / chunk;
  }
  if (splits == 1) {
    reduce_rows_block_kernel<T, R><<<grid_for(rows, 1), kBlockThreads>>>(xp, g.outer.layout(name), g.sn, g.n, rows, 1,
                                                                         chunk, r, nullptr, op);
    CUDA_CHECK_LAUNCH();
    return;
  }
  Tensor scratch = scratch_for<Acc>(rows * splits, x);
  Acc* partial = static_cast<Acc*>(scratch.data_ptr());
  reduce_rows_block_kernel<T, R><<<grid_for(rows * splits, 1), kBlockThreads>>>(xp, g.outer.layout(name), g.sn, g.n,
                                                                                rows, splits, chunk, r, partial, op);
  CUDA_CHECK_LAUNCH();
  reduce_partials_kernel<R><<<grid_for(rows, 128), 128>>>(partial, rows, splits, r, op);
  CUDA_CHECK_LAUNCH();
}

template <class T, class R>
void run_reduce_v2(const T* xp, const Geometry& g, const Tensor& x, R r, typename R::Out* op, const char* name) {
  using Acc = typename R::Acc;
  constexpr int V = static_cast<int>(16 / sizeof(T));  // the nominal vector width: plans use it
  const bool aligned = aligned_to(xp, 16) && outer_multiple_of(g, V);
  if (g.inner_n > 1) {
    const int64_t outputs = g.outer_n * g.inner_n;
    const SplitPlan p = plan_col_segments(g.outer_n * ceil_div(g.inner_n, 32 * V), g.n);
    const bool vec = aligned && g.inner.shape.size() == 1 && g.inner.strides[0][0] == 1 && g.inner_n % V == 0 &&
                     g.sn % V == 0;
    Tensor scratch;
    Acc* partial = nullptr;
    if (p.parts > 1) {
      scratch = scratch_for<Acc>(p.parts * outputs, x);
      partial = static_cast<Acc*>(scratch.data_ptr());
    }
    const dim3 block(32, kColsY);
    if (vec) {
      // parts ≤ 2048 (grid y)
      const dim3 blocks(grid_for(g.outer_n * ceil_div(g.inner_n, 32 * V), 1), static_cast<unsigned>(p.parts));
      reduce_cols_seg_kernel<T, R, V><<<blocks, block>>>(xp, g.outer.layout(name), g.inner.layout(name), g.sn, g.n,
                                                         g.outer_n, g.inner_n, p.parts, p.len, r, partial, op);
    } else {
      const dim3 blocks(grid_for(g.outer_n * ceil_div(g.inner_n, 32), 1), static_cast<unsigned>(p.parts));
      reduce_cols_seg_kernel<T, R, 1><<<blocks, block>>>(xp, g.outer.layout(name), g.inner.layout(name), g.sn, g.n,
                                                         g.outer_n, g.inner_n, p.parts, p.len, r, partial, op);
    }
    CUDA_CHECK_LAUNCH();
    if (p.parts > 1) {
      reduce_segments_kernel<R><<<grid_for(outputs, 256), 256>>>(partial, outputs, p.parts, r, op);
      CUDA_CHECK_LAUNCH();
    }
    return;
  }

  const int64_t rows = g.outer_n;
  if (g.n <= 512) {
    run_rows_warp(xp, g, r, op, name);
    return;
  }
  const SplitPlan p = plan_row_chunks(rows, g.n);
  Tensor scratch;
  Acc* partial = nullptr;
  if (p.parts > 1) {
    scratch = scratch_for<Acc>(rows * p.parts, x);
    partial = static_cast<Acc*>(scratch.data_ptr());
  }
  const dim3 blocks(grid_for(rows, 1), static_cast<unsigned>(p.parts));  // parts ≤ 4096
  if (aligned && g.sn == 1) {
    reduce_rows_vec_kernel<T, R, V, true><<<blocks, kRowThreads>>>(xp, g.outer.layout(name), g.sn, g.n, rows, p.parts,
                                                                    p.len, r, partial, op);
  } else {
    reduce_rows_vec_kernel<T, R, V, false><<<blocks, kRowThreads>>>(xp, g.outer.layout(name), g.sn, g.n, rows,
                                                                     p.parts, p.len, r, partial, op);
  }
  CUDA_CHECK_LAUNCH();
  if (p.parts > 1) {
    reduce_chunks_kernel<R><<<grid_for(rows, 1), kRowThreads>>>(partial, rows, p.parts, r, op);
    CUDA_CHECK_LAUNCH();
  }
}

// SOMNUS_REDUCE (read on every call, so that tests and benchmarks can switch it): "v1" the
// previous kernels everywhere, "v2" the new ones everywhere; unset (the default) the faster of
// the two per path as measured on an H100 on 2026-11-27: v2 for rows and whole tensors, v1 for
// columns (inner > 1) where its grid of one block per 32 outputs has at least kV1ColBlocks
// blocks (8192² f32 96 µs against v2's 105, bf16 60 against 64, the norm backward's (512, 4096)
// f32 9 µs against 12–13: v2's segments and second launch cost more than the extra blocks gain
// there), v2 for fewer outputs (e.g. a bias gradient's (16384, 768) sum: 24 v1 blocks, each
// walking 16384 rows; v2 splits the rows into segments). The threshold is a constant, not the
// SM count, so that the summation order stays fixed by the shape alone.
constexpr int64_t kV1ColBlocks = 128;
enum class ReduceVersion { v1, v2, best };
ReduceVersion reduce_version() {
  const char* e = std::getenv("SOMNUS_REDUCE");
  if (e != nullptr && std::strcmp(e, "v1") == 0) return ReduceVersion::v1;
  if (e != nullptr && std::strcmp(e, "v2") == 0) return ReduceVersion::v2;
  return ReduceVersion::best;
}

template <class T, class R>
void run_reduce(const Tensor& x, int64_t dim, const Tensor& out, R r, const char* name) {
  using Out = typename R::Out;
  Geometry g = geometry(x, dim);
  if (g.outer_n * g.inner_n == 0) return;
  const T* xp = static_cast<const T*>(x.data_ptr());
  Out* op = static_cast<Out*>(out.data_ptr());

  // A strided reduced dim over a unit-stride outer dim (e.g. a transposed view): reduce it as
  // columns so that neighbouring threads read neighbouring elements.
  if (g.inner_n == 1 && g.n > 1 && g.sn != 1 && g.outer.shape.size() >= 1 && g.outer.strides[0].back() == 1) {
    std::swap(g.outer, g.inner);
    g.inner_n = g.outer_n;
    g.outer_n = 1;
  }
  const ReduceVersion v = reduce_version();
  const bool v1_columns = g.inner_n > 1 && g.outer_n * ((g.inner_n + kColX - 1) / kColX) >= kV1ColBlocks;
  if (v == ReduceVersion::v1 || (v == ReduceVersion::best && v1_columns)) {
    run_reduce_v1<T>(xp, g, x, r, op, name);
  } else {
    run_reduce_v2<T>(xp, g, x, r, op, name);
  }
}

}  // namespace

// ---------------------------------------------------------------- backend entry points

void reduce(Reduce op, const Tensor& x, int64_t dim, const Tensor& out) {
  set_device(out);
  dim = x.dim() == 0 ? 0 : wrap_dim(dim, x.dim(), "reduce");
  const int64_t n = x.dim() == 0 ? 1 : x.size(dim);
  visit_floating(x.dtype(), "reduce", [&](auto tag) {
    using T = decltype(tag);
    if (out.dtype() != x.dtype()) {
      throw_error(std::string("reduce: out dtype ") + dtype_name(out.dtype()) + " differs from x dtype " +
                  dtype_name(x.dtype()));
    }
    switch (op) {
      case Reduce::sum: run_reduce<T>(x, dim, out, SumReducer<T>{false, n}, "reduce"); break;
      case Reduce::mean: run_reduce<T>(x, dim, out, SumReducer<T>{true, n}, "reduce"); break;
      case Reduce::max: run_reduce<T>(x, dim, out, MaxReducer<T>{}, "reduce"); break;
    }
  });
}

void argmax(const Tensor& x, int64_t dim, const Tensor& out) {
  set_device(out);
  if (out.dtype() != DType::i64) {
    throw_error(std::string("argmax: out must be i64, got ") + dtype_name(out.dtype()));
  }
  dim = x.dim() == 0 ? 0 : wrap_dim(dim, x.dim(), "argmax");
  visit_floating(x.dtype(), "argmax", [&](auto tag) {
    using T = decltype(tag);
    run_reduce<T>(x, dim, out, ArgmaxReducer<T>{}, "argmax");
  });
}

}  // namespace somnus::kernels::cuda
