// The op front end: validation, output allocation, broadcasting, then dispatch by device to
// kernels::cpu or kernels::cuda (see backend.h for the contract both backends implement).
//
// Every check throws somnus::Error naming the op and the offending shapes/dtypes/devices,
// e.g. "matmul: inner dims differ: a (4, 8) vs b (7, 3)". Index tensors are range-checked on
// the host (a CUDA index tensor is copied to the CPU first), so no backend ever reads out of
// bounds. Outputs are always fresh contiguous tensors on the inputs' device.
#include "kernels/ops.h"

#include <algorithm>
#include <cmath>

#include "kernels/backend.h"
#include "tensor/format.h"
#include "tensor/profiler.h"

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

// One profiler guard per op entry point (tensor/profiler.h: one relaxed load when off).
#define SOMNUS_PROFILE_OP(...) const ::somnus::profiler::OpScope somnus_profile_op_(__VA_ARGS__)

namespace {

// matmul: 2·M·N·K per batch (the DESIGN convention); 0 for shapes the op will reject.
double matmul_flops(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined() || a.dim() < 2 || b.dim() < 2) return 0.0;
  const double batch = a.dim() == 3 ? static_cast<double>(a.size(0)) : 1.0;
  return 2.0 * batch * static_cast<double>(a.size(-2)) * static_cast<double>(a.size(-1)) *
         static_cast<double>(b.size(-1));
}

// attention fwd: 4·B·Hq·T·S·D, halved when causal (T = S: the 4·B·H·T²·D convention).
double attention_flops(const Tensor& q, const Tensor& k, bool causal) {
  if (!q.defined() || !k.defined() || q.dim() != 4 || k.dim() != 4) return 0.0;
  const double f = 4.0 * static_cast<double>(q.size(0)) * static_cast<double>(q.size(1)) *
                   static_cast<double>(q.size(2)) * static_cast<double>(k.size(2)) * static_cast<double>(q.size(3));
  return causal ? f / 2.0 : f;
}

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
  SOMNUS_PROFILE_OP(unary_name(op), {&x});
  const char* name = unary_name(op);
  check_floating(name, "x", x);
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(x.device(), unary, op, x, out, scalar);
  return out;
}

Tensor unary_backward(Unary op, const Tensor& x, const Tensor& dy, double scalar) {
  const std::string name = std::string(unary_name(op)) + "_backward";
  const char* n = name.c_str();
  SOMNUS_PROFILE_OP(n, {&x, &dy});
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
  SOMNUS_PROFILE_OP(binary_name(op), {&a, &b});
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
  SOMNUS_PROFILE_OP("where", {&cond, &a, &b});
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
  SOMNUS_PROFILE_OP(reduce_name(op), {&x});
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
  SOMNUS_PROFILE_OP(reduce_name(op), {&x});
  check_floating(reduce_name(op), "x", x);
  return reduce(op, x.dim() == 0 ? x.unsqueeze(0) : x.reshape({x.numel()}), 0, false);
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  SOMNUS_PROFILE_OP("argmax", {&x});
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
  SOMNUS_PROFILE_OP("sum_to", {&x});
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
  SOMNUS_PROFILE_OP(name, {&x});
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
  SOMNUS_PROFILE_OP(name, {&y, &dy});
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
  SOMNUS_PROFILE_OP("matmul", {&a, &b, &bias}, [&] { return matmul_flops(a, b); });
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
  SOMNUS_PROFILE_OP("embedding", {&weight, &ids});
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
  SOMNUS_PROFILE_OP("embedding_backward", {&dout, &ids});
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
  SOMNUS_PROFILE_OP("gather", {&x, &index});
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
  SOMNUS_PROFILE_OP("scatter_add", {&src, &index});
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
  SOMNUS_PROFILE_OP("index_select", {&x, &index});
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
  SOMNUS_PROFILE_OP("index_add", {&src, &index});
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
  SOMNUS_PROFILE_OP("concat", {xs.empty() ? nullptr : &xs[0]});
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
  SOMNUS_PROFILE_OP("cast", {&x});
  check_defined("cast", "x", x);
  return x.to(dtype);
}


// ---------------------------------------------------------------- fused training-path ops

