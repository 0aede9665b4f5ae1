// Tensor metadata, views (no copies), copies, dtype conversion and printing.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "tensor/format.h"
#include "tensor/random.h"
#include "tensor/tensor.h"
#include "testing.h"

using namespace somnus;

static std::vector<double> iota(int64_t n) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = static_cast<double>(i);
  return v;
}

TEST(Tensor, FactoriesShapesAndValues) {
  Tensor z = Tensor::zeros({2, 3});
  EXPECT_EQ(z.shape(), (Shape{2, 3}));
  EXPECT_EQ(z.strides(), (Strides{3, 1}));
  EXPECT_EQ(z.numel(), 6);
  for (double v : z.to_vector()) EXPECT_EQ(v, 0.0);
  for (double v : Tensor::ones({4}, DType::bf16).to_vector()) EXPECT_EQ(v, 1.0);
  for (double v : Tensor::full({2, 2}, -2.5, DType::f64).to_vector()) EXPECT_EQ(v, -2.5);
  EXPECT_EQ(Tensor::arange(2, 11, 3).to_vector(), (std::vector<double>{2, 5, 8}));
  EXPECT_EQ(Tensor::arange(5, 0, -2, DType::i32).to_vector(), (std::vector<double>{5, 3, 1}));
  EXPECT_EQ(Tensor::scalar(3.0).dim(), 0);
  EXPECT_EQ(Tensor::scalar(3.0).item(), 3.0);
  EXPECT_EQ(Tensor::zeros({0, 4}).numel(), 0);
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::from_vector(iota(24), {2, 3, 4});
  Tensor tt = t.transpose(0, 2);  // (4, 3, 2)
  EXPECT_EQ(tt.shape(), (Shape{4, 3, 2}));
  EXPECT_EQ(tt.storage().get(), t.storage().get());
  EXPECT_FALSE(tt.is_contiguous());
  EXPECT_EQ(tt.at({3, 1, 1}), t.at({1, 1, 3}));

  Tensor p = t.permute({1, 2, 0});  // (3, 4, 2)
  EXPECT_EQ(p.at({2, 1, 1}), t.at({1, 2, 1}));

  Tensor s = t.slice(2, 1, 4, 2);  // last dim {1, 3}
  EXPECT_EQ(s.shape(), (Shape{2, 3, 2}));
  EXPECT_EQ(s.at({1, 2, 1}), t.at({1, 2, 3}));
  EXPECT_EQ(t.slice(1, -2, 100).shape(), (Shape{2, 2, 4}));  // python-like clamping

  Tensor sel = t.select(1, 2);
  EXPECT_EQ(sel.shape(), (Shape{2, 4}));
  EXPECT_EQ(sel.at({1, 3}), 23.0);

  // Writes through a view reach the base.
  s.fill_(-1.0);
  EXPECT_EQ(t.at({0, 0, 1}), -1.0);
  EXPECT_EQ(t.at({0, 0, 0}), 0.0);
}

