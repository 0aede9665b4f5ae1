// Backward rules of the differentiable functions (functions.h), micrograd-style: each op
// runs its kernel, then records a lambda that maps the output gradient to input gradients
// using kernels:: ops. Lambdas capture only detached tensors (no reference cycles) and only
// what the gradients that are actually needed use.
#include "autograd/functions.h"

#include <algorithm>

#include "autograd/engine.h"
#include "autograd/node.h"
#include "kernels/ops.h"
#include "tensor/format.h"

namespace somnus {

using autograd::record;
using autograd::TensorList;
using kernels::Binary;
using kernels::Reduce;
using kernels::Unary;

namespace {

using GradFn = std::function<Tensor(const Tensor& g)>;

int64_t wrap_dim(int64_t d, int64_t nd, const char* op) {
  const int64_t w = d < 0 ? d + nd : d;
  SOMNUS_CHECK(w >= 0 && w < nd, "{}: dim {} out of range for a tensor with {} dims", op, d, nd);
  return w;
}

bool wants_grad(const Tensor& t) { return t.defined() && (t.requires_grad() || t.grad_fn()); }

Tensor scalar_like(double v, const Tensor& x) { return Tensor::scalar(v, x.dtype(), x.device()); }

Tensor k_sub(const Tensor& a, const Tensor& b) { return kernels::binary(Binary::sub, a, b); }
Tensor k_mul(const Tensor& a, const Tensor& b) { return kernels::binary(Binary::mul, a, b); }
Tensor k_div(const Tensor& a, const Tensor& b) { return kernels::binary(Binary::div, a, b); }
Tensor k_neg(const Tensor& a) { return kernels::unary(Unary::neg, a); }

// A broadcasting binary op: da/db give each input's gradient at the output's shape, and are
// then summed back to the input's shape. A side that needs no gradient drops its rule (and
// with it the tensors the rule saved).
Tensor record_binary(const char* name, const Tensor& a, const Tensor& b, Tensor y, GradFn da, GradFn db) {
  if (!wants_grad(a)) da = nullptr;
  if (!wants_grad(b)) db = nullptr;
  return record(
      name, {a, b}, std::move(y),
      [da = std::move(da), db = std::move(db), sa = a.shape(), sb = b.shape()](const TensorList& g) {
        return TensorList{da ? kernels::sum_to(da(g[0]), sa) : Tensor(), db ? kernels::sum_to(db(g[0]), sb) : Tensor()};
      });
}

// Sends the gradient of a reduction over dim back over the reduced dim.
Tensor expand_back(const Tensor& g, const Shape& shape, int64_t dim, bool keepdim) {
  return (keepdim ? g : g.unsqueeze(dim)).expand(shape);
}

Tensor unary_op(Unary op, const Tensor& x, double scalar = 0.0) {
  return record(kernels::unary_name(op), {x}, kernels::unary(op, x, scalar),
                [op, scalar, x = x.detach()](const TensorList& g) {
                  return TensorList{kernels::unary_backward(op, x, g[0], scalar)};
                });
}

}  // namespace

// ---------------------------------------------------------------- elementwise, binary

Tensor add(const Tensor& a, const Tensor& b) {
  return record_binary(
      "add", a, b, kernels::binary(Binary::add, a, b), [](const Tensor& g) { return g; },
      [](const Tensor& g) { return g; });
}

Tensor sub(const Tensor& a, const Tensor& b) {
  return record_binary(
      "sub", a, b, kernels::binary(Binary::sub, a, b), [](const Tensor& g) { return g; },
      [](const Tensor& g) { return k_neg(g); });
}

Tensor mul(const Tensor& a, const Tensor& b) {
  return record_binary(
      "mul", a, b, kernels::binary(Binary::mul, a, b), [b = b.detach()](const Tensor& g) { return k_mul(g, b); },
      [a = a.detach()](const Tensor& g) { return k_mul(g, a); });
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor y = kernels::binary(Binary::div, a, b);
  // d(a/b)/db = -a/b² = -y/b
  return record_binary(
      "div", a, b, y, [b = b.detach()](const Tensor& g) { return k_div(g, b); },
      [b = b.detach(), y = y.detach()](const Tensor& g) { return k_neg(k_div(k_mul(g, y), b)); });
}

// NaN where t is NaN, else 0 (minimum and maximum propagate NaN; ±inf collapse to 0): with
// where(), which takes NaN as true, a NaN test built from the kernels we have.
static Tensor nan_or_zero(const Tensor& t) {
  const Tensor zero = scalar_like(0.0, t);
  return kernels::binary(Binary::maximum, kernels::binary(Binary::minimum, t, zero), zero);
}

// 1 where u == v (the same infinity included), else 0; 0 where either is NaN. u − v alone is
// not enough: it is NaN for the same infinity, and where() takes NaN as true.
static Tensor equal_mask(const Tensor& u, const Tensor& v) {
  const Tensor zero = scalar_like(0.0, u), one = scalar_like(1.0, u);
  const Tensor d = k_sub(u, v);
  Tensor m = kernels::where(d, zero, one);            // u − v == 0
  m = kernels::where(nan_or_zero(d), one, m);         // or NaN: the same infinity, or a NaN operand
  m = kernels::where(nan_or_zero(u), zero, m);        // ... but not a NaN operand
  return kernels::where(nan_or_zero(v), zero, m);
}

// maximum and minimum: an operand's share of the gradient is 1 where it alone is the result,
// 1/2 on ties (the same infinity included, as PyTorch), 0 where the other is. A NaN operand
// is the result (it propagates), as in max(x); two NaNs share. The shares are computed once
// in the forward and saved.
static Tensor min_max(Binary op, const char* name, const Tensor& a, const Tensor& b) {
  Tensor y = kernels::binary(op, a, b);
  if (!autograd::needs_grad({a, b})) return y;
  const Tensor one = scalar_like(1.0, y), zero = scalar_like(0.0, y), half = scalar_like(0.5, y);
  const Tensor a_is = kernels::where(nan_or_zero(a), one, equal_mask(y, a));
  const Tensor b_is = kernels::where(nan_or_zero(b), one, equal_mask(y, b));
  const Tensor a_share = kernels::where(a_is, kernels::where(b_is, half, one), zero);
  const Tensor b_share = kernels::where(b_is, kernels::where(a_is, half, one), zero);
  return record_binary(
      name, a, b, y, [s = a_share](const Tensor& g) { return k_mul(g, s); },
      [s = b_share](const Tensor& g) { return k_mul(g, s); });
}

Tensor maximum(const Tensor& a, const Tensor& b) { return min_max(Binary::maximum, "maximum", a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return min_max(Binary::minimum, "minimum", a, b); }

Tensor add(const Tensor& a, double b) { return add(a, scalar_like(b, a)); }
Tensor sub(const Tensor& a, double b) { return sub(a, scalar_like(b, a)); }
Tensor sub(double a, const Tensor& b) { return sub(scalar_like(a, b), b); }
Tensor mul(const Tensor& a, double b) { return mul(a, scalar_like(b, a)); }
Tensor div(const Tensor& a, double b) { return div(a, scalar_like(b, a)); }
Tensor div(double a, const Tensor& b) { return div(scalar_like(a, b), b); }

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator+(const Tensor& a, double b) { return add(a, b); }
Tensor operator-(const Tensor& a, double b) { return sub(a, b); }
Tensor operator*(const Tensor& a, double b) { return mul(a, b); }
Tensor operator/(const Tensor& a, double b) { return div(a, b); }
Tensor operator+(double a, const Tensor& b) { return add(b, a); }
Tensor operator-(double a, const Tensor& b) { return sub(a, b); }
Tensor operator*(double a, const Tensor& b) { return mul(b, a); }
Tensor operator/(double a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& x) { return neg(x); }

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  Tensor y = kernels::where(cond, a, b);
  if (!autograd::needs_grad({a, b})) return y;
  Tensor zero = scalar_like(0.0, y);
  return record_binary(
      "where", a, b, y, [cond = cond.detach(), zero](const Tensor& g) { return kernels::where(cond, g, zero); },
      [cond = cond.detach(), zero](const Tensor& g) { return kernels::where(cond, zero, g); });
}

Tensor where(const Tensor& cond, const Tensor& a, double b) { return where(cond, a, scalar_like(b, a)); }

// ---------------------------------------------------------------- elementwise, unary

Tensor neg(const Tensor& x) {
  return record("neg", {x}, k_neg(x), [](const TensorList& g) { return TensorList{k_neg(g[0])}; });
}
Tensor exp(const Tensor& x) { return unary_op(Unary::exp, x); }
Tensor log(const Tensor& x) { return unary_op(Unary::log, x); }
Tensor sqrt(const Tensor& x) { return unary_op(Unary::sqrt, x); }
Tensor rsqrt(const Tensor& x) { return unary_op(Unary::rsqrt, x); }
Tensor tanh(const Tensor& x) { return unary_op(Unary::tanh, x); }
Tensor sigmoid(const Tensor& x) { return unary_op(Unary::sigmoid, x); }
Tensor relu(const Tensor& x) { return unary_op(Unary::relu, x); }
Tensor gelu(const Tensor& x) { return unary_op(Unary::gelu, x); }
Tensor silu(const Tensor& x) { return unary_op(Unary::silu, x); }
Tensor abs(const Tensor& x) { return unary_op(Unary::abs, x); }
Tensor square(const Tensor& x) { return unary_op(Unary::square, x); }
Tensor pow(const Tensor& x, double exponent) { return unary_op(Unary::pow, x, exponent); }

// ---------------------------------------------------------------- reductions

Tensor sum(const Tensor& x, int64_t dim, bool keepdim) {
  const int64_t d = wrap_dim(dim, x.dim(), "sum");
  return record("sum", {x}, kernels::reduce(Reduce::sum, x, d, keepdim),
                [shape = x.shape(), d, keepdim](const TensorList& g) {
                  return TensorList{expand_back(g[0], shape, d, keepdim)};
                });
}

Tensor mean(const Tensor& x, int64_t dim, bool keepdim) {
  const int64_t d = wrap_dim(dim, x.dim(), "mean");
  return record("mean", {x}, kernels::reduce(Reduce::mean, x, d, keepdim),
                [shape = x.shape(), d, keepdim](const TensorList& g) {
                  Tensor scaled = k_div(g[0], scalar_like(static_cast<double>(shape[d]), g[0]));
                  return TensorList{expand_back(scaled, shape, d, keepdim)};
                });
}

Tensor max(const Tensor& x, int64_t dim, bool keepdim) {
  const int64_t d = wrap_dim(dim, x.dim(), "max");
  // The argmax is recomputed from the saved input in backward rather than saved: x is
  // usually alive anyway, and the i64 indices would be the bigger tensor.
  return record("max", {x}, kernels::reduce(Reduce::max, x, d, keepdim),
                [x = x.detach(), d, keepdim](const TensorList& g) {
                  Tensor index = kernels::argmax(x, d, /*keepdim=*/true);
                  Tensor src = keepdim ? g[0] : g[0].unsqueeze(d);
                  return TensorList{kernels::scatter_add(x.shape(), d, index, src)};
                });
}

Tensor sum(const Tensor& x) {
  return record("sum", {x}, kernels::reduce_all(Reduce::sum, x),
                [shape = x.shape()](const TensorList& g) { return TensorList{g[0].expand(shape)}; });
}

Tensor mean(const Tensor& x) {
  return record("mean", {x}, kernels::reduce_all(Reduce::mean, x), [shape = x.shape()](const TensorList& g) {
    Tensor scaled = k_div(g[0], scalar_like(static_cast<double>(shape_numel(shape)), g[0]));
    return TensorList{scaled.expand(shape)};
  });
}

Tensor max(const Tensor& x) {
  Tensor y = kernels::reduce_all(Reduce::max, x);
  return record("max", {x}, y, [x = x.detach(), y = y.detach()](const TensorList& g) {
    // x == y, the same infinity included (a +inf maximum, or an all −inf x: x − y alone would
    // drop every maximum and give NaN gradients), as min_max's shares. NaN maxima: y is NaN
    // exactly when some x is, and then the gradient goes to the NaN elements (as PyTorch's).
    const Tensor is_max = kernels::where(nan_or_zero(x), scalar_like(1.0, x), equal_mask(x, y));
    Tensor count = kernels::reduce_all(Reduce::sum, is_max);
    return TensorList{k_mul(is_max, k_div(g[0], count))};
  });
}

// ---------------------------------------------------------------- softmax

Tensor softmax(const Tensor& x, int64_t dim) {
  const int64_t d = wrap_dim(dim, x.dim(), "softmax");
  if (d != x.dim() - 1) return transpose(softmax(transpose(x, d, -1), -1), d, -1);
  Tensor y = kernels::softmax(x);
  return record("softmax", {x}, y,
                [y = y.detach()](const TensorList& g) { return TensorList{kernels::softmax_backward(y, g[0])}; });
}

Tensor log_softmax(const Tensor& x, int64_t dim) {
  const int64_t d = wrap_dim(dim, x.dim(), "log_softmax");
  if (d != x.dim() - 1) return transpose(log_softmax(transpose(x, d, -1), -1), d, -1);
  Tensor y = kernels::log_softmax(x);
  return record("log_softmax", {x}, y,
                [y = y.detach()](const TensorList& g) { return TensorList{kernels::log_softmax_backward(y, g[0])}; });
}

// ---------------------------------------------------------------- matmul

Tensor matmul(const Tensor& a, const Tensor& b, const Tensor& bias, bool gelu) {
  const bool grad = autograd::needs_grad({a, b, bias});
  Tensor pre_gelu;  // (…, M, N) a @ b + bias, before the GELU epilogue
  Tensor y = kernels::matmul(a, b, bias, gelu, grad && gelu ? &pre_gelu : nullptr);
  if (!grad) return y;
  const bool need_a = wants_grad(a), need_b = wants_grad(b), need_bias = wants_grad(bias);
  // dA needs B and dB needs A: save each only when the other's gradient is wanted.
  return record(gelu ? "matmul_gelu" : "matmul", {a, b, bias}, y,
                [a = need_b ? a.detach() : Tensor(), b = need_a ? b.detach() : Tensor(), b_shape = b.shape(),
                 pre_gelu = gelu ? pre_gelu.detach() : Tensor(), gelu, need_a, need_b, need_bias](const TensorList& g) {
                  const Tensor gz = gelu ? kernels::unary_backward(Unary::gelu, pre_gelu, g[0]) : g[0];
                  const int64_t n = gz.size(-1);
                  Tensor ga, gb, gbias;
                  if (need_a) ga = kernels::matmul(gz, b.transpose(-2, -1));  // (…, M, N) @ (…, N, K)
                  if (need_b) {
                    // b is shared by every batch when it is 2-D or a 3-D batch of one (kernels::matmul
                    // takes both): its gradient sums over a's batch too. (b itself is saved only when
                    // dA is needed, so its shape is.)
                    const bool shared_b = a.dim() == 3 && (b_shape.size() == 2 || b_shape[0] == 1);
                    if (shared_b) {
                      const int64_t k = a.size(-1);
                      gb = kernels::matmul(a.reshape({-1, k}).transpose(0, 1), gz.reshape({-1, n}));  // (K, N)
                      if (b_shape.size() == 3) gb = gb.unsqueeze(0);                                   // (1, K, N)
                    } else {
                      gb = kernels::matmul(a.transpose(-2, -1), gz);  // (…, K, M) @ (…, M, N)
                    }
                  }
                  if (need_bias) gbias = kernels::sum_to(gz, {n});
                  return TensorList{ga, gb, gbias};
                });
}

// ---------------------------------------------------------------- indexing

Tensor embedding(const Tensor& weight, const Tensor& ids) {
  return record("embedding", {weight}, kernels::embedding(weight, ids),
                [ids = ids.detach(), vocab = weight.size(0), det = autograd::is_deterministic()](const TensorList& g) {
                  return TensorList{kernels::embedding_backward(g[0], ids, vocab, det)};
                });
}

// Deterministic mode (engine.h): the CUDA scatter kernels add atomically, so scatter on the host.
static bool scatter_on_host(const Tensor& src, bool det) { return det && !src.device().is_cpu(); }

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  Tensor y = kernels::gather(x, dim, index);
  return record("gather", {x}, y,
                [shape = x.shape(), dim, index = index.detach(), det = autograd::is_deterministic()](const TensorList& g) {
                  if (scatter_on_host(g[0], det)) {
                    return TensorList{kernels::scatter_add(shape, dim, index.cpu(), g[0].cpu()).to(g[0].device())};
                  }
                  return TensorList{kernels::scatter_add(shape, dim, index, g[0])};
                });
}

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  Tensor y = kernels::index_select(x, dim, index);
  return record("index_select", {x}, y,
                [shape = x.shape(), dim, index = index.detach(), det = autograd::is_deterministic()](const TensorList& g) {
                  if (scatter_on_host(g[0], det)) {
                    return TensorList{kernels::index_add(shape, dim, index.cpu(), g[0].cpu()).to(g[0].device())};
                  }
                  return TensorList{kernels::index_add(shape, dim, index, g[0])};
                });
}