namespace {

DType norm_stat_dtype(DType d) { return d == DType::f64 ? DType::f64 : DType::f32; }

void check_norm_inputs(const char* op, const Tensor& x, const Tensor& residual, const Tensor& weight,
                       const Tensor& bias) {
  check_floating(op, "x", x);
  check_floating(op, "weight", weight);
  SOMNUS_CHECK(x.dim() >= 1, "{}: x must have at least 1 dim, got {}", op, shape_str(x.shape()));
  SOMNUS_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), "{}: weight must be ({},) for x {}, got {}", op,
               x.size(-1), shape_str(x.shape()), shape_str(weight.shape()));
  check_same_dtype(op, "x", x, "weight", weight);
  check_same_device(op, "x", x, "weight", weight);
  if (residual.defined()) {
    check_same_shape(op, "x", x, "residual", residual);
    check_same_dtype(op, "x", x, "residual", residual);
    check_same_device(op, "x", x, "residual", residual);
  }
  if (bias.defined()) {
    check_same_shape(op, "weight", weight, "bias", bias);
    check_same_dtype(op, "x", x, "bias", bias);
    check_same_device(op, "x", x, "bias", bias);
  }
}

NormResult norm_impl(bool layer, const Tensor& x_in, const Tensor& res_in, const Tensor& w_in, const Tensor& b_in,
                     double eps) {
  const char* op = layer ? "layer_norm" : "rms_norm";
  SOMNUS_PROFILE_OP(op, {&x_in, &res_in, &w_in, &b_in});
  check_norm_inputs(op, x_in, res_in, w_in, b_in);
  SOMNUS_CHECK(eps >= 0.0, "{}: eps must be >= 0, got {}", op, eps);
  const Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const Tensor res = res_in.defined() ? res_in.contiguous() : Tensor();
  const Tensor b = b_in.defined() ? b_in.contiguous() : Tensor();
  const int64_t C = x.size(-1), rows = C == 0 ? 0 : x.numel() / C;
  NormResult r;
  r.y = Tensor::empty(x.shape(), x.dtype(), x.device());
  r.h = res.defined() ? Tensor::empty(x.shape(), x.dtype(), x.device()) : x;
  r.rstd = Tensor::empty({rows}, norm_stat_dtype(x.dtype()), x.device());
  if (layer) r.mean = Tensor::empty({rows}, norm_stat_dtype(x.dtype()), x.device());
  if (x.numel() > 0) {
    SOMNUS_DISPATCH(x.device(), norm_forward, layer, x, res, w, b, eps, r.y, res.defined() ? r.h : Tensor(), r.mean,
                    r.rstd);
  }
  return r;
}

}  // namespace

NormResult rms_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps) {
  return norm_impl(false, x, residual, weight, Tensor(), eps);
}

NormResult layer_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias, double eps) {
  return norm_impl(true, x, residual, weight, bias, eps);
}

NormGrads norm_backward(bool layer, const Tensor& dy_in, const Tensor& dh_in, const Tensor& h_in, const Tensor& w_in,
                        const Tensor& mean, const Tensor& rstd, bool need_bias) {
  const char* op = layer ? "layer_norm_backward" : "rms_norm_backward";
  SOMNUS_PROFILE_OP(op, {&dy_in, &dh_in, &h_in, &w_in});
  check_norm_inputs(op, h_in, dy_in, w_in, Tensor());
  check_defined(op, "rstd", rstd);
  if (dh_in.defined()) {
    check_same_shape(op, "h", h_in, "dh", dh_in);
    check_same_dtype(op, "h", h_in, "dh", dh_in);
  }
  const int64_t C = h_in.size(-1), rows = C == 0 ? 0 : h_in.numel() / C;
  const DType sd = norm_stat_dtype(h_in.dtype());
  SOMNUS_CHECK(rstd.numel() == rows && rstd.dtype() == sd, "{}: rstd must be ({},) {}, got {} {}", op, rows,
               dtype_name(sd), shape_str(rstd.shape()), dtype_name(rstd.dtype()));
  if (layer) {
    check_defined(op, "mean", mean);
    SOMNUS_CHECK(mean.numel() == rows && mean.dtype() == sd, "{}: mean must be ({},) {}, got {}", op, rows,
                 dtype_name(sd), shape_str(mean.shape()));
  }
  const Tensor dy = dy_in.contiguous(), h = h_in.contiguous(), w = w_in.contiguous();
  const Tensor dh = dh_in.defined() ? dh_in.contiguous() : Tensor();
  const int64_t chunks = (rows + kNormRowsPerChunk - 1) / kNormRowsPerChunk;
  NormGrads g;
  g.dh = Tensor::empty(h.shape(), h.dtype(), h.device());
  // The dw and db partials are the two planes of one (planes, chunks, C) buffer, so one column
  // sum and one cast serve both (on CUDA: one launch of 2·C/32 blocks instead of two of C/32;
  // the H100 run of 2026-11-27 put the bf16 LayerNorm backward, with its two sums, at 0.71–0.74
  // of copy against RMSNorm's 0.86).
  const bool bias = need_bias && layer;
  const Tensor parts = Tensor::empty({bias ? 2 : 1, chunks, C}, sd, h.device());
  const Tensor dw_part = parts.select(0, 0), db_part = bias ? parts.select(0, 1) : Tensor();
  if (rows == 0) {
    g.dweight = Tensor::zeros({C}, h.dtype(), h.device());
    if (bias) g.dbias = Tensor::zeros({C}, h.dtype(), h.device());
    return g;
  }
  SOMNUS_DISPATCH(h.device(), norm_backward, layer, dy, dh, h, w, layer ? mean.contiguous() : Tensor(),
                  rstd.contiguous(), g.dh, dw_part, db_part);
  // The chunk partials are summed in a fixed order on both backends. Each column's order does
  // not depend on the number of planes on the CPU and in CUDA's default column kernel (under
  // SOMNUS_REDUCE=v2 the segment plan, and so dw's last bits, may differ with and without db).
  const Tensor sums = cast(reduce(Reduce::sum, parts, 1), h.dtype());  // (planes, C)
  g.dweight = sums.select(0, 0);
  if (bias) g.dbias = sums.select(0, 1);
  return g;
}

