// Indexing ops on CUDA: embedding gather and its scatter-add backward, gather / scatter_add
// along a dim, index_select / index_add.
//
// Algorithms:
//   embedding            one block per token row, threads over C: out[r, c] = weight[id_r, c].
//                        Bytes 2·N·C·sizeof(T) + N·sizeof(id); no FLOPs.
//   embedding_backward   deterministic: cub::DeviceRadixSort sorts (id, position) pairs by id
//                        (stable, so positions stay in token order, over only the bits that V
//                        needs); then one block per run of equal ids sums its dout rows in token
//                        order, with no atomics — the CPU's summation order exactly.
//                        Nondeterministic: one block per token, atomicAdd per element (f32/f64
//                        directly into out; bf16 into an f32 scratch, then rounded once).
//                        N·C adds; bytes ≈ 2·N·C·sizeof(T) (+ the sort: a few passes over N).
//   gather, index_select one thread per output element; the index operand is a strided view
//                        (index_select's 1-D index is given stride 0 outside `dim`).
//   scatter_add, index_add  one thread per source element, atomicAdd into out (bf16: f32
//                        scratch). Their summation order is not fixed; see embedding_backward
//                        for the deterministic variant.
// Out-of-range indices are rejected by ops.cpp before launch; the kernels still never touch
// memory out of bounds (they write NaN / skip the element instead).
#include <cuda_runtime.h>

#include <cub/device/device_radix_sort.cuh>

#include "kernels/backend.h"
#include "kernels/cuda/common.cuh"

namespace somnus::kernels::cuda {

namespace {

constexpr int kRowThreads = 128;
constexpr int kThreads = 256;

// A visible value for an element whose index was invalid (NaN for floating types).
template <class T>
__device__ __forceinline__ T poison() {
  if constexpr (std::is_integral_v<T>) {
    return T(0);
  } else {
    return static_cast<T>(static_cast<compute_t<T>>(NAN));
  }
}

// Atomic accumulation for the types an accumulator can have (bf16 accumulates in f32).
__device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }
__device__ __forceinline__ void atomic_add(int32_t* p, int32_t v) { atomicAdd(reinterpret_cast<int*>(p), v); }
__device__ __forceinline__ void atomic_add(int64_t* p, int64_t v) {
  atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v));  // two's complement
}

// The storage type atomics accumulate into for an output of type T.
template <class T> struct accum_type { using type = T; };
template <> struct accum_type<bf16> { using type = float; };
template <class T> using accum_t = typename accum_type<T>::type;

// ---------------------------------------------------------------- embedding

template <class T, class I>
__global__ void embedding_kernel(const T* weight, int64_t sw0, int64_t sw1, int64_t V, const I* ids,
                                 StridedLayout<1> ids_layout, T* out, int64_t N, int64_t C) {
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    int64_t off[1];
    ids_layout.offsets(r, off);
    const int64_t id = static_cast<int64_t>(ids[off[0]]);
    T* orow = out + r * C;
    if (id < 0 || id >= V) {
      for (int64_t c = threadIdx.x; c < C; c += blockDim.x) orow[c] = poison<T>();
      continue;
    }
    const T* wrow = weight + id * sw0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) orow[c] = wrow[c * sw1];
  }
}

// Sort input: key = id (V for an invalid id, which the segment kernel skips), value = position.
template <class I>
__global__ void embedding_sort_input_kernel(const I* ids, StridedLayout<1> ids_layout, int64_t N, int64_t V,
                                            uint32_t* keys, int32_t* positions) {
  SOMNUS_GRID_STRIDE(i, N) {
    int64_t off[1];
    ids_layout.offsets(i, off);
    const int64_t id = static_cast<int64_t>(ids[off[0]]);
    keys[i] = static_cast<uint32_t>((id < 0 || id >= V) ? V : id);
    positions[i] = static_cast<int32_t>(i);
  }
}

