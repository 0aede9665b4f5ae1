// Philox RNG: known-answer test, determinism, stream advance, and distribution moments.
#include <gtest/gtest.h>

#include <cmath>

#include "tensor/philox.h"
#include "tensor/random.h"

using namespace somnus;

// Known-answer vectors from the Random123 distribution (kat_vectors, philox4x32_10).
TEST(Philox, KnownAnswer) {
  philox::U4 r = philox::philox4x32_10(0, 0, 0);
  EXPECT_EQ(r.x, 0x6627e8d5u);
  EXPECT_EQ(r.y, 0xe169c58du);
  EXPECT_EQ(r.z, 0xbc57ac4cu);
  EXPECT_EQ(r.w, 0x9b00dbd8u);
  // counter = all ones, key = all ones
  r = philox::philox4x32_10(~0ull, ~0ull, ~0ull);
  EXPECT_EQ(r.x, 0x408f276du);
  EXPECT_EQ(r.y, 0x41c83b0eu);
  EXPECT_EQ(r.z, 0xa20bc7c6u);
  EXPECT_EQ(r.w, 0x6d5451fdu);
}

TEST(Random, SameSeedSameStream) {
  Generator a(42), b(42), c(43);
  EXPECT_EQ(randn({64}, a).to_vector(), randn({64}, b).to_vector());
  EXPECT_NE(randn({64}, a).to_vector(), randn({64}, c).to_vector());
}

TEST(Random, DrawsAdvanceAndDoNotOverlap) {
  Generator g(7);
  auto first = rand({8}, g).to_vector();
  auto second = rand({8}, g).to_vector();
  EXPECT_NE(first, second);
  // One draw of 16 equals two consecutive draws of 8 (counters are laid end to end).
  Generator h(7);
  auto both = rand({16}, h).to_vector();
  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(both[i], first[i]);
    EXPECT_EQ(both[8 + i], second[i]);
  }
}

TEST(Random, Moments) {
  Generator g(1);
  const int64_t n = 200000;
  auto u = rand({n}, g, DType::f64, Device::cpu(), -1.0, 3.0).to_vector();
  double mean = 0, mn = 1e9, mx = -1e9;
  for (double v : u) {
    mean += v;
    mn = std::min(mn, v);
    mx = std::max(mx, v);
  }
  mean /= n;
  EXPECT_NEAR(mean, 1.0, 0.02);
  EXPECT_GE(mn, -1.0);
  EXPECT_LT(mx, 3.0);

  auto z = randn({n}, g, DType::f32, Device::cpu(), 2.0, 0.5).to_vector();
  double m = 0, var = 0;
  for (double v : z) m += v;
  m /= n;
  for (double v : z) var += (v - m) * (v - m);
  var /= n;
  EXPECT_NEAR(m, 2.0, 0.01);
  EXPECT_NEAR(std::sqrt(var), 0.5, 0.01);

  auto k = randint(3, 7, {n}, g).to_vector();
  std::vector<int> counts(4, 0);
  for (double v : k) {
    ASSERT_GE(v, 3);
    ASSERT_LT(v, 7);
    counts[static_cast<int>(v) - 3]++;
  }
  for (int c : counts) EXPECT_NEAR(c / static_cast<double>(n), 0.25, 0.01);
}

TEST(Random, DefaultGeneratorIsSeedable) {
  manual_seed(5);
  auto a = randn({10}).to_vector();
  manual_seed(5);
  EXPECT_EQ(a, randn({10}).to_vector());
}

TEST(Random, BadArgumentsThrow) {
  Generator g(0);
  EXPECT_THROW(rand({2}, g, DType::i32), Error);
  EXPECT_THROW(randint(5, 5, {2}, g), Error);
  EXPECT_THROW(randint(0, 5, {2}, g, DType::f32), Error);
}
