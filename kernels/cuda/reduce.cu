// Reductions over one dim on CUDA: sum, mean, max, and argmax (first index on ties; NaN
// counts as the maximum, as in torch). x is viewed as (outer, n, inner) around the reduced
// dim; out holds outer·inner values, out[o·inner + i].
//
// Algorithm, by shape:
//   inner == 1, n ≤ 512    one warp per row (cub::WarpReduce), 8 rows per 256-thread block.
//   inner == 1, n > 512    one 512-thread block per row (cub::BlockReduce). When there are
//                          few rows (< 128) and long ones (n ≥ 65536, e.g. a full reduce),
//                          each row is cut into a fixed number of chunks, one block each,
//                          whose partials a second kernel combines in chunk order.
//   inner > 1              a 32×16 block per 32 adjacent outputs: threadIdx.x walks the inner
//                          dim (coalesced), threadIdx.y strides over n, and the 16 partials
//                          are combined in order through shared memory. The same kernel serves
//                          inner == 1 when the reduced dim is strided and the outer dim is not
//                          (a transposed view), so reads stay coalesced.
// Every summation order is fixed by the shape alone (never by timing or the GPU model), so
// results are bitwise reproducible. Accumulates in f32 (f64 for f64); the CPU twin uses f64.
// Cost: numel reads, outer·inner writes, ~1 FLOP per element: memory bound.
#include <cuda_runtime.h>

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

// ---------------------------------------------------------------- kernels

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

template <class T, class R>
void run_reduce(const Tensor& x, int64_t dim, const Tensor& out, R r, const char* name) {
  using Out = typename R::Out;
  using Acc = typename R::Acc;
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
    reduce_rows_warp_kernel<T, R><<<grid_for(rows, kWarpRowsPerBlock), kWarpRowsPerBlock * 32>>>(
        xp, g.outer.layout(name), g.sn, g.n, rows, r, op);
    CUDA_CHECK_LAUNCH();
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
  // Partials live in a scratch tensor from the caching allocator (f64 elements: 8-byte aligned).
  const int64_t partial_bytes = rows * splits * static_cast<int64_t>(sizeof(Acc));
  Tensor scratch = Tensor::empty({(partial_bytes + 7) / 8}, DType::f64, x.device());
  Acc* partial = static_cast<Acc*>(scratch.data_ptr());
  reduce_rows_block_kernel<T, R><<<grid_for(rows * splits, 1), kBlockThreads>>>(xp, g.outer.layout(name), g.sn, g.n,
                                                                                rows, splits, chunk, r, partial, op);
  CUDA_CHECK_LAUNCH();
  reduce_partials_kernel<R><<<grid_for(rows, 128), 128>>>(partial, rows, splits, r, op);
  CUDA_CHECK_LAUNCH();
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