// One block per run of equal keys (the block at the run's first element; the others return).
// Sums the run's dout rows in position order, then adds the sum to out once: no atomics.
template <class T>
__global__ void embedding_backward_runs_kernel(const uint32_t* keys, const int32_t* positions, int64_t N,
                                               const T* dout, int64_t sd0, int64_t sd1, T* out, int64_t V,
                                               int64_t C) {
  using A = compute_t<T>;
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const uint32_t key = keys[i];
    if ((i > 0 && keys[i - 1] == key) || static_cast<int64_t>(key) >= V) continue;
    T* orow = out + static_cast<int64_t>(key) * C;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      A acc = A(0);
      for (int64_t j = i; j < N && keys[j] == key; ++j) acc += load_c(dout + positions[j] * sd0 + c * sd1);
      store_c(orow + c, load_c(orow + c) + acc);
    }
  }
}

template <class T, class I>
__global__ void embedding_backward_atomic_kernel(const I* ids, StridedLayout<1> ids_layout, int64_t N, const T* dout,
                                                 int64_t sd0, int64_t sd1, accum_t<T>* acc, int64_t V, int64_t C) {
  using A = accum_t<T>;
  for (int64_t r = blockIdx.x; r < N; r += gridDim.x) {
    int64_t off[1];
    ids_layout.offsets(r, off);
    const int64_t id = static_cast<int64_t>(ids[off[0]]);
    if (id < 0 || id >= V) continue;
    A* arow = acc + id * C;
    const T* drow = dout + r * sd0;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
      atomic_add(arow + c, static_cast<A>(static_cast<compute_t<T>>(drow[c * sd1])));
    }
  }
}

// out (contiguous) += acc (contiguous f32), rounding once.
template <class T>
__global__ void add_accumulator_kernel(T* out, const float* acc, int64_t n) {
  SOMNUS_GRID_STRIDE(i, n) { store_c(out + i, static_cast<compute_t<T>>(load_c(out + i) + acc[i])); }
}

// ---------------------------------------------------------------- gather-like and scatter-like

// out[o0] = x[o2 + idx·x_dim_stride], idx = index[o1]. Operands: out, index, x (dim stride 0).
template <class T, class I>
__global__ void gather_kernel(T* out, const I* index, const T* x, StridedLayout<3> layout, int64_t n,
                              int64_t x_dim_stride, int64_t x_dim_size) {
  SOMNUS_GRID_STRIDE(i, n) {
    int64_t off[3];
    layout.offsets(i, off);
    const int64_t idx = static_cast<int64_t>(index[off[1]]);
    out[off[0]] = (idx < 0 || idx >= x_dim_size) ? poison<T>() : x[off[2] + idx * x_dim_stride];
  }
}

// acc[o2 + idx·dim_stride] += src[o1], idx = index[o0]. Operands: index, src, acc (dim stride 0).
template <class S, class A, class I>
__global__ void scatter_add_kernel(const I* index, const S* src, A* acc, StridedLayout<3> layout, int64_t n,
                                   int64_t acc_dim_stride, int64_t acc_dim_size) {
  SOMNUS_GRID_STRIDE(i, n) {
    int64_t off[3];
    layout.offsets(i, off);
    const int64_t idx = static_cast<int64_t>(index[off[0]]);
    if (idx < 0 || idx >= acc_dim_size) continue;
    atomic_add(acc + off[2] + idx * acc_dim_stride, static_cast<A>(static_cast<compute_t<S>>(src[off[1]])));
  }
}

Strides with_dim_stride_zero(const Strides& s, int64_t dim) {
  Strides r = s;
  r[dim] = 0;
  return r;
}

// index_select/index_add view of a 1-D index over an n-D shape: stride only along `dim`.
Strides index_along(size_t nd, int64_t dim, int64_t index_stride) {
  Strides r(nd, 0);
  r[dim] = index_stride;
  return r;
}

// out[...] = x[... index ...] over `shape`, with `index_strides` giving the index operand.
void launch_gather(const Tensor& x, int64_t dim, const Tensor& index, const Strides& index_strides, const Tensor& out,
                   const char* name) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const Collapsed<3> c = collapse<3>(out.shape(), {out.strides(), index_strides, with_dim_stride_zero(x.strides(), dim)});
  const StridedLayout<3> layout = c.layout(name);
  visit_dtype(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    visit_index(index.dtype(), name, [&](auto itag) {
      using I = decltype(itag);
      gather_kernel<T, I><<<grid_for(n, kThreads), kThreads>>>(static_cast<T*>(out.data_ptr()),
                                                               static_cast<const I*>(index.data_ptr()),
                                                               static_cast<const T*>(x.data_ptr()), layout, n,
                                                               x.stride(dim), x.size(dim));
      CUDA_CHECK_LAUNCH();
    });
  });
}

