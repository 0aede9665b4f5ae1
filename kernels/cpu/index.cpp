// CPU indexing kernels: embedding gather and its scatter-add backward, gather / scatter_add
// along a dim (torch semantics), index_select / index_add along a dim. Index tensors are i32
// or i64 and were range-checked by ops.cpp; data tensors may be any dtype and any strides.
//
// Algorithm and parallel layout:
//   gathers (embedding, gather, index_select) have no write conflicts: threads split the
//   output rows; a row is a contiguous copy when the source row is (embedding rows of C).
//   scatters (embedding_backward, scatter_add, index_add) can hit one output element from many
//   sources. Threads split the output so that each element is owned by one thread (column
//   strips of 64 for embedding_backward/index_add, whole fibers along `dim` for scatter_add),
//   and each thread walks the indices serially in order. So the CPU result is deterministic
//   and independent of the thread count, with no atomics. bf16 outputs accumulate in an f32
//   copy and are rounded once at the end.
// Cost: gathers move 2·out bytes (read + write) plus the index; scatters read src and
// read-modify-write out: about 3·src bytes, 1 FLOP per src element.
#include <omp.h>

#include <algorithm>
#include <array>
#include <type_traits>

#include "kernels/backend.h"
#include "tensor/dispatch.h"
#include "tensor/format.h"
#include "tensor/strided.h"

namespace somnus::kernels::cpu {

namespace {

constexpr int64_t kCols = 64;            // output columns per task in the scatter kernels
constexpr int64_t kParallelMin = 32768;  // elements below which one thread does it all

template <class F>
decltype(auto) visit_index(DType d, const char* op, F&& f) {
  switch (d) {
    case DType::i32: return f(int32_t{});
    case DType::i64: return f(int64_t{});
    default: fail("{}: index dtype must be i32 or i64, got {}", op, dtype_name(d));
  }
}

// The storage type a scatter accumulates in: bf16 sums in f32, everything else in itself.
template <class S> using acc_t = std::conditional_t<std::is_same_v<S, bf16>, float, S>;

template <class D, class S> inline void add_to(D& d, const S& s) {
  d = static_cast<D>(static_cast<compute_t<D>>(d) + static_cast<compute_t<D>>(static_cast<compute_t<S>>(s)));
}

// fn(acc) scatters into `acc`, a zero-filled tensor of out's shape in the accumulation dtype.
template <class Fn>
void with_accumulator(const Tensor& out, Fn&& fn) {
  if (out.dtype() != DType::bf16) {
    fn(out);
    return;
  }
  const Tensor acc = Tensor::zeros(out.shape(), DType::f32);
  fn(acc);
  strided_copy(out, acc);
}

// The rows (innermost dim) of an iteration space `shape` walked by K operands.
template <size_t K>
struct Rows {
  Shape shape;
  std::array<Strides, K> strides;

  int64_t len() const { return shape.empty() ? 1 : shape.back(); }
  int64_t count() const { return shape.empty() ? 1 : (len() == 0 ? 0 : shape_numel(shape) / len()); }
  int64_t inner_stride(size_t k) const { return shape.empty() ? 0 : strides[k].back(); }
  int64_t offset(int64_t r, size_t k) const {
    int64_t off = 0;
    for (int64_t d = static_cast<int64_t>(shape.size()) - 2; d >= 0; --d) {
      off += (r % shape[d]) * strides[k][d];
      r /= shape[d];
    }
    return off;
  }
};

template <class V> V without(const V& v, int64_t d) {
  V r = v;
  r.erase(r.begin() + d);
  return r;
}

}  // namespace

// ---------------------------------------------------------------- embedding

void embedding(const Tensor& weight, const Tensor& ids, const Tensor& out) {
  const Tensor id = ids.to(DType::i64).contiguous();
  const int64_t* ip = id.data<int64_t>();
  const int64_t N = id.numel(), C = weight.size(1), ws0 = weight.stride(0), ws1 = weight.stride(1);
  visit_dtype(weight.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* w = static_cast<const T*>(weight.data_ptr());
    T* y = static_cast<T*>(out.data_ptr());
#pragma omp parallel for schedule(static) if (N * C > kParallelMin && N > 1)
    for (int64_t i = 0; i < N; ++i) {
      const T* src = w + ip[i] * ws0;
      T* dst = y + i * C;
      if (ws1 == 1) {
        std::copy(src, src + C, dst);
      } else {
        for (int64_t j = 0; j < C; ++j) dst[j] = src[j * ws1];
      }
    }
  });
}

