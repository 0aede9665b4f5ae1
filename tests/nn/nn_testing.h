// Helpers shared by the nn module tests (test_modules, test_cms, test_transformer).
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "nn/module.h"
#include "tensor/random.h"

namespace somnus::nn::testing {

using autograd::TensorList;

// Fresh N(0, 1) f64 values (requires_grad when asked).
inline Tensor randn64(const Shape& shape, uint64_t seed, bool requires_grad = true, double std = 1.0) {
  Generator gen(seed);
  Tensor t = randn(shape, gen, DType::f64, Device::cpu(), 0.0, std);
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

// Overwrites a parameter in place with fresh N(0, std²) values (e.g. a B that starts at 0).
inline void randomize(const Tensor& p, uint64_t seed, double std = 0.5) {
  Generator gen(seed);
  NoGradGuard no_grad;
  p.copy_(randn(p.shape(), gen, p.dtype(), p.device(), 0.0, std));
}

// ‖a − b‖ / ‖b‖ over the values (DESIGN §5); NaN anywhere gives +inf.
inline double rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}
inline double rel_error(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(shape_str(a.shape()), shape_str(b.shape()));
  return rel_error(a.to_vector(), b.to_vector());
}

inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  const std::vector<double> x = a.to_vector(), y = b.to_vector();
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::memcmp(&x[i], &y[i], sizeof(double)) != 0) return false;
  }
  return true;
}

// gradcheck (autograd/gradcheck.h) over a module's parameters `names` plus `extra` inputs.
// gradcheck differentiates fresh handles on its inputs, so the module is made to compute
// with exactly those handles (set_parameter) while fn runs, and gets its own back after.
// fn receives the extra inputs.
inline GradcheckResult module_gradcheck(Module& m, const std::vector<std::string>& names,
                                        const std::vector<Tensor>& extra,
                                        const std::function<Tensor(const std::vector<Tensor>&)>& fn, double eps = 1e-6,
                                        double atol = 1e-5, double rtol = 1e-3) {
  std::vector<Tensor> originals, inputs;
  for (const std::string& n : names) originals.push_back(m.parameter(n));
  inputs = originals;
  inputs.insert(inputs.end(), extra.begin(), extra.end());
  const size_t np = names.size();
  GradcheckResult r = gradcheck(
      [&](const std::vector<Tensor>& xs) {
        for (size_t i = 0; i < np; ++i) m.set_parameter(names[i], xs[i]);
        return fn(std::vector<Tensor>(xs.begin() + static_cast<std::ptrdiff_t>(np), xs.end()));
      },
      inputs, eps, atol, rtol);
  for (size_t i = 0; i < np; ++i) m.set_parameter(names[i], originals[i]);
  return r;
}

#define EXPECT_GRADCHECK_OK(...)                \
  do {                                          \
    auto result_ = (__VA_ARGS__);               \
    EXPECT_TRUE(result_.ok) << result_.message; \
    EXPECT_GT(result_.checked, 0);              \
  } while (0)

// Runs `fn`, expecting a somnus::Error whose message contains every string in `parts`.
inline void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected somnus::Error containing '" << (parts.empty() ? "" : parts[0]) << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
  }
}

}  // namespace somnus::nn::testing
