// The op front end: validation, output allocation, broadcasting, then dispatch by device to
// kernels::cpu or kernels::cuda (see backend.h for the contract both backends implement).
//
// Every check throws somnus::Error naming the op and the offending shapes/dtypes/devices,
// e.g. "matmul: inner dims differ: a (4, 8) vs b (7, 3)". Index tensors are range-checked on
// the host (a CUDA index tensor is copied to the CPU first), so no backend ever reads out of
// bounds. Outputs are always fresh contiguous tensors on the inputs' device.
#include "kernels/ops.h"

#include <algorithm>

#include "kernels/backend.h"
#include "tensor/format.h"

namespace somnus::kernels {

// Calls cpu::fn or cuda::fn with the same arguments, by device.
#define SOMNUS_DISPATCH(device, fn, ...) \
  do {                                   \
    if ((device).is_cuda()) {            \
      cuda::fn(__VA_ARGS__);             \
    } else {                             \
      cpu::fn(__VA_ARGS__);              \
    }                                    \
  } while (0)

namespace {

int64_t wrap_dim(const char* op, int64_t dim, int64_t ndim, const Shape& shape) {
  const int64_t w = dim < 0 ? dim + ndim : dim;
  SOMNUS_CHECK(w >= 0 && w < ndim, "{}: dim {} out of range for a tensor of shape {} ({} dims)", op, dim,
               shape_str(shape), ndim);
  return w;
}

void check_defined(const char* op, const char* name, const Tensor& t) {
  SOMNUS_CHECK(t.defined(), "{}: {} is an undefined tensor", op, name);
}

void check_floating(const char* op, const char* name, const Tensor& t) {
  check_defined(op, name, t);
  SOMNUS_CHECK(is_floating(t.dtype()), "{}: expected a floating dtype (f32, f64, bf16) for {}, got {} {}", op, name,
               dtype_name(t.dtype()), shape_str(t.shape()));
}

void check_index_dtype(const char* op, const char* name, const Tensor& t) {
  check_defined(op, name, t);
  SOMNUS_CHECK(is_integral(t.dtype()), "{}: expected an integer dtype (i32, i64) for {}, got {} {}", op, name,
               dtype_name(t.dtype()), shape_str(t.shape()));
}

void check_same_dtype(const char* op, const char* na, const Tensor& a, const char* nb, const Tensor& b) {
  SOMNUS_CHECK(a.dtype() == b.dtype(), "{}: dtypes differ: {} {} {} vs {} {} {}", op, na, dtype_name(a.dtype()),
               shape_str(a.shape()), nb, dtype_name(b.dtype()), shape_str(b.shape()));
}

void check_same_device(const char* op, const char* na, const Tensor& a, const char* nb, const Tensor& b) {
  SOMNUS_CHECK(a.device() == b.device(), "{}: devices differ: {} {} on {} vs {} {} on {}", op, na,
               shape_str(a.shape()), a.device().str(), nb, shape_str(b.shape()), b.device().str());
}

void check_same_shape(const char* op, const char* na, const Tensor& a, const char* nb, const Tensor& b) {
  SOMNUS_CHECK(a.shape() == b.shape(), "{}: shapes differ: {} {} vs {} {}", op, na, shape_str(a.shape()), nb,
               shape_str(b.shape()));
}

// Every value of `index` must lie in [0, bound). Checked on the host: a CUDA index tensor is
// copied to the CPU (one transfer per op; the price of never reading out of bounds).
void check_index_range(const char* op, const char* name, const Tensor& index, int64_t bound, const std::string& ctx) {
  if (index.numel() == 0) return;
  const Tensor host = index.to(Device::cpu(), DType::i64).contiguous();
  const int64_t* p = host.data<int64_t>();
  const int64_t n = host.numel();
  int64_t lo = p[0], hi = p[0];
#pragma omp parallel for simd reduction(min : lo) reduction(max : hi) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, p[i]);
    hi = std::max(hi, p[i]);
  }
  if (lo >= 0 && hi < bound) return;
  int64_t first = 0;
  while (p[first] >= 0 && p[first] < bound) ++first;
  fail("{}: {} value {} at flat position {} is out of range [0, {}) ({} {}, {})", op, name, p[first], first, bound,
       name, shape_str(index.shape()), ctx);
}

Shape reduced_shape(const Shape& s, int64_t dim, bool keepdim) {
  Shape out = s;
  if (keepdim) {
    out[dim] = 1;
  } else {
    out.erase(out.begin() + dim);
  }
  return out;
}

}  // namespace