void embedding_backward(const Tensor& dout, const Tensor& ids, const Tensor& out, bool /*deterministic*/) {
  // Always deterministic on CPU: each thread owns a strip of columns and walks the ids in order.
  const Tensor id = ids.to(DType::i64).contiguous();
  const int64_t* ip = id.data<int64_t>();
  const int64_t N = id.numel(), C = out.size(1);
  const Tensor g = dout.reshape({N, C});  // (N, C), a view when possible
  const int64_t gs0 = g.stride(0), gs1 = g.stride(1);
  with_accumulator(out, [&](const Tensor& acc) {
    visit_floating(g.dtype(), "embedding_backward", [&](auto tag) {
      using S = decltype(tag);
      using A = acc_t<S>;
      const S* gp = static_cast<const S*>(g.data_ptr());
      A* ap = static_cast<A*>(acc.data_ptr());
      const int64_t strips = (C + kCols - 1) / kCols;
#pragma omp parallel for schedule(static) if (N * C > kParallelMin && strips > 1)
      for (int64_t t = 0; t < strips; ++t) {
        const int64_t c0 = t * kCols, len = std::min(kCols, C - c0);
        for (int64_t i = 0; i < N; ++i) {
          A* dst = ap + ip[i] * C + c0;
          const S* src = gp + i * gs0 + c0 * gs1;
          if (gs1 == 1) {
#pragma omp simd
            for (int64_t j = 0; j < len; ++j) add_to(dst[j], src[j]);
          } else {
            for (int64_t j = 0; j < len; ++j) add_to(dst[j], src[j * gs1]);
          }
        }
      }
    });
  });
}

// ---------------------------------------------------------------- gather / scatter_add

void gather(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  Strides xs = x.strides();
  const int64_t xsd = xs[dim];
  xs[dim] = 0;  // the position along dim comes from the index
  visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    visit_index(index.dtype(), "gather", [&](auto itag) {
      using I = decltype(itag);
      const T* xp = static_cast<const T*>(x.data_ptr());
      const I* ip = static_cast<const I*>(index.data_ptr());
      T* yp = static_cast<T*>(out.data_ptr());
      for_each_row<3>(index.shape(), {out.strides(), index.strides(), xs}, [&](const RowView<3>& r) {
        T* y = yp + r.offset[0];
        const I* ix = ip + r.offset[1];
        const T* xr = xp + r.offset[2];
        for (int64_t i = 0; i < r.n; ++i) {
          y[i * r.stride[0]] = xr[i * r.stride[2] + static_cast<int64_t>(ix[i * r.stride[1]]) * xsd];
        }
      });
    });
  });
}

void scatter_add(int64_t dim, const Tensor& index, const Tensor& src, const Tensor& out) {
  // Iterate over index's shape with `dim` moved innermost: each row is then one fiber along
  // dim with the other coordinates fixed, which only it can write, so rows run in parallel.
  const int64_t nd = index.dim();
  std::vector<int64_t> perm;
  for (int64_t d = 0; d < nd; ++d) {
    if (d != dim) perm.push_back(d);
  }
  perm.push_back(dim);
  auto permuted = [&](const Strides& s) {
    Strides r(nd);
    for (int64_t d = 0; d < nd; ++d) r[d] = s[perm[d]];
    return r;
  };
  Shape shape(nd);
  for (int64_t d = 0; d < nd; ++d) shape[d] = index.shape()[perm[d]];
  with_accumulator(out, [&](const Tensor& acc) {
    Strides os = acc.strides();
    const int64_t osd = os[dim];
    os[dim] = 0;
    visit_dtype(src.dtype(), [&](auto tag) {
      using S = decltype(tag);
      using A = acc_t<S>;
      visit_index(index.dtype(), "scatter_add", [&](auto itag) {
        using I = decltype(itag);
        const S* sp = static_cast<const S*>(src.data_ptr());
        const I* ip = static_cast<const I*>(index.data_ptr());
        A* ap = static_cast<A*>(acc.data_ptr());
        for_each_row<3>(shape, {permuted(os), permuted(index.strides()), permuted(src.strides())},
                        [&](const RowView<3>& r) {
                          A* o = ap + r.offset[0];  // stride[0] is 0: the fiber's base
                          const I* ix = ip + r.offset[1];
                          const S* s = sp + r.offset[2];
                          for (int64_t i = 0; i < r.n; ++i) {
                            add_to(o[static_cast<int64_t>(ix[i * r.stride[1]]) * osd], s[i * r.stride[2]]);
                          }
                        });
      });
    });
  });
}