TEST(Tensor, ViewAndReshape) {
  Tensor t = Tensor::from_vector(iota(12), {3, 4});
  Tensor v = t.view({2, -1});
  EXPECT_EQ(v.shape(), (Shape{2, 6}));
  EXPECT_EQ(v.storage().get(), t.storage().get());
  // Splitting a dim of a transposed view keeps it a view.
  Tensor tr = t.transpose(0, 1);  // (4, 3)
  Tensor split = tr.view({2, 2, 3});
  EXPECT_EQ(split.storage().get(), t.storage().get());
  EXPECT_EQ(split.at({1, 1, 2}), tr.at({3, 2}));
  // Merging transposed dims needs a copy: view throws, reshape copies.
  EXPECT_THROW(tr.view({12}), Error);
  Tensor r = tr.reshape({12});
  EXPECT_NE(r.storage().get(), t.storage().get());
  EXPECT_EQ(r.to_vector(), (std::vector<double>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
  EXPECT_THROW(t.view({5, -1}), Error);
  EXPECT_THROW(t.view({-1, -1}), Error);
}

TEST(Tensor, ExpandUnsqueezeSqueeze) {
  Tensor t = Tensor::from_vector({1, 2, 3}, {3, 1});
  Tensor e = t.expand({2, 3, 4});
  EXPECT_EQ(e.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(e.strides()[0], 0);
  EXPECT_EQ(e.strides()[2], 0);
  EXPECT_EQ(e.at({1, 2, 3}), 3.0);
  EXPECT_THROW(t.expand({2, 4}), Error);
  EXPECT_EQ(t.unsqueeze(0).shape(), (Shape{1, 3, 1}));
  EXPECT_EQ(t.unsqueeze(-1).shape(), (Shape{3, 1, 1}));
  EXPECT_EQ(t.squeeze(1).shape(), (Shape{3}));
  EXPECT_EQ(t.squeeze(0).shape(), (Shape{3, 1}));  // size 3: unchanged
  EXPECT_EQ(e.contiguous().to_vector().size(), 24u);
}

// expand follows torch 1.13: -1 keeps an existing dim's size (also a size-0 one) but is refused
// for a new leading dim; 0 is allowed for a size-1 dim or a new dim; any other negative size is
// refused with a message naming the dim and the size (it used to give a (-5, 3) view).
TEST(Tensor, ExpandNegativeAndZeroSizes) {
  using somnus::testing::error_of;
  using somnus::testing::expect_contains;
  Tensor t = Tensor::from_vector({1, 2, 3}, {1, 3});
  EXPECT_EQ(t.expand({-1, 3}).shape(), (Shape{1, 3}));
  EXPECT_EQ(t.expand({5, -1}).shape(), (Shape{5, 3}));
  EXPECT_EQ(t.expand({0, 3}).shape(), (Shape{0, 3}));
  EXPECT_EQ(t.expand({0, 3}).numel(), 0);
  EXPECT_EQ(t.expand({0, 1, 3}).shape(), (Shape{0, 1, 3}));
  EXPECT_EQ(t.expand({0, -1, -1}).shape(), (Shape{0, 1, 3}));
  EXPECT_EQ(t.expand({2, 4, -1}).shape(), (Shape{2, 4, 3}));
  EXPECT_EQ(Tensor::zeros({2, 0}).expand({3, 2, -1}).shape(), (Shape{3, 2, 0}));
  EXPECT_EQ(Tensor::zeros({}).expand({0}).shape(), (Shape{0}));

  const std::string neg = error_of([&] { (void)t.expand({-5, 3}); });
  expect_contains(neg, "expand: the expanded size -5 at dim 0 is invalid");
  expect_contains(neg, "(1, 3)");
  expect_contains(error_of([&] { (void)t.expand({1, -2}); }), "expand: the expanded size -2 at dim 1 is invalid");
  expect_contains(error_of([&] { (void)t.expand({-2, -1, 3}); }),
                  "expand: the expanded size -2 at dim 0 is invalid");
  expect_contains(error_of([&] { (void)t.expand({-1, 1, 3}); }),
                  "expand: the expanded size -1 is not allowed at dim 0, a new leading dim");
  expect_contains(error_of([&] { (void)Tensor::zeros({}).expand({-1}); }),
                  "expand: the expanded size -1 is not allowed at dim 0, a new leading dim");
  expect_contains(error_of([&] { (void)t.expand({1, 0}); }),
                  "expand: the expanded size 0 at dim 1 must match the existing size 3");
  expect_contains(error_of([&] { (void)Tensor::zeros({2, 0}).expand({2, 1}); }),
                  "expand: the expanded size 1 at dim 1 must match the existing size 0");
}

TEST(Tensor, ContiguousCloneAndCopy) {
  Tensor t = Tensor::from_vector(iota(6), {2, 3});
  EXPECT_TRUE(t.contiguous().same(t));  // no copy when already contiguous
  Tensor c = t.transpose(0, 1).contiguous();
  EXPECT_TRUE(c.is_contiguous());
  EXPECT_EQ(c.to_vector(), (std::vector<double>{0, 3, 1, 4, 2, 5}));
  Tensor k = t.clone();
  EXPECT_NE(k.storage().get(), t.storage().get());
  Tensor dst = Tensor::zeros({2, 3}, DType::f64);
  dst.copy_(Tensor::from_vector({7, 8, 9}, {3}));  // broadcast + cast
  EXPECT_EQ(dst.to_vector(), (std::vector<double>{7, 8, 9, 7, 8, 9}));
  EXPECT_THROW(dst.copy_(Tensor::zeros({4})), Error);
}

TEST(Tensor, DtypeConversions) {
  Tensor f = Tensor::from_vector({1.5, -2.75, 3.0e9, 0.1}, {4});
  EXPECT_EQ(f.to(DType::i64).to_vector(), (std::vector<double>{1, -2, 3.0e9, 0}));
  Tensor d = f.to(DType::f64);
  EXPECT_EQ(d.dtype(), DType::f64);
  EXPECT_NEAR(d.to_vector()[3], 0.1, 1e-8);
  EXPECT_TRUE(f.to(DType::f32).same(f));
  EXPECT_EQ(dtype_size(DType::bf16), 2);
  EXPECT_STREQ(dtype_name(DType::i32), "i32");
}

// bf16 keeps the top 16 bits of an f32, rounding the dropped 16 to nearest, ties to even.
TEST(Tensor, Bf16RoundsToNearestEven) {
  auto bits_of = [](uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return bf16(f).bits;
  };
  EXPECT_EQ(bits_of(0x3f800000u), 0x3f80);  // 1.0 exact
  EXPECT_EQ(bits_of(0x3f807fffu), 0x3f80);  // below half: down
  EXPECT_EQ(bits_of(0x3f808001u), 0x3f81);  // above half: up
  EXPECT_EQ(bits_of(0x3f808000u), 0x3f80);  // tie, even stays
  EXPECT_EQ(bits_of(0x3f818000u), 0x3f82);  // tie, odd rounds up to even
  EXPECT_EQ(bits_of(0x7f7fffffu), 0x7f80);  // max float rounds to inf
  EXPECT_TRUE(std::isnan(static_cast<float>(bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(bits_of(0xff800000u), 0xff80);  // -inf stays
  // Through the tensor cast path too.
  Tensor t = Tensor::from_vector({1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0}, {2}).to(DType::bf16);
  EXPECT_EQ(t.to_vector(), (std::vector<double>{1.0, 1.0 + 4.0 / 256.0}));
}

TEST(Tensor, PrintingIsReadable) {
  Tensor t = Tensor::from_vector({1, 2, 3, 4}, {2, 2});
  const std::string s = t.str();
  EXPECT_NE(s.find("[[1.0000, 2.0000],"), std::string::npos) << s;
  EXPECT_NE(s.find("shape=(2, 2), dtype=f32, device=cpu"), std::string::npos) << s;
  const std::string big = Tensor::zeros({100}, DType::i64).str();
  EXPECT_NE(big.find("..."), std::string::npos) << big;
  EXPECT_LT(big.size(), 200u);
  EXPECT_EQ(Tensor().str(), "tensor(undefined)");
}

TEST(Tensor, BadInputThrowsSomnusError) {
  Tensor t = Tensor::zeros({2, 3});
  try {
    t.transpose(0, 5);
    FAIL() << "expected somnus::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("transpose: dim 5 out of range"), std::string::npos) << e.what();
  }
  EXPECT_THROW(t.permute({0, 0}), Error);
  EXPECT_THROW(t.select(0, 2), Error);
  EXPECT_THROW(t.data<double>(), Error);
  EXPECT_THROW(Tensor::zeros({-1}), Error);
  EXPECT_THROW(Tensor().shape(), Error);
  EXPECT_THROW(Tensor::from_vector({1, 2}, {3}), Error);
  EXPECT_THROW(Device::parse("tpu:0"), Error);
  EXPECT_THROW(t.item(), Error);
  EXPECT_THROW(Tensor::zeros({2}, DType::i64).set_requires_grad(true), Error);
  if (!cuda_compiled()) {
    EXPECT_THROW(Tensor::zeros({2}, DType::f32, Device::cuda(0)), Error);
  }
  // to() a device that is not there names itself, the tensor and both devices (it used to
  // say "empty: device cuda:0 requested but this build has no CUDA backend").
  const int n = cuda_device_count();
  try {
    (void)t.to(Device::cuda(n), DType::bf16);
    FAIL() << "expected somnus::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("to: cannot move (2, 3) f32 cpu to cuda:" + std::to_string(n), 0), 0u) << msg;
  }
}

// Element and byte counts that do not fit in an int64 are refused, not wrapped: 2^62 f32
// elements (2^64 bytes) used to get a 0-byte storage and a null data pointer, and a (2^32, 2^32)
// view of an empty tensor passed as 0 elements.
TEST(Tensor, SizesThatOverflowAreRefused) {
  EXPECT_THROW(Tensor::empty({int64_t{1} << 62}), Error);
  EXPECT_THROW(Tensor::empty({int64_t{1} << 40, int64_t{1} << 40}), Error);
  EXPECT_THROW(Tensor::zeros({0}).view({int64_t{1} << 32, int64_t{1} << 32}), Error);
  EXPECT_EQ(Tensor::zeros({0, int64_t{1} << 62}).numel(), 0);  // a zero size makes any shape empty
  EXPECT_EQ(shape_numel({int64_t{1} << 31, int64_t{1} << 31}), int64_t{1} << 62);
}

// copy_ from a source that shares bytes with the destination reads the source whole first
// (t.copy_(t.transpose(0, 1)) gave [0, 2, 2, 3]: the loop read what it had just written).
TEST(Tensor, CopyFromAnOverlappingViewOfItself) {
  Tensor t = Tensor::from_vector({0, 1, 2, 3}, {2, 2});
  t.copy_(t.transpose(0, 1));
  EXPECT_EQ(t.to_vector(), (std::vector<double>{0, 2, 1, 3}));
  Tensor r = Tensor::from_vector({0, 1, 2, 3, 4}, {5});
  r.slice(0, 1, 5).copy_(r.slice(0, 0, 4));  // shift right by one: memmove semantics
  EXPECT_EQ(r.to_vector(), (std::vector<double>{0, 0, 1, 2, 3}));
  Tensor same = Tensor::from_vector({5, 6}, {2});
  same.copy_(same);
  EXPECT_EQ(same.to_vector(), (std::vector<double>{5, 6}));
}

TEST(Tensor, DeviceParsing) {
  EXPECT_EQ(Device::parse("cpu"), Device::cpu());
  EXPECT_EQ(Device::parse("cuda"), Device::cuda(0));
  EXPECT_EQ(Device::parse("cuda:3"), Device::cuda(3));
  EXPECT_EQ(Device::cuda(1).str(), "cuda:1");
  EXPECT_THROW(Device::parse("cuda:x"), Error);
}

TEST(Tensor, BroadcastShapes) {
  EXPECT_EQ(broadcast_shapes({3, 1, 5}, {4, 1}, "t"), (Shape{3, 4, 5}));
  EXPECT_EQ(broadcast_shapes({}, {2}, "t"), (Shape{2}));
  try {
    broadcast_shapes({3, 2}, {4}, "add");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("add: shapes (3, 2) and (4,) cannot be broadcast"), std::string::npos)
        << e.what();
  }
}

TEST(Tensor, ZeroDimViews) {
  Tensor s = Tensor::scalar(4.0);
  EXPECT_EQ(s.view({1}).shape(), (Shape{1}));
  EXPECT_EQ(s.reshape({1, 1}).item(), 4.0);
  EXPECT_EQ(Tensor::from_vector({5}, {1}).view({}).dim(), 0);
}