Tensor concat(const std::vector<Tensor>& xs, int64_t dim) {
  Tensor y = kernels::concat(xs, dim);  // validates xs
  const int64_t d = wrap_dim(dim, xs[0].dim(), "concat");
  std::vector<int64_t> sizes;
  for (const Tensor& x : xs) sizes.push_back(x.size(d));
  return record("concat", xs, y, [sizes, d](const TensorList& g) { return kernels::split(g[0], sizes, d); });
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  std::vector<Tensor> ys = kernels::split(x, sizes, dim);  // validates sizes
  const int64_t d = wrap_dim(dim, x.dim(), "split");
  return record("split", {x}, std::move(ys),
                [shape = x.shape(), dtype = x.dtype(), device = x.device(), sizes, d](const TensorList& g) {
                  bool all = true;
                  for (const Tensor& t : g) all = all && t.defined();
                  if (all) return TensorList{kernels::concat(g, d)};
                  // Pieces nobody used contribute zeros.
                  Tensor gx = Tensor::zeros(shape, dtype, device);
                  int64_t offset = 0;
                  for (size_t i = 0; i < sizes.size(); ++i) {
                    if (g[i].defined()) gx.slice(d, offset, offset + sizes[i]).copy_(g[i]);
                    offset += sizes[i];
                  }
                  return TensorList{gx};
                });
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  SOMNUS_CHECK(chunks > 0, "chunk: chunks must be positive, got {}", chunks);
  const int64_t d = wrap_dim(dim, x.dim(), "chunk");
  const int64_t n = x.size(d), step = (n + chunks - 1) / chunks;
  std::vector<int64_t> sizes;
  for (int64_t offset = 0; offset < n; offset += step) sizes.push_back(std::min(step, n - offset));
  if (sizes.empty()) sizes.push_back(0);
  return split(x, sizes, d);
}

