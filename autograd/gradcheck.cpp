// Central finite differences in f64 against the analytic gradient (see gradcheck.h).
#include "autograd/gradcheck.h"

#include <cmath>
#include <limits>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "tensor/format.h"
#include "tensor/random.h"

namespace somnus::autograd {

namespace {

// Element offset (from data_ptr) of flat row-major index j of t.
int64_t element_offset(const Tensor& t, int64_t j, std::vector<int64_t>* index) {
  int64_t offset = 0;
  if (index) index->assign(t.dim(), 0);
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    const int64_t i = j % t.size(d);
    j /= t.size(d);
    offset += i * t.stride(d);
    if (index) (*index)[d] = i;
  }
  return offset;
}

}  // namespace

GradcheckResult gradcheck(const MultiFn& fn, const std::vector<Tensor>& inputs, double eps, double atol, double rtol) {
  // Fresh handles on the inputs' data: the analytic gradients land in their .grad, not in
  // the caller's, and perturbing them in place perturbs exactly what fn sees.
  std::vector<Tensor> xs;
  std::vector<bool> checked_input;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Tensor& t = inputs[i];
    const bool check = t.defined() && t.requires_grad();
    checked_input.push_back(check);
    if (!check) {
      xs.push_back(t);
      continue;
    }
    SOMNUS_CHECK(t.dtype() == DType::f64 && t.device().is_cpu(),
                 "gradcheck: input {} must be an f64 CPU tensor, got {} on {}", i, dtype_name(t.dtype()),
                 t.device().str());
    for (int64_t d = 0; d < t.dim(); ++d) {
      SOMNUS_CHECK(t.stride(d) != 0 || t.size(d) <= 1,
                   "gradcheck: input {} of shape {} has overlapping elements (stride 0 in dim {})", i,
                   shape_str(t.shape()), d);
    }
    Tensor x = t.detach();
    x.set_requires_grad(true);
    xs.push_back(x);
  }

  // Analytic: backward from every output with gradient u_k is the gradient of Σ_k <u_k, f_k>.
  std::vector<Tensor> us;
  std::vector<std::vector<double>> u_values;
  {
    std::vector<Tensor> outs = fn(xs);
    Generator gen(0x5eed);
    TensorList roots, grads;
    for (const Tensor& out : outs) {
      Tensor u;
      if (out.defined() && is_floating(out.dtype())) u = randn(out.shape(), gen, out.dtype(), out.device());
      us.push_back(u);
      u_values.push_back(u.defined() ? u.to_vector() : std::vector<double>{});
      if (u.defined() && (out.grad_fn() || out.requires_grad())) {
        roots.push_back(out);
        grads.push_back(u);
      }
    }
    if (!roots.empty()) backward(roots, grads);
  }

  auto projection = [&]() {
    NoGradGuard no_grad;
    std::vector<Tensor> outs = fn(xs);
    SOMNUS_CHECK(outs.size() == us.size(), "gradcheck: fn returned {} outputs, then {}", us.size(), outs.size());
    double total = 0.0;
    for (size_t k = 0; k < outs.size(); ++k) {
      if (!us[k].defined()) continue;
      SOMNUS_CHECK(outs[k].shape() == us[k].shape(), "gradcheck: output {} changed shape from {} to {}", k,
                   shape_str(us[k].shape()), shape_str(outs[k].shape()));
      const std::vector<double> v = outs[k].to_vector();
      for (size_t j = 0; j < v.size(); ++j) total += u_values[k][j] * v[j];
    }
    return total;
  };

  GradcheckResult r;
  double worst_violation = -1.0;
  for (size_t i = 0; i < xs.size(); ++i) {
    if (!checked_input[i]) continue;
    const Tensor& x = xs[i];
    const Tensor grad = x.grad();
    const std::vector<double> analytic =
        grad.defined() ? grad.to_vector() : std::vector<double>(static_cast<size_t>(x.numel()), 0.0);
    double* base = x.data<double>();
    for (int64_t j = 0; j < x.numel(); ++j) {
      double* p = base + element_offset(x, j, nullptr);
      const double original = *p;
      *p = original + eps;
      const double plus = projection();
      *p = original - eps;
      const double minus = projection();
      *p = original;
      const double numeric = (plus - minus) / (2.0 * eps);
      const double a = analytic[static_cast<size_t>(j)];
      const double err = std::abs(a - numeric);
      const double allowed = atol + rtol * std::abs(numeric);
      const double rel = err / std::max(std::abs(numeric), 1e-12);
      const double violation = std::isnan(err) ? std::numeric_limits<double>::infinity() : err / allowed;
      ++r.checked;
      if (!(err <= allowed)) ++r.failed;
      if (!(err <= r.max_abs_error)) r.max_abs_error = err;  // NaN sticks
      if (!(rel <= r.max_rel_error)) r.max_rel_error = rel;
      if (violation > worst_violation) {
        worst_violation = violation;
        r.worst_input = static_cast<int64_t>(i);
        element_offset(x, j, &r.worst_index);
        r.worst_analytic = a;
        r.worst_numeric = numeric;
      }
    }
  }

  if (r.checked == 0) {
    r.ok = false;
    r.message = "gradcheck FAILED: no input requires grad, nothing was checked";
    return r;
  }
  r.ok = r.failed == 0;
  r.message = fmt::format(
      "gradcheck {}: {}/{} elements out of tolerance (atol {:g}, rtol {:g}); max abs err {:.3g}, max rel err {:.3g}; "
      "worst: input {} at {}: analytic {:.10g} vs numeric {:.10g}",
      r.ok ? "passed" : "FAILED", r.failed, r.checked, atol, rtol, r.max_abs_error, r.max_rel_error, r.worst_input,
      shape_str(r.worst_index), r.worst_analytic, r.worst_numeric);
  return r;
}

GradcheckResult gradcheck(const SingleFn& fn, const std::vector<Tensor>& inputs, double eps, double atol, double rtol) {
  return gradcheck(MultiFn([&fn](const std::vector<Tensor>& xs) { return std::vector<Tensor>{fn(xs)}; }), inputs, eps,
                   atol, rtol);
}

}  // namespace somnus::autograd