Tensor swiglu(const Tensor& gate_in, const Tensor& up_in) {
  SOMNUS_PROFILE_OP("swiglu", {&gate_in, &up_in});
  check_floating("swiglu", "gate", gate_in);
  check_floating("swiglu", "up", up_in);
  check_same_shape("swiglu", "gate", gate_in, "up", up_in);
  check_same_dtype("swiglu", "gate", gate_in, "up", up_in);
  check_same_device("swiglu", "gate", gate_in, "up", up_in);
  const Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  Tensor out = Tensor::empty(gate.shape(), gate.dtype(), gate.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(gate.device(), swiglu, gate, up, out);
  return out;
}

std::pair<Tensor, Tensor> swiglu_backward(const Tensor& gate_in, const Tensor& up_in, const Tensor& dy_in) {
  SOMNUS_PROFILE_OP("swiglu_backward", {&gate_in, &up_in, &dy_in});
  check_floating("swiglu_backward", "gate", gate_in);
  check_floating("swiglu_backward", "up", up_in);
  check_floating("swiglu_backward", "dy", dy_in);
  check_same_shape("swiglu_backward", "gate", gate_in, "up", up_in);
  check_same_shape("swiglu_backward", "gate", gate_in, "dy", dy_in);
  check_same_dtype("swiglu_backward", "gate", gate_in, "up", up_in);
  check_same_dtype("swiglu_backward", "gate", gate_in, "dy", dy_in);
  check_same_device("swiglu_backward", "gate", gate_in, "up", up_in);
  check_same_device("swiglu_backward", "gate", gate_in, "dy", dy_in);
  const Tensor gate = gate_in.contiguous(), up = up_in.contiguous(), dy = dy_in.contiguous();
  Tensor dg = Tensor::empty(gate.shape(), gate.dtype(), gate.device());
  Tensor du = Tensor::empty(gate.shape(), gate.dtype(), gate.device());
  if (dg.numel() > 0) SOMNUS_DISPATCH(gate.device(), swiglu_backward, gate, up, dy, dg, du);
  return {dg, du};
}

Tensor rope(const Tensor& x_in, const Tensor& cos_in, const Tensor& sin_in, const Tensor& positions, bool inverse) {
  SOMNUS_PROFILE_OP("rope", {&x_in, &positions});
  check_floating("rope", "x", x_in);
  check_floating("rope", "cos", cos_in);
  check_floating("rope", "sin", sin_in);
  check_index_dtype("rope", "positions", positions);
  SOMNUS_CHECK(x_in.dim() == 4 && x_in.size(3) % 2 == 0, "rope: x must be (B, H, T, D) with D even, got {}",
               shape_str(x_in.shape()));
  const int64_t B = x_in.size(0), T = x_in.size(2), half = x_in.size(3) / 2;
  SOMNUS_CHECK(cos_in.dim() == 2 && cos_in.size(1) == half && cos_in.shape() == sin_in.shape(),
               "rope: cos and sin must be (P, {}) for x {}, got cos {} sin {}", half, shape_str(x_in.shape()),
               shape_str(cos_in.shape()), shape_str(sin_in.shape()));
  check_same_dtype("rope", "x", x_in, "cos", cos_in);
  check_same_dtype("rope", "x", x_in, "sin", sin_in);
  check_same_device("rope", "x", x_in, "cos", cos_in);
  check_same_device("rope", "x", x_in, "sin", sin_in);
  check_same_device("rope", "x", x_in, "positions", positions);
  SOMNUS_CHECK((positions.dim() == 1 && positions.size(0) == T) ||
                   (positions.dim() == 2 && positions.size(0) == B && positions.size(1) == T),
               "rope: positions must be (T,) or (B, T) = ({}, {}) for x {}, got {}", B, T, shape_str(x_in.shape()),
               shape_str(positions.shape()));
  check_index_range("rope", "positions", positions, cos_in.size(0), "cos " + shape_str(cos_in.shape()));
  const Tensor x = x_in.contiguous(), c = cos_in.contiguous(), s = sin_in.contiguous();
  const Tensor pos = positions.dtype() == DType::i64 ? positions.contiguous() : positions.to(positions.device(), DType::i64).contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  if (out.numel() > 0) SOMNUS_DISPATCH(x.device(), rope, x, c, s, pos, inverse, out);
  return out;
}

}  // namespace somnus::kernels