// ---------------------------------------------------------------- index_select / index_add

void index_select(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& out) {
  const Tensor id = index.to(DType::i64).contiguous();
  const int64_t* ip = id.data<int64_t>();
  const int64_t L = id.numel(), xsd = x.stride(dim), osd = out.stride(dim);
  // Each task copies one row of the slice x.select(dim, index[j]) into out.select(dim, j).
  Rows<2> rows{without(x.shape(), dim), {without(out.strides(), dim), without(x.strides(), dim)}};
  const int64_t count = rows.count(), len = rows.len();
  const int64_t so = rows.inner_stride(0), sx = rows.inner_stride(1);
  visit_dtype(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x.data_ptr());
    T* yp = static_cast<T*>(out.data_ptr());
#pragma omp parallel for schedule(static) if (L * count * len > kParallelMin && L * count > 1)
    for (int64_t t = 0; t < L * count; ++t) {
      const int64_t j = t / count, r = t % count;
      T* y = yp + j * osd + rows.offset(r, 0);
      const T* xr = xp + ip[j] * xsd + rows.offset(r, 1);
      if (so == 1 && sx == 1) {
        std::copy(xr, xr + len, y);
      } else {
        for (int64_t i = 0; i < len; ++i) y[i * so] = xr[i * sx];
      }
    }
  });
}

void index_add(int64_t dim, const Tensor& index, const Tensor& src, const Tensor& out) {
  const Tensor id = index.to(DType::i64).contiguous();
  const int64_t* ip = id.data<int64_t>();
  const int64_t L = id.numel(), ssd = src.stride(dim);
  with_accumulator(out, [&](const Tensor& acc) {
    const int64_t osd = acc.stride(dim);
    // Tasks own a strip of up to 64 elements of one row of the slice shape and walk the index
    // in order: no two tasks touch the same output element.
    Rows<2> rows{without(acc.shape(), dim), {without(acc.strides(), dim), without(src.strides(), dim)}};
    const int64_t count = rows.count(), len = rows.len();
    const int64_t so = rows.inner_stride(0), ss = rows.inner_stride(1);
    const int64_t strips = (len + kCols - 1) / kCols, tasks = count * strips;
    visit_dtype(src.dtype(), [&](auto tag) {
      using S = decltype(tag);
      using A = acc_t<S>;
      const S* sp = static_cast<const S*>(src.data_ptr());
      A* ap = static_cast<A*>(acc.data_ptr());
#pragma omp parallel for schedule(static) if (L * count * len > kParallelMin && tasks > 1)
      for (int64_t t = 0; t < tasks; ++t) {
        const int64_t r = t / strips, c0 = (t % strips) * kCols, n = std::min(kCols, len - c0);
        A* o = ap + rows.offset(r, 0) + c0 * so;
        const S* s = sp + rows.offset(r, 1) + c0 * ss;
        for (int64_t j = 0; j < L; ++j) {
          A* oj = o + ip[j] * osd;
          const S* sj = s + j * ssd;
          for (int64_t i = 0; i < n; ++i) add_to(oj[i * so], sj[i * ss]);
        }
      }
    });
  });
}

}  // namespace somnus::kernels::cpu