// ---------------------------------------------------------------- views and copies

Tensor view(const Tensor& x, const Shape& shape) {
  return record("view", {x}, x.view(shape),
                [s = x.shape()](const TensorList& g) { return TensorList{g[0].reshape(s)}; });
}

Tensor reshape(const Tensor& x, const Shape& shape) {
  return record("reshape", {x}, x.reshape(shape),
                [s = x.shape()](const TensorList& g) { return TensorList{g[0].reshape(s)}; });
}

Tensor flatten(const Tensor& x) { return reshape(x, {x.numel()}); }

Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  return record("transpose", {x}, x.transpose(d0, d1),
                [d0, d1](const TensorList& g) { return TensorList{g[0].transpose(d0, d1)}; });
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  Tensor y = x.permute(dims);  // validates dims
  std::vector<int64_t> inverse(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) inverse[wrap_dim(dims[i], x.dim(), "permute")] = static_cast<int64_t>(i);
  return record("permute", {x}, y, [inverse](const TensorList& g) { return TensorList{g[0].permute(inverse)}; });
}

Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  return record(
      "slice", {x}, x.slice(dim, start, end, step),
      [shape = x.shape(), dtype = x.dtype(), device = x.device(), dim, start, end, step](const TensorList& g) {
        Tensor gx = Tensor::zeros(shape, dtype, device);
        gx.slice(dim, start, end, step).copy_(g[0]);
        return TensorList{gx};
      });
}