// ---------------------------------------------------------------- attention (issue 4 §1)
namespace somnus::kernels {

namespace {

struct AttnShape {
  int64_t B, Hq, Hkv, T, S, D;
};

AttnShape check_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                          double& scale, int64_t q_offset) {
  check_floating(op, "q", q);
  check_floating(op, "k", k);
  check_floating(op, "v", v);
  check_same_dtype(op, "q", q, "k", k);
  check_same_dtype(op, "q", q, "v", v);
  check_same_device(op, "q", q, "k", k);
  check_same_device(op, "q", q, "v", v);
  SOMNUS_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4,
               "{}: expected q (B, Hq, T, D), k and v (B, Hkv, S, D), got q {} k {} v {}", op, shape_str(q.shape()),
               shape_str(k.shape()), shape_str(v.shape()));
  const AttnShape s{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), q.size(3)};
  SOMNUS_CHECK(k.shape() == v.shape() && k.size(0) == s.B && k.size(3) == s.D,
               "{}: k and v must be (B, Hkv, S, D) = ({}, Hkv, S, {}), got q {} k {} v {}", op, s.B, s.D,
               shape_str(q.shape()), shape_str(k.shape()), shape_str(v.shape()));
  SOMNUS_CHECK(s.Hkv > 0 && s.Hq % s.Hkv == 0, "{}: kv heads ({}) must divide query heads ({}): q {} k {}", op, s.Hkv,
               s.Hq, shape_str(q.shape()), shape_str(k.shape()));
  SOMNUS_CHECK(s.D > 0 && s.S > 0, "{}: need D > 0 and at least one key, got q {} k {}", op, shape_str(q.shape()),
               shape_str(k.shape()));
  SOMNUS_CHECK(!causal || q_offset >= 0, "{}: causal q_offset must be >= 0 (every query sees a key), got {}", op,
               q_offset);
  if (q.device().is_cuda()) {
    SOMNUS_CHECK((s.D == 64 || s.D == 128) && q.dtype() != DType::f64,
                 "{}: the CUDA kernels take head dim 64 or 128 and f32/bf16, got q {} {}", op, shape_str(q.shape()),
                 dtype_name(q.dtype()));
  }
  if (!(scale > 0.0)) scale = 1.0 / std::sqrt(static_cast<double>(s.D));
  return s;
}

DType lse_dtype(DType d) { return d == DType::f64 ? DType::f64 : DType::f32; }