// ---------------------------------------------------------------- names

const char* unary_name(Unary op) {
  switch (op) {
    case Unary::neg: return "neg";
    case Unary::exp: return "exp";
    case Unary::log: return "log";
    case Unary::sqrt: return "sqrt";
    case Unary::rsqrt: return "rsqrt";
    case Unary::tanh: return "tanh";
    case Unary::sigmoid: return "sigmoid";
    case Unary::relu: return "relu";
    case Unary::gelu: return "gelu";
    case Unary::silu: return "silu";
    case Unary::pow: return "pow";
    case Unary::abs: return "abs";
    case Unary::square: return "square";
  }
  return "unary?";
}

const char* binary_name(Binary op) {
  switch (op) {
    case Binary::add: return "add";
    case Binary::sub: return "sub";
    case Binary::mul: return "mul";
    case Binary::div: return "div";
    case Binary::maximum: return "maximum";
    case Binary::minimum: return "minimum";
  }
  return "binary?";
}

const char* reduce_name(Reduce op) {
  switch (op) {
    case Reduce::sum: return "sum";
    case Reduce::mean: return "mean";
    case Reduce::max: return "max";
  }
  return "reduce?";
}

// ---------------------------------------------------------------- elementwise

Tensor unary(Unary op, const Tensor& x, double scalar) {
  const char* name = unary_name(op);
  check_floating(name, "x", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(x.device(), unary, op, x, out, scalar);
  return out;
}

Tensor unary_backward(Unary op, const Tensor& x, const Tensor& dy, double scalar) {
  const std::string name = std::string(unary_name(op)) + "_backward";
  const char* n = name.c_str();
  check_floating(n, "x", x);
  check_floating(n, "dy", dy);
  check_same_device(n, "x", x, "dy", dy);
  check_same_dtype(n, "x", x, "dy", dy);
  check_same_shape(n, "x", x, "dy", dy);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(x.device(), unary_backward, op, x, dy, out, scalar);
  return out;
}

Tensor binary(Binary op, const Tensor& a, const Tensor& b) {
  const char* name = binary_name(op);
  check_floating(name, "a", a);
  check_floating(name, "b", b);
  check_same_device(name, "a", a, "b", b);
  check_same_dtype(name, "a", a, "b", b);
  const Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(a.device(), binary, op, a.expand(shape), b.expand(shape), out);
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  check_defined("where", "cond", cond);
  check_floating("where", "a", a);
  check_floating("where", "b", b);
  check_same_device("where", "cond", cond, "a", a);
  check_same_device("where", "a", a, "b", b);
  check_same_dtype("where", "a", a, "b", b);
  // Broadcast all three at once so that the error names every shape involved.
  const size_t nd = std::max({cond.shape().size(), a.shape().size(), b.shape().size()});
  Shape shape(nd, 1);
  for (const Tensor* t : {&cond, &a, &b}) {
    const size_t lead = nd - t->shape().size();
    for (size_t i = 0; i < t->shape().size(); ++i) {
      const int64_t s = t->shape()[i];
      SOMNUS_CHECK(s == shape[lead + i] || s == 1 || shape[lead + i] == 1,
                   "where: shapes cannot be broadcast together: cond {} vs a {} vs b {}", shape_str(cond.shape()),
                   shape_str(a.shape()), shape_str(b.shape()));
      if (s != 1) shape[lead + i] = s;
    }
  }
  Tensor out = Tensor::empty(shape, a.dtype(), a.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(a.device(), where, cond.expand(shape), a.expand(shape), b.expand(shape), out);
  return out;
}

// ---------------------------------------------------------------- reductions

Tensor reduce(Reduce op, const Tensor& x, int64_t dim, bool keepdim) {
  const char* name = reduce_name(op);
  check_floating(name, "x", x);
  if (x.dim() == 0) {  // a scalar reduces to itself over dim 0 / -1, as in PyTorch
    SOMNUS_CHECK(dim == 0 || dim == -1, "{}: dim {} out of range for a 0-dim tensor", name, dim);
    return reduce(op, x.unsqueeze(0), 0, false);
  }
  const int64_t d = wrap_dim(name, dim, x.dim(), x.shape());
  SOMNUS_CHECK(op != Reduce::max || x.shape()[d] > 0, "{}: cannot reduce over dim {} of size 0 in x {}", name, dim,
               shape_str(x.shape()));
  Tensor out = Tensor::empty(reduced_shape(x.shape(), d, keepdim), x.dtype(), x.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(x.device(), reduce, op, x, d, out);
  return out;
}

Tensor reduce_all(Reduce op, const Tensor& x) {
  check_floating(reduce_name(op), "x", x);
  return reduce(op, x.dim() == 0 ? x.unsqueeze(0) : x.reshape({x.numel()}), 0, false);
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  check_floating("argmax", "x", x);
  if (x.dim() == 0) {
    SOMNUS_CHECK(dim == 0 || dim == -1, "argmax: dim {} out of range for a 0-dim tensor", dim);
    return argmax(x.unsqueeze(0), 0, false);
  }
  const int64_t d = wrap_dim("argmax", dim, x.dim(), x.shape());
  SOMNUS_CHECK(x.shape()[d] > 0, "argmax: cannot reduce over dim {} of size 0 in x {}", dim, shape_str(x.shape()));
  Tensor out = Tensor::empty(reduced_shape(x.shape(), d, keepdim), DType::i64, x.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(x.device(), argmax, x, d, out);
  return out;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  check_floating("sum_to", "x", x);
  const int64_t nd = x.dim(), ns = static_cast<int64_t>(shape.size());
  const int64_t lead = nd - ns;
  bool ok = lead >= 0;
  for (int64_t i = 0; ok && i < ns; ++i) ok = shape[i] == x.shape()[lead + i] || shape[i] == 1;
  SOMNUS_CHECK(ok, "sum_to: cannot sum x {} down to {} (target must broadcast to x)", shape_str(x.shape()),
               shape_str(shape));
  if (x.shape() == shape) return x;
  Tensor r = x;
  // Dims that were broadcast from size 1 keep their place; then the leading dims go.
  for (int64_t i = 0; i < ns; ++i) {
    if (shape[i] == 1 && r.shape()[lead + i] != 1) r = reduce(Reduce::sum, r, lead + i, /*keepdim=*/true);
  }
  for (int64_t i = 0; i < lead; ++i) r = reduce(Reduce::sum, r, 0, /*keepdim=*/false);
  if (r.shape() != shape) r = r.reshape(shape);  // only size-1 dims can differ here
  return r;
}

// ---------------------------------------------------------------- softmax

static Tensor softmax_impl(const Tensor& x, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  check_floating(name, "x", x);
  SOMNUS_CHECK(x.dim() >= 1, "{}: expected at least 1 dim, got a 0-dim tensor", name);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(x.device(), softmax, x, out, log);
  return out;
}

Tensor softmax(const Tensor& x) { return softmax_impl(x, false); }
Tensor log_softmax(const Tensor& x) { return softmax_impl(x, true); }

static Tensor softmax_backward_impl(const Tensor& y, const Tensor& dy, bool log) {
  const char* name = log ? "log_softmax_backward" : "softmax_backward";
  check_floating(name, "y", y);
  check_floating(name, "dy", dy);
  check_same_device(name, "y", y, "dy", dy);
  check_same_dtype(name, "y", y, "dy", dy);
  check_same_shape(name, "y", y, "dy", dy);
  SOMNUS_CHECK(y.dim() >= 1, "{}: expected at least 1 dim, got a 0-dim tensor", name);
  Tensor out = Tensor::empty(y.shape(), y.dtype(), y.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(y.device(), softmax_backward, y, dy, out, log);
  return out;
}

Tensor softmax_backward(const Tensor& y, const Tensor& dy) { return softmax_backward_impl(y, dy, false); }
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy) { return softmax_backward_impl(y, dy, true); }

// ---------------------------------------------------------------- matmul

Tensor matmul(const Tensor& a, const Tensor& b, const Tensor& bias, bool gelu, Tensor* pre_gelu) {
  check_floating("matmul", "a", a);
  check_floating("matmul", "b", b);
  check_same_device("matmul", "a", a, "b", b);
  check_same_dtype("matmul", "a", a, "b", b);
  SOMNUS_CHECK(a.dim() == 2 || a.dim() == 3, "matmul: a must be 2-D (M, K) or 3-D (Bt, M, K), got a {}",
               shape_str(a.shape()));
  SOMNUS_CHECK(b.dim() == 2 || b.dim() == 3, "matmul: b must be 2-D (K, N) or 3-D (Bt, K, N), got b {}",
               shape_str(b.shape()));
  SOMNUS_CHECK(a.size(-1) == b.size(-2), "matmul: inner dims differ: a {} vs b {}", shape_str(a.shape()),
               shape_str(b.shape()));
  if (b.dim() == 3) {
    SOMNUS_CHECK(a.dim() == 3, "matmul: a batched b needs a batched a: a {} vs b {}", shape_str(a.shape()),
                 shape_str(b.shape()));
    SOMNUS_CHECK(b.size(0) == a.size(0) || b.size(0) == 1, "matmul: batch dims differ: a {} vs b {}",
                 shape_str(a.shape()), shape_str(b.shape()));
  }
  const int64_t N = b.size(-1);
  if (bias.defined()) {
    check_floating("matmul", "bias", bias);
    check_same_device("matmul", "a", a, "bias", bias);
    check_same_dtype("matmul", "a", a, "bias", bias);
    SOMNUS_CHECK(bias.dim() == 1 && bias.size(0) == N, "matmul: bias must be (N,) = ({},), got bias {} for b {}", N,
                 shape_str(bias.shape()), shape_str(b.shape()));
  }
  // Normalise to the backend's 3-D contract: a (Bt, M, K), b (Bt or 1, K, N), out (Bt, M, N).
  const Tensor a3 = a.dim() == 2 ? a.unsqueeze(0) : a;
  const Tensor b3 = b.dim() == 2 ? b.unsqueeze(0) : b;
  const int64_t Bt = a3.size(0), M = a3.size(1);
  Tensor out = Tensor::empty({Bt, M, N}, a.dtype(), a.device());
  Tensor pre;
  if (gelu && pre_gelu != nullptr) pre = Tensor::empty({Bt, M, N}, a.dtype(), a.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(a.device(), matmul, a3, b3, bias, gelu, out, pre);
  if (a.dim() == 2) {
    out = out.view({M, N});
    if (pre.defined()) pre = pre.view({M, N});
  }
  // Without gelu the pre-activation is the output itself.
  if (pre_gelu != nullptr) *pre_gelu = gelu ? pre : out;
  return out;
}

// ---------------------------------------------------------------- indexing

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  check_defined("embedding", "weight", weight);
  check_index_dtype("embedding", "ids", ids);
  check_same_device("embedding", "weight", weight, "ids", ids);
  SOMNUS_CHECK(weight.dim() == 2, "embedding: weight must be 2-D (V, C), got weight {}", shape_str(weight.shape()));
  check_index_range("embedding", "ids", ids, weight.size(0), "weight " + shape_str(weight.shape()));
  Shape shape = ids.shape();
  shape.push_back(weight.size(1));
  Tensor out = Tensor::empty(shape, weight.dtype(), weight.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(weight.device(), embedding, weight, ids, out);
  return out;
}

Tensor embedding_backward(const Tensor& dout, const Tensor& ids, int64_t vocab, bool deterministic) {
  check_floating("embedding_backward", "dout", dout);
  check_index_dtype("embedding_backward", "ids", ids);
  check_same_device("embedding_backward", "dout", dout, "ids", ids);
  SOMNUS_CHECK(vocab > 0, "embedding_backward: vocab must be positive, got {}", vocab);
  SOMNUS_CHECK(dout.dim() == ids.dim() + 1 && std::equal(ids.shape().begin(), ids.shape().end(), dout.shape().begin()),
               "embedding_backward: dout must be ids.shape + (C,): dout {} vs ids {}", shape_str(dout.shape()),
               shape_str(ids.shape()));
  check_index_range("embedding_backward", "ids", ids, vocab, fmt::format("vocab {}", vocab));
  Tensor out = Tensor::zeros({vocab, dout.size(-1)}, dout.dtype(), dout.device());
  if (dout.numel() > 0) SOMNUS_DISPATCH(dout.device(), embedding_backward, dout, ids, out, deterministic);
  return out;
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  check_defined("gather", "x", x);
  check_index_dtype("gather", "index", index);
  check_same_device("gather", "x", x, "index", index);
  SOMNUS_CHECK(x.dim() >= 1 && index.dim() == x.dim(), "gather: index must have x's rank: x {} vs index {}",
               shape_str(x.shape()), shape_str(index.shape()));
  const int64_t d = wrap_dim("gather", dim, x.dim(), x.shape());
  for (int64_t i = 0; i < x.dim(); ++i) {
    SOMNUS_CHECK(i == d || index.shape()[i] <= x.shape()[i],
                 "gather: index {} is larger than x {} in dim {} (only dim {} may be larger)",
                 shape_str(index.shape()), shape_str(x.shape()), i, d);
  }
  check_index_range("gather", "index", index, x.shape()[d], fmt::format("x {}, dim {}", shape_str(x.shape()), d));
  Tensor out = Tensor::empty(index.shape(), x.dtype(), x.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(x.device(), gather, x, d, index, out);
  return out;
}

Tensor scatter_add(const Shape& shape, int64_t dim, const Tensor& index, const Tensor& src) {
  check_defined("scatter_add", "src", src);
  check_index_dtype("scatter_add", "index", index);
  check_same_device("scatter_add", "src", src, "index", index);
  const int64_t nd = static_cast<int64_t>(shape.size());
  SOMNUS_CHECK(nd >= 1 && index.dim() == nd && src.dim() == nd,
               "scatter_add: index and src must have the output's rank: shape {}, index {}, src {}", shape_str(shape),
               shape_str(index.shape()), shape_str(src.shape()));
  const int64_t d = wrap_dim("scatter_add", dim, nd, shape);
  for (int64_t i = 0; i < nd; ++i) {
    SOMNUS_CHECK(index.shape()[i] <= src.shape()[i] && (i == d || index.shape()[i] <= shape[i]),
                 "scatter_add: index {} does not fit src {} and output {} in dim {}", shape_str(index.shape()),
                 shape_str(src.shape()), shape_str(shape), i);
  }
  check_index_range("scatter_add", "index", index, shape[d], fmt::format("output {}, dim {}", shape_str(shape), d));
  Tensor out = Tensor::zeros(shape, src.dtype(), src.device());
  if (index.numel() > 0) SOMNUS_DISPATCH(src.device(), scatter_add, d, index, src, out);
  return out;
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  check_defined("index_select", "x", x);
  check_index_dtype("index_select", "index", index);
  check_same_device("index_select", "x", x, "index", index);
  SOMNUS_CHECK(x.dim() >= 1, "index_select: x must have at least 1 dim, got a 0-dim tensor");
  SOMNUS_CHECK(index.dim() == 1, "index_select: index must be 1-D, got index {}", shape_str(index.shape()));
  const int64_t d = wrap_dim("index_select", dim, x.dim(), x.shape());
  check_index_range("index_select", "index", index, x.shape()[d],
                    fmt::format("x {}, dim {}", shape_str(x.shape()), d));
  Shape shape = x.shape();
  shape[d] = index.numel();
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(x.device(), index_select, x, d, index, out);
  return out;
}

Tensor index_add(const Shape& shape, int64_t dim, const Tensor& index, const Tensor& src) {
  check_defined("index_add", "src", src);
  check_index_dtype("index_add", "index", index);
  check_same_device("index_add", "src", src, "index", index);
  const int64_t nd = static_cast<int64_t>(shape.size());
  SOMNUS_CHECK(nd >= 1, "index_add: output shape must have at least 1 dim, got {}", shape_str(shape));
  SOMNUS_CHECK(index.dim() == 1, "index_add: index must be 1-D, got index {}", shape_str(index.shape()));
  const int64_t d = wrap_dim("index_add", dim, nd, shape);
  Shape expect = shape;
  expect[d] = index.numel();
  SOMNUS_CHECK(src.shape() == expect, "index_add: src must be {} for output {}, dim {}, index {}; got src {}",
               shape_str(expect), shape_str(shape), d, shape_str(index.shape()), shape_str(src.shape()));
  check_index_range("index_add", "index", index, shape[d], fmt::format("output {}, dim {}", shape_str(shape), d));
  Tensor out = Tensor::zeros(shape, src.dtype(), src.device());
  if (src.numel() > 0) SOMNUS_DISPATCH(src.device(), index_add, d, index, src, out);
  return out;
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  SOMNUS_CHECK(!xs.empty(), "concat: needs at least one tensor");
  const Tensor& x0 = xs[0];
  check_defined("concat", "xs[0]", x0);
  SOMNUS_CHECK(x0.dim() >= 1, "concat: cannot concatenate 0-dim tensors");
  const int64_t d = wrap_dim("concat", dim, x0.dim(), x0.shape());
  Shape shape = x0.shape();
  shape[d] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const Tensor& x = xs[i];
    check_defined("concat", "an input", x);
    SOMNUS_CHECK(x.dtype() == x0.dtype(), "concat: dtypes differ: xs[0] {} {} vs xs[{}] {} {}",
                 dtype_name(x0.dtype()), shape_str(x0.shape()), i, dtype_name(x.dtype()), shape_str(x.shape()));
    SOMNUS_CHECK(x.device() == x0.device(), "concat: devices differ: xs[0] {} on {} vs xs[{}] {} on {}",
                 shape_str(x0.shape()), x0.device().str(), i, shape_str(x.shape()), x.device().str());
    bool ok = x.dim() == x0.dim();
    for (int64_t j = 0; ok && j < x0.dim(); ++j) ok = j == d || x.shape()[j] == x0.shape()[j];
    SOMNUS_CHECK(ok, "concat: shapes differ outside dim {}: xs[0] {} vs xs[{}] {}", d, shape_str(x0.shape()), i,
                 shape_str(x.shape()));
    shape[d] += x.shape()[d];
  }
  Tensor out = Tensor::empty(shape, x0.dtype(), x0.device());
  int64_t at = 0;
  for (const Tensor& x : xs) {
    const int64_t n = x.shape()[d];
    if (n > 0) strided_copy(out.slice(d, at, at + n), x);
    at += n;
  }
  return out;
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  check_defined("split", "x", x);
  SOMNUS_CHECK(x.dim() >= 1, "split: cannot split a 0-dim tensor");
  const int64_t d = wrap_dim("split", dim, x.dim(), x.shape());
  int64_t total = 0;
  for (int64_t s : sizes) {
    SOMNUS_CHECK(s >= 0, "split: negative size in {} for x {}", shape_str(sizes), shape_str(x.shape()));
    total += s;
  }
  SOMNUS_CHECK(total == x.shape()[d], "split: sizes {} sum to {} but x {} has {} along dim {}", shape_str(sizes),
               total, shape_str(x.shape()), x.shape()[d], d);
  std::vector<Tensor> parts;
  parts.reserve(sizes.size());
  int64_t at = 0;
  for (int64_t s : sizes) {
    parts.push_back(x.slice(d, at, at + s));
    at += s;
  }
  return parts;
}

Tensor cast(const Tensor& x, DType dtype) {
  check_defined("cast", "x", x);
  return x.to(dtype);
}

}  // namespace somnus::kernels