// out[... index ...] += src[...] over `shape` (the iterated shape: index's for scatter_add,
// src's for index_add). bf16 accumulates in an f32 copy of out, rounded back once at the end.
void launch_scatter_add(const Shape& shape, int64_t dim, const Tensor& index, const Strides& index_strides,
                        const Tensor& src, const Strides& src_strides, const Tensor& out, const char* name) {
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  const bool via_f32 = out.dtype() == DType::bf16;
  const Tensor acc = via_f32 ? out.to(DType::f32) : out;
  const Collapsed<3> c = collapse<3>(shape, {index_strides, src_strides, with_dim_stride_zero(acc.strides(), dim)});
  const StridedLayout<3> layout = c.layout(name);
  visit_dtype(out.dtype(), [&](auto tag) {
    using S = decltype(tag);
    using A = accum_t<S>;
    visit_index(index.dtype(), name, [&](auto itag) {
      using I = decltype(itag);
      scatter_add_kernel<S, A, I><<<grid_for(n, kThreads), kThreads>>>(
          static_cast<const I*>(index.data_ptr()), static_cast<const S*>(src.data_ptr()),
          static_cast<A*>(acc.data_ptr()), layout, n, acc.stride(dim), acc.size(dim));
      CUDA_CHECK_LAUNCH();
    });
  });
  if (via_f32) out.copy_(acc);
}

void check_same_dtype(const Tensor& a, const Tensor& b, const char* name) {
  if (a.dtype() != b.dtype()) {
    throw_error(std::string(name) + ": dtypes differ: " + dtype_name(a.dtype()) + " vs " + dtype_name(b.dtype()));
  }
}

}  // namespace

// ---------------------------------------------------------------- backend entry points

void embedding(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  set_device(out);
  const int64_t N = ids.numel(), V = weight.size(0), C = weight.size(1);
  if (N == 0 || C == 0) return;
  const Collapsed<1> ids_c = collapse<1>(ids.shape(), {ids.strides()});
  const StridedLayout<1> ids_layout = ids_c.layout("embedding");
  visit_dtype(weight.dtype(), [&](auto tag) {
    using T = decltype(tag);
    visit_index(ids.dtype(), "embedding", [&](auto itag) {
      using I = decltype(itag);
      embedding_kernel<T, I><<<grid_for(N, 1), kRowThreads>>>(
          static_cast<const T*>(weight.data_ptr()), weight.stride(0), weight.stride(1), V,
          static_cast<const I*>(ids.data_ptr()), ids_layout, static_cast<T*>(out.data_ptr()), N, C);
      CUDA_CHECK_LAUNCH();
    });
  });
}