// K or V for the attention forward / decode: the CPU kernels index heads by stride, so a
// (B, Hkv, S, D) view with contiguous rows (a KV cache's prefix) goes in place; anything else
// is made contiguous. On CUDA only the decode kernels take strides (the forward's tensor-core
// kernel wants contiguous K, V), and they want K and V with the same strides: kv_pair_operands.
// The stride of a size-1 dimension is never used (and contiguous() keeps a view whose only odd
// strides are there, as is_contiguous() ignores them), so it reads as 0.
int64_t used_stride(const Tensor& t, int dim) { return t.size(dim) == 1 ? 0 : t.stride(dim); }
bool rows_contiguous(const Tensor& t) {
  return (t.size(3) == 1 || t.stride(3) == 1) && (t.size(2) == 1 || t.stride(2) == t.size(3)) &&
         used_stride(t, 0) >= 0 && used_stride(t, 1) >= 0;
}
Tensor kv_operand(const Tensor& t) { return !t.device().is_cuda() && rows_contiguous(t) ? t : t.contiguous(); }
std::pair<Tensor, Tensor> kv_pair_operands(const Tensor& k, const Tensor& v) {
  if (!k.device().is_cuda()) return {kv_operand(k), kv_operand(v)};
  const bool in_place = rows_contiguous(k) && rows_contiguous(v) && used_stride(k, 0) == used_stride(v, 0) &&
                        used_stride(k, 1) == used_stride(v, 1);
  return in_place ? std::pair{k, v} : std::pair{k.contiguous(), v.contiguous()};
}

}  // namespace

AttentionOutput attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                              int64_t q_offset) {
  SOMNUS_PROFILE_OP("attention_fwd", {&q, &k, &v}, [&] { return attention_flops(q, k, causal); });
  const AttnShape s = check_attention("attention_fwd", q, k, v, causal, scale, q_offset);
  AttentionOutput out{Tensor::empty({s.B, s.Hq, s.T, s.D}, q.dtype(), q.device()),
                      Tensor::empty({s.B, s.Hq, s.T}, lse_dtype(q.dtype()), q.device())};
  if (out.o.numel() > 0) {
    SOMNUS_DISPATCH(q.device(), attention_fwd, q.contiguous(), kv_operand(k), kv_operand(v), causal, scale, q_offset,
                    out.o, out.lse);
  }
  return out;
}

AttentionGrads attention_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, const Tensor& lse,
                             const Tensor& dout, bool causal, double scale, int64_t q_offset, bool deterministic) {
  const char* op = "attention_bwd";
  SOMNUS_PROFILE_OP(op, {&q, &k, &v, &dout}, [&] { return 2.5 * attention_flops(q, k, causal); });
  const AttnShape s = check_attention(op, q, k, v, causal, scale, q_offset);
  check_floating(op, "o", o);
  check_floating(op, "dout", dout);
  check_floating(op, "lse", lse);
  check_same_shape(op, "q", q, "o", o);
  check_same_shape(op, "q", q, "dout", dout);
  check_same_dtype(op, "q", q, "o", o);
  check_same_dtype(op, "q", q, "dout", dout);
  check_same_device(op, "q", q, "o", o);
  check_same_device(op, "q", q, "dout", dout);
  check_same_device(op, "q", q, "lse", lse);
  SOMNUS_CHECK(lse.shape() == Shape({s.B, s.Hq, s.T}) && lse.dtype() == lse_dtype(q.dtype()),
               "{}: lse must be {} ({}, {}, {}) as attention_fwd returns it, got {} {}", op,
               dtype_name(lse_dtype(q.dtype())), s.B, s.Hq, s.T, dtype_name(lse.dtype()), shape_str(lse.shape()));
  AttentionGrads g{Tensor::empty(q.shape(), q.dtype(), q.device()), Tensor::empty(k.shape(), k.dtype(), k.device()),
                   Tensor::empty(v.shape(), v.dtype(), v.device())};
  if (q.numel() == 0) {
    g.dk.fill_(0.0);
    g.dv.fill_(0.0);
    return g;
  }
  SOMNUS_DISPATCH(q.device(), attention_bwd, q.contiguous(), k.contiguous(), v.contiguous(), o.contiguous(),
                  lse.contiguous(), dout.contiguous(), causal, scale, q_offset, deterministic, g.dq, g.dk, g.dv);
  return g;
}

AttentionOutput attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, bool causal,
                                 double scale, int64_t q_offset, int64_t num_splits) {
  SOMNUS_PROFILE_OP("attention_decode", {&q, &k_cache, &v_cache}, [&] { return attention_flops(q, k_cache, false); });
  const AttnShape s = check_attention("attention_decode", q, k_cache, v_cache, causal, scale, q_offset);
  // num_splits <= 0 goes through: each backend chooses its own (CPU: chunks of >= 256 keys;
  // CUDA: by the wave efficiency on the device, kernels/decode_splits.h).
  num_splits = std::min(num_splits, s.S);
  AttentionOutput out{Tensor::empty({s.B, s.Hq, s.T, s.D}, q.dtype(), q.device()),
                      Tensor::empty({s.B, s.Hq, s.T}, lse_dtype(q.dtype()), q.device())};
  if (out.o.numel() > 0) {
    const auto [k, v] = kv_pair_operands(k_cache, v_cache);
    SOMNUS_DISPATCH(q.device(), attention_decode, q.contiguous(), k, v, causal, scale, q_offset, num_splits, out.o,
                    out.lse);
  }
  return out;
}