Tensor select(const Tensor& x, int64_t dim, int64_t index) {
  return record("select", {x}, x.select(dim, index),
                [shape = x.shape(), dtype = x.dtype(), device = x.device(), dim, index](const TensorList& g) {
                  Tensor gx = Tensor::zeros(shape, dtype, device);
                  gx.select(dim, index).copy_(g[0]);
                  return TensorList{gx};
                });
}

Tensor expand(const Tensor& x, const Shape& shape) {
  return record("expand", {x}, x.expand(shape),
                [s = x.shape()](const TensorList& g) { return TensorList{kernels::sum_to(g[0], s)}; });
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  return record("unsqueeze", {x}, x.unsqueeze(dim),
                [s = x.shape()](const TensorList& g) { return TensorList{g[0].reshape(s)}; });
}

Tensor squeeze(const Tensor& x, int64_t dim) {
  return record("squeeze", {x}, x.squeeze(dim),
                [s = x.shape()](const TensorList& g) { return TensorList{g[0].reshape(s)}; });
}

Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  return record("contiguous", {x}, x.contiguous(), [](const TensorList& g) { return TensorList{g[0]}; });
}

Tensor to(const Tensor& x, DType dtype) {
  if (x.dtype() == dtype) return x;
  Tensor y = kernels::cast(x, dtype);
  if (!is_floating(dtype) || !is_floating(x.dtype())) return y;
  return record("to", {x}, y,
                [from = x.dtype()](const TensorList& g) { return TensorList{kernels::cast(g[0], from)}; });
}