void embedding_backward(const Tensor& dout, const Tensor& ids, const Tensor& out, bool deterministic) {
  set_device(out);
  const int64_t N = ids.numel(), V = out.size(0), C = out.size(1);
  if (N == 0 || C == 0 || V == 0) return;
  const Tensor d2 = dout.reshape({N, C});  // (N, C): a view when dout's layout allows
  const int64_t sd0 = d2.stride(0), sd1 = d2.stride(1);
  const Collapsed<1> ids_c = collapse<1>(ids.shape(), {ids.strides()});
  const StridedLayout<1> ids_layout = ids_c.layout("embedding_backward");
  const Device dev = out.device();

  if (deterministic) {
    if (N > INT32_MAX || V >= (int64_t{1} << 32) - 1) {
      throw_error("embedding_backward: deterministic mode supports < 2^31 tokens and < 2^32 - 1 rows, got N=" +
                  std::to_string(N) + " V=" + std::to_string(V));
    }
    // Sort (id, position) by id over just the bits that V (the invalid-id sentinel) needs.
    int end_bit = 1;
    while (end_bit < 32 && (int64_t{1} << end_bit) <= V) ++end_bit;
    Tensor keys_in = Tensor::empty({N}, DType::i32, dev), keys_out = Tensor::empty({N}, DType::i32, dev);
    Tensor pos_in = Tensor::empty({N}, DType::i32, dev), pos_out = Tensor::empty({N}, DType::i32, dev);
    auto* kin = static_cast<uint32_t*>(keys_in.data_ptr());
    auto* kout = static_cast<uint32_t*>(keys_out.data_ptr());
    auto* pin = static_cast<int32_t*>(pos_in.data_ptr());
    auto* pout = static_cast<int32_t*>(pos_out.data_ptr());
    visit_index(ids.dtype(), "embedding_backward", [&](auto itag) {
      using I = decltype(itag);
      embedding_sort_input_kernel<I><<<grid_for(N, kThreads), kThreads>>>(static_cast<const I*>(ids.data_ptr()),
                                                                          ids_layout, N, V, kin, pin);
      CUDA_CHECK_LAUNCH();
    });
    const int num_items = static_cast<int>(N);
    size_t temp_bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, kin, kout, pin, pout, num_items, 0, end_bit));
    Tensor temp = Tensor::empty({static_cast<int64_t>((temp_bytes + 7) / 8)}, DType::i64, dev);
    CUDA_CHECK(
        cub::DeviceRadixSort::SortPairs(temp.data_ptr(), temp_bytes, kin, kout, pin, pout, num_items, 0, end_bit));
    visit_floating(out.dtype(), "embedding_backward", [&](auto tag) {
      using T = decltype(tag);
      embedding_backward_runs_kernel<T><<<grid_for(N, 1), kRowThreads>>>(
          kout, pout, N, static_cast<const T*>(d2.data_ptr()), sd0, sd1, static_cast<T*>(out.data_ptr()), V, C);
      CUDA_CHECK_LAUNCH();
    });
    return;
  }

  visit_floating(out.dtype(), "embedding_backward", [&](auto tag) {
    using T = decltype(tag);
    using A = accum_t<T>;
    const bool via_f32 = out.dtype() == DType::bf16;
    const Tensor acc = via_f32 ? Tensor::zeros({V, C}, DType::f32, dev) : out;
    visit_index(ids.dtype(), "embedding_backward", [&](auto itag) {
      using I = decltype(itag);
      embedding_backward_atomic_kernel<T, I><<<grid_for(N, 1), kRowThreads>>>(
          static_cast<const I*>(ids.data_ptr()), ids_layout, N, static_cast<const T*>(d2.data_ptr()), sd0, sd1,
          static_cast<A*>(acc.data_ptr()), V, C);
      CUDA_CHECK_LAUNCH();
    });
    if (via_f32) {
      add_accumulator_kernel<T><<<grid_for(V * C, kThreads), kThreads>>>(static_cast<T*>(out.data_ptr()),
                                                                        static_cast<const float*>(acc.data_ptr()),
                                                                        V * C);
      CUDA_CHECK_LAUNCH();
    }
  });
}

void gather(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  set_device(out);
  check_same_dtype(x, out, "gather");
  dim = wrap_dim(dim, x.dim(), "gather");
  launch_gather(x, dim, index, index.strides(), out, "gather");
}

void scatter_add(int64_t dim, const Tensor& index, const Tensor& src, const Tensor& out) {
  set_device(out);
  check_same_dtype(src, out, "scatter_add");
  dim = wrap_dim(dim, out.dim(), "scatter_add");
  launch_scatter_add(index.shape(), dim, index, index.strides(), src, src.strides(), out, "scatter_add");
}

void index_select(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  set_device(out);
  check_same_dtype(x, out, "index_select");
  dim = wrap_dim(dim, x.dim(), "index_select");
  launch_gather(x, dim, index, index_along(out.shape().size(), dim, index.stride(0)), out, "index_select");
}

void index_add(int64_t dim, const Tensor& index, const Tensor& src, const Tensor& out) {
  set_device(out);
  check_same_dtype(src, out, "index_add");
  dim = wrap_dim(dim, out.dim(), "index_add");
  launch_scatter_add(src.shape(), dim, index, index_along(src.shape().size(), dim, index.stride(0)), src,
                     src.strides(), out, "index_add");
}

}  // namespace somnus::kernels::cuda
