// The backward rules on CUDA against the same rules on CPU: every differentiable function,
// f32 on both, compared by ‖cuda − cpu‖ / ‖cpu‖ for the output and every input gradient.
// Without a device the test skips visibly.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "tensor/random.h"
#include "testing.h"

using namespace somnus;
using autograd::TensorList;

namespace {

using somnus::testing::rel_error;  // ‖cuda − cpu‖ / ‖cpu‖ (tests/testing.h)

struct Case {
  std::string name;
  std::function<Tensor(const TensorList&)> fn;
  std::vector<Shape> shapes;
  double lo = -1.0, hi = 1.0;
  double tol = 1e-5;
};

Tensor on(const Tensor& t, const Tensor& like) { return t.to(like.device()); }

std::vector<Case> cases() {
  const Tensor cond = Tensor::from_vector({1, 0, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1}, {3, 4}, DType::i64);
  const Tensor tokens = Tensor::from_vector({0, 1, 1, 5, 3, 0, 2, 5}, {2, 4}, DType::i64);
  const Tensor index = Tensor::from_vector({0, 3, 3, 1, 2, 2, 0, 0, 1}, {3, 3}, DType::i64);
  const Tensor rows = Tensor::from_vector({3, 0, 3, 1}, {4}, DType::i64);
  const double mm_tol = 1e-3;  // cuBLASLt may use TF32 for f32
  return {
      {"add broadcast", [](const TensorList& x) { return add(x[0], x[1]); }, {{3, 4}, {4}}},
      {"sub broadcast", [](const TensorList& x) { return sub(x[0], x[1]); }, {{2, 1, 4}, {3, 1}}},
      {"mul broadcast", [](const TensorList& x) { return mul(x[0], x[1]); }, {{3, 4}, {3, 1}}},
      {"div broadcast", [](const TensorList& x) { return div(x[0], x[1]); }, {{3, 4}, {4}}, 0.5, 2.0},
      {"maximum", [](const TensorList& x) { return maximum(x[0], x[1]); }, {{3, 4}, {4}}},
      {"minimum", [](const TensorList& x) { return minimum(x[0], x[1]); }, {{3, 4}, {3, 4}}},
      {"scalar ops", [](const TensorList& x) { return 2.0 - (x[0] * 3.0 + 1.0) / 4.0; }, {{3, 4}}},
      {"neg", [](const TensorList& x) { return neg(x[0]); }, {{3, 4}}},
      {"exp", [](const TensorList& x) { return exp(x[0]); }, {{3, 4}}},
      {"log", [](const TensorList& x) { return log(x[0]); }, {{3, 4}}, 0.5, 2.0},
      {"sqrt", [](const TensorList& x) { return sqrt(x[0]); }, {{3, 4}}, 0.5, 2.0},
      {"rsqrt", [](const TensorList& x) { return rsqrt(x[0]); }, {{3, 4}}, 0.5, 2.0},
      {"tanh", [](const TensorList& x) { return tanh(x[0]); }, {{3, 4}}},
      {"sigmoid", [](const TensorList& x) { return sigmoid(x[0]); }, {{3, 4}}},
      {"relu", [](const TensorList& x) { return relu(x[0]); }, {{3, 4}}},
      {"gelu", [](const TensorList& x) { return gelu(x[0]); }, {{3, 4}}},
      {"silu", [](const TensorList& x) { return silu(x[0]); }, {{3, 4}}},
      {"abs", [](const TensorList& x) { return abs(x[0]); }, {{3, 4}}},
      {"square", [](const TensorList& x) { return square(x[0]); }, {{3, 4}}},
      {"pow", [](const TensorList& x) { return pow(x[0], 1.5); }, {{3, 4}}, 0.5, 2.0},
      {"where", [cond](const TensorList& x) { return where(on(cond, x[0]), x[0], x[1]); }, {{4}, {3, 1}}},
      {"sum dim", [](const TensorList& x) { return sum(x[0], 1); }, {{3, 4, 5}}},
      {"mean dim keepdim", [](const TensorList& x) { return mean(x[0], 0, true); }, {{3, 4, 5}}},
      {"max dim", [](const TensorList& x) { return max(x[0], -1); }, {{3, 4, 5}}},
      {"sum all", [](const TensorList& x) { return sum(x[0]); }, {{3, 4}}},
      {"mean all", [](const TensorList& x) { return mean(x[0]); }, {{3, 4}}},
      {"max all", [](const TensorList& x) { return max(x[0]); }, {{3, 4}}},
      {"softmax", [](const TensorList& x) { return softmax(x[0]); }, {{3, 7}}, -3.0, 3.0},
      {"log_softmax dim 0", [](const TensorList& x) { return log_softmax(x[0], 0); }, {{5, 3}}, -3.0, 3.0},
      {"matmul bias gelu",
       [](const TensorList& x) { return matmul(x[0], x[1], x[2], true); },
       {{5, 8}, {8, 6}, {6}},
       -1.0,
       1.0,
       mm_tol},
      {"matmul batched",
       [](const TensorList& x) { return matmul(x[0], x[1]); },
       {{2, 5, 8}, {2, 8, 6}},
       -1.0,
       1.0,
       mm_tol},
      {"matmul shared b bias",
       [](const TensorList& x) { return matmul(x[0], x[1], x[2]); },
       {{2, 5, 8}, {8, 6}, {6}},
       -1.0,
       1.0,
       mm_tol},
      {"matmul transposed",
       [](const TensorList& x) { return matmul(transpose(x[0], 0, 1), x[1]); },
       {{8, 5}, {8, 6}},
       -1.0,
       1.0,
       mm_tol},
      {"embedding", [tokens](const TensorList& x) { return embedding(x[0], on(tokens, x[0])); }, {{6, 3}}},
      {"gather", [index](const TensorList& x) { return gather(x[0], 1, on(index, x[0])); }, {{3, 4}}},
      {"index_select", [rows](const TensorList& x) { return index_select(x[0], 0, on(rows, x[0])); }, {{4, 3}}},
      {"concat",
       [](const TensorList& x) {
         return concat({x[0], x[1]}, 1);
       },
       {{2, 3}, {2, 2}}},
      {"split one used",
       [](const TensorList& x) {
         return split(x[0], {1, 3, 2}, 1)[1];
       },
       {{2, 6}}},
      {"views",
       [](const TensorList& x) {
         Tensor t = permute(reshape(x[0], {2, 3, 4}), {2, 0, 1});  // (4, 2, 3)
         t = slice(select(t, 1, 1), 0, 1, 4, 2);                   // (2, 3)
         return contiguous(expand(unsqueeze(t, 0), {3, 2, 3}));    // (3, 2, 3)
       },
       {{6, 4}}},
      {"squeeze view flatten",
       [](const TensorList& x) {
         return flatten(squeeze(view(x[0], {3, 1, 4}), 1));
       },
       {{3, 4}}},
      {"to bf16 and back",
       [](const TensorList& x) { return to(mul(to(x[0], DType::bf16), 2.0), DType::f32); },
       {{3, 4}},
       -1.0,
       1.0,
       1e-2},
  };
}

}  // namespace