Tensor to(const Tensor& x, Device device) {
  if (x.device() == device) return x;
  return record("to", {x}, x.to(device),
                [from = x.device()](const TensorList& g) { return TensorList{g[0].to(from)}; });
}


// ---------------------------------------------------------------- fused training-path ops

namespace {

NormOutput norm_op(bool layer, const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias,
                   double eps) {
  kernels::NormResult r = layer ? kernels::layer_norm(x, residual, weight, bias, eps)
                                : kernels::rms_norm(x, residual, weight, eps);
  const bool with_res = residual.defined();
  const bool with_bias = bias.defined();
  auto fn = [layer, with_res, with_bias, h = r.h.detach(), w = weight.detach(), mean = r.mean, rstd = r.rstd](
                const TensorList& g) {
    const Tensor& dy = g[0];
    const Tensor dh_extra = with_res && g.size() > 1 ? g[1] : Tensor();
    Tensor dh, dw, db;
    if (dy.defined()) {
      kernels::NormGrads k = kernels::norm_backward(layer, dy, dh_extra, h, w, mean, rstd, with_bias);
      dh = k.dh;
      dw = k.dweight;
      db = k.dbias;
    } else {
      dh = dh_extra;
    }
    return TensorList{dh, with_res ? dh : Tensor(), dw, db};
  };
  const char* name = layer ? "layer_norm" : "rms_norm";
  if (!with_res) {
    Tensor y = record(name, {x, Tensor(), weight, bias}, r.y, fn);
    return {y, x};
  }
  TensorList outs = record(name, {x, residual, weight, bias}, TensorList{r.y, r.h}, fn);
  return {outs[0], outs[1]};
}

}  // namespace

