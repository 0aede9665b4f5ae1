// Bad input throws somnus::Error whose message names the op and the offending shapes, dtypes
// or devices: a table of (call, substrings its message must contain). Mismatched shapes and
// dtypes, out-of-range indices, bad dims; mismatched devices where a GPU exists.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tensor/random.h"

using namespace somnus;
using namespace somnus::kernels;

namespace {

struct ErrorCase {
  const char* name;
  std::function<void()> call;
  std::vector<std::string> message_has;  // substrings the Error's what() must contain
};

void expect_error(const ErrorCase& c) {
  SCOPED_TRACE(c.name);
  try {
    c.call();
    ADD_FAILURE() << "no exception thrown";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& s : c.message_has) {
      EXPECT_NE(msg.find(s), std::string::npos) << "message \"" << msg << "\" lacks \"" << s << "\"";
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-somnus exception: " << e.what();
  }
}

Generator& gen() {
  static Generator g(61);
  return g;
}
Tensor rn(const Shape& s, DType d = DType::f32) { return randn(s, gen(), d); }
Tensor ids(const std::vector<double>& v, DType d = DType::i64) {
  return Tensor::from_vector(v, {static_cast<int64_t>(v.size())}, d);
}

}  // namespace

TEST(Errors, ShapesAndDims) {
  const ErrorCase cases[] = {
      {"add: shapes", [] { binary(Binary::add, rn({4, 8}), rn({7, 3})); }, {"add", "(4, 8)", "(7, 3)"}},
      {"tanh_backward: shapes", [] { unary_backward(Unary::tanh, rn({2, 3}), rn({3, 2})); },
       {"tanh_backward", "(2, 3)", "(3, 2)"}},
      {"where: shapes", [] { where(rn({3}), rn({4}), rn({4})); }, {"where", "(3,)", "(4,)"}},
      {"matmul: inner dims", [] { matmul(rn({4, 8}), rn({7, 3})); }, {"matmul: inner dims differ: a (4, 8) vs b (7, 3)"}},
      {"matmul: batch dims", [] { matmul(rn({2, 4, 8}), rn({3, 8, 5})); }, {"matmul", "batch", "(2, 4, 8)", "(3, 8, 5)"}},
      {"matmul: rank of a", [] { matmul(rn({8}), rn({8, 3})); }, {"matmul", "a", "(8,)"}},
      {"matmul: 2-D a, 3-D b", [] { matmul(rn({4, 8}), rn({2, 8, 3})); }, {"matmul", "(4, 8)", "(2, 8, 3)"}},
      {"matmul: bias shape", [] { matmul(rn({4, 8}), rn({8, 3}), rn({4})); }, {"matmul", "bias", "(4,)", "(8, 3)"}},
      {"sum: dim out of range", [] { reduce(Reduce::sum, rn({2, 3}), 2); }, {"sum", "dim 2", "(2, 3)"}},
      {"mean: negative dim out of range", [] { reduce(Reduce::mean, rn({2, 3}), -3); }, {"mean", "dim -3", "(2, 3)"}},
      {"argmax: empty dim", [] { argmax(rn({3, 0}), 1); }, {"argmax", "(3, 0)"}},
      {"max: empty dim", [] { reduce(Reduce::max, rn({3, 0}), 1); }, {"max", "(3, 0)"}},
      {"sum_to: not broadcastable", [] { sum_to(rn({2, 3}), {4}); }, {"sum_to", "(2, 3)", "(4,)"}},
      {"softmax: 0-dim", [] { softmax(Tensor::scalar(1.0)); }, {"softmax", "0-dim"}},
      {"softmax_backward: shapes", [] { softmax_backward(rn({2, 5}), rn({2, 4})); },
       {"softmax_backward", "(2, 5)", "(2, 4)"}},
      {"embedding: 1-D weight", [] { embedding(rn({10}), ids({1})); }, {"embedding", "weight", "(10,)"}},
      {"embedding_backward: shapes", [] { embedding_backward(rn({3, 5}), ids({1, 2, 3, 0}), 10); },
       {"embedding_backward", "(3, 5)", "(4,)"}},
      {"gather: rank", [] { gather(rn({3, 4}), 1, ids({0, 1})); }, {"gather", "(3, 4)", "(2,)"}},
      {"gather: bad dim", [] { gather(rn({3, 4}), 2, Tensor::zeros({3, 4}, DType::i64)); }, {"gather", "dim 2", "(3, 4)"}},
      {"gather: index too large", [] { gather(rn({3, 4}), 1, Tensor::zeros({4, 2}, DType::i64)); },
       {"gather", "(4, 2)", "(3, 4)"}},
      {"index_select: 2-D index", [] { index_select(rn({3, 4}), 0, Tensor::zeros({2, 2}, DType::i64)); },
       {"index_select", "(2, 2)"}},
      {"index_add: src shape", [] { index_add({5, 4}, 0, ids({0, 1}), rn({3, 4})); }, {"index_add", "(2, 4)", "(3, 4)"}},
      {"concat: shapes", [] { concat({rn({2, 3}), rn({2, 4})}, 0); }, {"concat", "(2, 3)", "(2, 4)"}},
      {"concat: no inputs", [] { concat({}, 0); }, {"concat"}},
      {"split: sizes", [] { split(rn({4, 6}), {2, 3}, 1); }, {"split", "(4, 6)", "5", "6"}},
  };
  for (const ErrorCase& c : cases) expect_error(c);
}