TEST(CudaAutograd, EveryFunctionMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device visible: the autograd CUDA comparison did not run";
  uint64_t seed = 1;
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    TensorList cpu_in, cuda_in;
    for (const Shape& s : c.shapes) {
      Generator gen(seed++);
      Tensor x = rand(s, gen, DType::f32, Device::cpu(), c.lo, c.hi);
      Tensor y = x.to(Device::cuda());
      x.set_requires_grad(true);
      y.set_requires_grad(true);
      cpu_in.push_back(x);
      cuda_in.push_back(y);
    }
    const Tensor cpu_out = c.fn(cpu_in);
    const Tensor cuda_out = c.fn(cuda_in);
    ASSERT_EQ(cuda_out.device(), Device::cuda());
    EXPECT_LE(rel_error(cuda_out, cpu_out), c.tol) << "forward";
    Generator gen(seed++);
    const Tensor u = randn(cpu_out.shape(), gen, DType::f32);
    backward(cpu_out, u);
    backward(cuda_out, u.to(Device::cuda()));
    for (size_t i = 0; i < cpu_in.size(); ++i) {
      ASSERT_TRUE(cuda_in[i].grad().defined()) << "input " << i;
      EXPECT_EQ(cuda_in[i].grad().device(), Device::cuda());
      const double err = rel_error(cuda_in[i].grad(), cpu_in[i].grad());
      EXPECT_LE(err, c.tol) << "gradient of input " << i;
    }
  }
}