void adamw_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avg,
                const std::vector<Tensor>& exp_avg_sq, const std::vector<AdamWHyper>& hyper, const Tensor& clip_scale,
                const std::vector<Tensor>& bf16_params, bool stochastic_rounding, uint64_t seed) {
  SOMNUS_PROFILE_OP("adamw_step", {params.empty() ? nullptr : &params[0]});
  const size_t n = params.size();
  SOMNUS_CHECK(grads.size() == n && exp_avg.size() == n && exp_avg_sq.size() == n && hyper.size() == n,
               "adamw_step: list lengths differ: params {}, grads {}, exp_avg {}, exp_avg_sq {}, hyper {}", n,
               grads.size(), exp_avg.size(), exp_avg_sq.size(), hyper.size());
  SOMNUS_CHECK(bf16_params.empty() || bf16_params.size() == n,
               "adamw_step: bf16_params must be empty or one per tensor ({}), got {}", n, bf16_params.size());
  if (n == 0) return;
  for (size_t i = 0; i < n; ++i) {
    const Tensor& p = params[i];
    check_floating("adamw_step", "params[i]", p);
    SOMNUS_CHECK(p.dtype() != DType::bf16, "adamw_step: params[{}] must be f32 or f64 (the master weights), got bf16",
                 i);
    SOMNUS_CHECK(p.device() == params[0].device(), "adamw_step: params[{}] on {} vs params[0] on {}", i,
                 p.device().str(), params[0].device().str());
    for (const Tensor* t : {&grads[i], &exp_avg[i], &exp_avg_sq[i]}) {
      check_defined("adamw_step", "grads/exp_avg/exp_avg_sq", *t);
      check_same_shape("adamw_step", "param", p, "grad/state", *t);
      check_same_dtype("adamw_step", "param", p, "grad/state", *t);
      check_same_device("adamw_step", "param", p, "grad/state", *t);
    }
    for (const Tensor* t : {&p, &grads[i], &exp_avg[i], &exp_avg_sq[i]}) {
      SOMNUS_CHECK(t->is_contiguous(), "adamw_step: tensor {} {} must be contiguous", i, shape_str(t->shape()));
    }
    const AdamWHyper& h = hyper[i];
    SOMNUS_CHECK(h.step >= 1 && h.beta1 >= 0 && h.beta1 < 1 && h.beta2 >= 0 && h.beta2 < 1 && h.eps >= 0,
                 "adamw_step: tensor {}: need step >= 1, betas in [0, 1), eps >= 0; got step {} betas ({}, {}) eps {}",
                 i, h.step, h.beta1, h.beta2, h.eps);
    if (!bf16_params.empty() && bf16_params[i].defined()) {
      const Tensor& b = bf16_params[i];
      SOMNUS_CHECK(b.dtype() == DType::bf16 && b.is_contiguous() && b.shape() == p.shape() && b.device() == p.device(),
                   "adamw_step: bf16_params[{}] must be a contiguous bf16 {} on {}, got {} {} on {}", i,
                   shape_str(p.shape()), p.device().str(), dtype_name(b.dtype()), shape_str(b.shape()),
                   b.device().str());
    }
  }
  if (clip_scale.defined()) {
    check_floating("adamw_step", "clip_scale", clip_scale);
    SOMNUS_CHECK(clip_scale.numel() == 1 && clip_scale.device() == params[0].device() &&
                     clip_scale.dtype() != DType::bf16,
                 "adamw_step: clip_scale must be one f32/f64 element on {}, got {} {} on {}", params[0].device().str(),
                 dtype_name(clip_scale.dtype()), shape_str(clip_scale.shape()), clip_scale.device().str());
  }
  const Tensor clip = clip_scale.defined() ? clip_scale.contiguous() : Tensor();
  SOMNUS_DISPATCH(params[0].device(), adamw_step, params, grads, exp_avg, exp_avg_sq, hyper, clip, bf16_params,
                  stochastic_rounding, seed);
}

}  // namespace somnus::kernels
// ---------------------------------------------------------------- end attention
