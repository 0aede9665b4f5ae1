#include <gtest/gtest.h>
#include "tensor/random.h"
#include "tensor/tensor.h"
using namespace somnus;
TEST(Smoke, Basic) {
  Tensor t = Tensor::arange(0, 6, 1, DType::f32).view({2, 3});
  EXPECT_EQ(t.transpose(0, 1).contiguous().to_vector(), (std::vector<double>{0, 3, 1, 4, 2, 5}));
  Generator g(1);
  std::cout << randn({3, 4}, g) << "\n";
}