NormOutput rms_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps) {
  return norm_op(false, x, residual, weight, Tensor(), eps);
}

NormOutput layer_norm(const Tensor& x, const Tensor& residual, const Tensor& weight, const Tensor& bias, double eps) {
  return norm_op(true, x, residual, weight, bias, eps);
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  return record("swiglu", {gate, up}, kernels::swiglu(gate, up),
                [gate = gate.detach(), up = up.detach()](const TensorList& g) {
                  auto [dg, du] = kernels::swiglu_backward(gate, up, g[0]);
                  return TensorList{dg, du};
                });
}

Tensor rope(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& positions) {
  return record("rope", {x}, kernels::rope(x, cos, sin, positions),
                [cos = cos.detach(), sin = sin.detach(), positions = positions.detach()](const TensorList& g) {
                  return TensorList{kernels::rope(g[0], cos, sin, positions, /*inverse=*/true)};
                });
}

}  // namespace somnus

// ---------------------------------------------------------------- attention (issue 4 §1)
namespace somnus {

Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale,
                                    int64_t q_offset, bool deterministic) {
  const bool grad = autograd::needs_grad({q, k, v});
  // A few queries against a long cache with no gradient (a generation step): split-K
  // flash-decoding spreads the keys over threads/blocks instead of only (B, H).
  if (!grad && q.dim() == 4 && k.dim() == 4 && q.size(2) <= 4 && k.size(2) >= 1024) {
    return kernels::attention_decode(q, k, v, causal, scale, q_offset).o;
  }
  // Without a gradient the inputs go as they are (a KV cache's prefix is read in place on the
  // CPU: kernels/ops.cpp). With one, contiguous once here, so that the backward does not copy
  // the (often transposed) heads again.
  if (!grad) return kernels::attention_fwd(q, k, v, causal, scale, q_offset).o;
  const Tensor qc = q.contiguous(), kc = k.contiguous(), vc = v.contiguous();
  kernels::AttentionOutput out = kernels::attention_fwd(qc, kc, vc, causal, scale, q_offset);
  const bool det = deterministic || autograd::is_deterministic() || !q.device().is_cuda();
  return record("scaled_dot_product_attention", {q, k, v}, out.o,
                [q = qc.detach(), k = kc.detach(), v = vc.detach(), o = out.o.detach(), lse = out.lse, causal, scale,
                 q_offset, det](const TensorList& g) {
                  kernels::AttentionGrads gr = kernels::attention_bwd(q, k, v, o, lse, g[0], causal, scale, q_offset, det);
                  return TensorList{gr.dq, gr.dk, gr.dv};
                });
}

}  // namespace somnus
// ---------------------------------------------------------------- end attention
