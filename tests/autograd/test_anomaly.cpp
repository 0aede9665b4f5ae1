// Anomaly mode (autograd/engine.h): the first op whose forward output or backward gradient
// holds a NaN/Inf is named in a somnus::Error; without the guard nothing is checked; the
// guard restores the previous mode and is per thread.
#include <gtest/gtest.h>

#include <cmath>
#include <thread>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "tests/testing.h"

using namespace somnus;
using namespace somnus::testing;

namespace {

Tensor leaf(const std::vector<double>& v) {
  Tensor t = Tensor::from_vector(v, {static_cast<int64_t>(v.size())});
  t.set_requires_grad(true);
  return t;
}

}  // namespace

TEST(Anomaly, ForwardNamesTheFirstOpThatMadeANaN) {
  const Tensor x = leaf({0.5, -1.0, 2.0});
  // Off: the NaN flows through silently.
  EXPECT_FALSE(autograd::is_anomaly_enabled());
  EXPECT_TRUE(std::isnan(sum(exp(log(x))).item()));
  AnomalyModeGuard anomaly;
  EXPECT_TRUE(autograd::is_anomaly_enabled());
  const Tensor y = mul(x, 2.0);  // finite: recorded as usual
  const std::string msg = error_of([&] { (void)exp(log(y)); });
  expect_contains(msg, "anomaly mode: the forward of 'log' produced NaN in output 0 of shape (3,)");
  // Inf is named as such.
  expect_contains(error_of([&] { (void)div(1.0, sub(x, 0.5)); }), "produced Inf");
}

TEST(Anomaly, BackwardNamesTheRuleThatMadeAnInf) {
  const Tensor x = leaf({0.0, 4.0});
  const Tensor loss = sum(sqrt(x));  // forward finite; d sqrt / dx = inf at 0
  {
    AnomalyModeGuard anomaly;
    expect_contains(error_of([&] { backward(loss, Tensor(), /*retain_graph=*/true); }),
                    "anomaly mode: the backward of 'sqrt' produced Inf in the gradient for input 0 of shape (2,)");
  }
  EXPECT_FALSE(autograd::is_anomaly_enabled());
  backward(loss);  // off again: the inf lands in .grad
  EXPECT_TRUE(std::isinf(x.grad().to_vector()[0]));
}

TEST(Anomaly, GuardNestsAndIsPerThread) {
  AnomalyModeGuard on;
  {
    AnomalyModeGuard off(false);
    EXPECT_FALSE(autograd::is_anomaly_enabled());
    const Tensor x = leaf({-1.0});
    EXPECT_NO_THROW((void)log(x));
  }
  EXPECT_TRUE(autograd::is_anomaly_enabled());
  bool other = true;
  std::thread([&] { other = autograd::is_anomaly_enabled(); }).join();
  EXPECT_FALSE(other);
  // Finite graphs run forward and backward unchanged under the guard.
  const Tensor x = leaf({1.0, 2.0, 3.0});
  backward(sum(mul(tanh(x), x)));
  const std::vector<double> g = x.grad().to_vector();
  for (size_t i = 0; i < g.size(); ++i) {
    const double v = static_cast<double>(i + 1), t = std::tanh(v);
    EXPECT_NEAR(g[i], t + v * (1 - t * t), 1e-5);
  }
}
