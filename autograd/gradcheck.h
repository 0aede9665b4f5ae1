// Finite-difference gradient check, in float64 on CPU.
//
// The outputs are projected onto fixed random vectors u (seeded, so a run is repeatable),
// L(x) = Σ_k sum(u_k ∘ f_k(x)), so that any output shape is checked with one backward.
// The analytic dL/dx (backward with gradient u) is compared with central differences
// (L(x + eps·e_j) − L(x − eps·e_j)) / 2eps for every element j of every input that requires
// grad. An element passes when |analytic − numeric| <= atol + rtol·|numeric|.
//
//   auto r = gradcheck([](const TensorList& x) { return mul(x[0], x[1]); }, {a, b});
//   EXPECT_TRUE(r.ok) << r.message;
//
// Inputs that require grad must be f64 CPU tensors (views, also non-contiguous ones, are
// fine, but not ones whose elements overlap, like expanded views); other inputs (index
// tensors, constants) are passed through unchanged. Inputs are perturbed in place and
// restored exactly; their .grad is left untouched (the check differentiates fresh handles).
// Only the inputs are checked: tensors that fn captures get grads accumulated as a side
// effect of the analytic pass.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace somnus::autograd {

struct GradcheckResult {
  bool ok = false;
  double max_abs_error = 0.0;
  double max_rel_error = 0.0;  // |a − n| / max(|n|, 1e-12)
  int64_t checked = 0;         // elements compared
  int64_t failed = 0;          // elements out of tolerance
  // The element furthest out of tolerance (relative to its allowed error).
  int64_t worst_input = -1;
  std::vector<int64_t> worst_index;
  double worst_analytic = 0.0;
  double worst_numeric = 0.0;
  std::string message;  // one line: the verdict, the errors and the worst element
  explicit operator bool() const { return ok; }
};

using MultiFn = std::function<std::vector<Tensor>(const std::vector<Tensor>&)>;
using SingleFn = std::function<Tensor(const std::vector<Tensor>&)>;

GradcheckResult gradcheck(const MultiFn& fn, const std::vector<Tensor>& inputs, double eps = 1e-6, double atol = 1e-5,
                          double rtol = 1e-3);
GradcheckResult gradcheck(const SingleFn& fn, const std::vector<Tensor>& inputs, double eps = 1e-6, double atol = 1e-5,
                          double rtol = 1e-3);

}  // namespace somnus::autograd

namespace somnus {
using autograd::gradcheck;
using autograd::GradcheckResult;
}  // namespace somnus