TEST(Errors, Dtypes) {
  const ErrorCase cases[] = {
      {"mul: dtypes", [] { binary(Binary::mul, rn({2, 3}), rn({2, 3}, DType::f64)); }, {"mul", "f32", "f64", "(2, 3)"}},
      {"exp: integer input", [] { unary(Unary::exp, Tensor::zeros({3}, DType::i64)); }, {"exp", "i64", "(3,)"}},
      {"where: dtypes", [] { where(rn({3}), rn({3}), rn({3}, DType::bf16)); }, {"where", "f32", "bf16"}},
      {"matmul: dtypes", [] { matmul(rn({4, 8}), rn({8, 3}, DType::bf16)); }, {"matmul", "f32", "bf16"}},
      {"matmul: bias dtype", [] { matmul(rn({4, 8}), rn({8, 3}), rn({3}, DType::f64)); }, {"matmul", "bias", "f64"}},
      {"log_softmax: integer input", [] { log_softmax(Tensor::zeros({2, 3}, DType::i32)); }, {"log_softmax", "i32"}},
      {"sum: integer input", [] { reduce(Reduce::sum, Tensor::zeros({2, 3}, DType::i32), 0); }, {"sum", "i32"}},
      {"embedding: float ids", [] { embedding(rn({10, 4}), rn({3})); }, {"embedding", "ids", "f32"}},
      {"gather: float index", [] { gather(rn({3, 4}), 1, rn({3, 4})); }, {"gather", "index", "f32"}},
      {"concat: dtypes", [] { concat({rn({2, 3}), rn({2, 3}, DType::f64)}, 0); }, {"concat", "f32", "f64"}},
  };
  for (const ErrorCase& c : cases) expect_error(c);
}

TEST(Errors, OutOfRangeIndices) {
  const ErrorCase cases[] = {
      {"embedding: id == V", [] { embedding(rn({10, 4}), ids({1, 10, 2})); }, {"embedding", "10", "[0, 10)", "(10, 4)"}},
      {"embedding: negative id", [] { embedding(rn({10, 4}), ids({0, -1}, DType::i32)); }, {"embedding", "-1", "[0, 10)"}},
      {"embedding_backward: id >= vocab", [] { embedding_backward(rn({3, 5}), ids({0, 7, 1}), 7); },
       {"embedding_backward", "7", "vocab 7"}},
      {"gather: index >= size", [] { gather(rn({3, 4}), 1, Tensor::from_vector({0, 1, 4}, {3, 1}, DType::i64)); },
       {"gather", "4", "[0, 4)", "(3, 4)"}},
      {"scatter_add: index >= size", [] { scatter_add({3, 4}, 0, Tensor::from_vector({3}, {1, 1}, DType::i64), rn({1, 1})); },
       {"scatter_add", "3", "[0, 3)", "(3, 4)"}},
      {"index_select: index >= size", [] { index_select(rn({5, 2}), 0, ids({4, 5}, DType::i32)); },
       {"index_select", "5", "[0, 5)", "(5, 2)"}},
      {"index_add: negative index", [] { index_add({5, 2}, 0, ids({-2}), rn({1, 2})); }, {"index_add", "-2", "[0, 5)"}},
  };
  for (const ErrorCase& c : cases) expect_error(c);
}

TEST(Errors, Devices) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device: mismatched-device checks need a GPU";
  const Device gpu = Device::cuda(0);
  const ErrorCase cases[] = {
      {"add: devices", [&] { binary(Binary::add, rn({2, 3}), rn({2, 3}).to(gpu)); }, {"add", "cpu", "cuda:0", "(2, 3)"}},
      {"matmul: devices", [&] { matmul(rn({4, 8}).to(gpu), rn({8, 3})); }, {"matmul", "cpu", "cuda:0"}},
      {"where: devices", [&] { where(rn({3}).to(gpu), rn({3}), rn({3})); }, {"where", "cpu", "cuda:0"}},
      {"embedding: devices", [&] { embedding(rn({10, 4}).to(gpu), ids({1})); }, {"embedding", "cpu", "cuda:0"}},
      {"concat: devices", [&] { concat({rn({2, 3}), rn({2, 3}).to(gpu)}, 0); }, {"concat", "cpu", "cuda:0"}},
      // CUDA index tensors are range-checked on a host copy before any launch.
      {"embedding: CUDA ids out of range", [&] { embedding(rn({10, 4}).to(gpu), ids({3, 12}).to(gpu)); },
       {"embedding", "12", "[0, 10)"}},
  };
  for (const ErrorCase& c : cases) expect_error(c);
}
