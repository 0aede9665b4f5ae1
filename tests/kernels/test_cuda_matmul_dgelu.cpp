// The fused GELU-MLP backward on CUDA (kernels::matmul_dgelu_bgrad through cuBLASLt's
// DGELU_BGRAD epilogue, kernels/cuda/matmul.cu) against its CPU twin, itself tested against
// an f64 reference in test_matmul_dgelu.cpp: dz and dbias poisoned (NaN) first; shapes that
// take the epilogue (N % 8 == 0, stacked rows) and shapes that fall back (odd N, per-batch
// b, f64); bf16 must take the epilogue (cuBLASLt supports DGELU_BGRAD for bf16), f32 reports
// which path it took. Then mlp_gelu end to end (forward GELU_AUX_BIAS, fused backward).
//
// Without a CUDA device every test calls GTEST_SKIP() with a message (ctest label `cuda`).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/fused_mlp.h"
#include "kernels/matmul_dgelu.h"
#include "tests/kernels/reference.h"

using namespace somnus;
using namespace somnus::test;

namespace {

const char* const kNoCuda = "no CUDA device: the DGELU_BGRAD epilogue tests need a GPU (run tools/gpu_check.sh on one)";

Tensor on_gpu(const Tensor& t) { return t.defined() ? t.to(Device::cuda(0)) : Tensor(); }

double tol(DType d) { return d == DType::f64 ? 1e-12 : d == DType::bf16 ? 2e-2 : 2e-5; }

void expect_close(const Tensor& gpu, const Tensor& cpu, DType dt, const std::string& what) {
  ASSERT_TRUE(gpu.defined() && cpu.defined()) << what;
  EXPECT_TRUE(gpu.device().is_cuda()) << what;
  ASSERT_EQ(gpu.shape(), cpu.shape()) << what;
  const double err = rel_or_abs_error(gpu.to_vector(), cpu.to_vector());
  EXPECT_LE(err, tol(dt)) << what << " (rel err " << err << ")";
}

}  // namespace

TEST(CudaMatmulDgelu, MatchesCpuTwin) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  struct Case {
    Shape g, b;
    bool fused_possible;
  };
  const Case cases[] = {
      {{64, 96}, {96, 128}, true},       // 2-D, aligned
      {{2, 33, 40}, {40, 256}, true},    // stacked rows (the MLP), odd row count
      {{3, 17, 24}, {24, 13}, false},    // N % 8 != 0: aux ld not allowed -> fallback
      {{3, 16, 24}, {3, 24, 32}, false}, // per-batch b -> fallback
  };
  Generator gen(21);
  for (DType dt : {DType::f32, DType::bf16, DType::f64}) {
    for (const Case& c : cases) {
      const std::string what = fmt::format("g {} b {} {}", shape_str(c.g), shape_str(c.b), dtype_name(dt));
      const Tensor g = randn(c.g, gen, dt), b = randn(c.b, gen, dt) * 0.2;
      Shape ps(c.g.begin(), c.g.end() - 1);
      ps.push_back(c.b.back());
      const Tensor pre = randn(ps, gen, dt) * 2.0;
      const kernels::MatmulDgeluBgrad ref = kernels::matmul_dgelu_bgrad(g, b, pre, true);
      // Directly: did the epilogue run? (dz, dbias poisoned so that unwritten elements fail.)
      const Tensor dz = Tensor::full(ps, NAN, dt, Device::cuda(0));
      const Tensor db = Tensor::full({c.b.back()}, NAN, dt, Device::cuda(0));
      const bool fused = kernels::cuda::matmul_dgelu_bgrad(on_gpu(g), on_gpu(b), on_gpu(pre), dz, db);
      std::printf("%s: %s\n", what.c_str(), fused ? "DGELU_BGRAD epilogue" : "fallback");
      if (!c.fused_possible || dt == DType::f64) {
        EXPECT_FALSE(fused) << what;
      }
      if (c.fused_possible && dt == DType::bf16) {
        EXPECT_TRUE(fused) << what;
      }
      if (fused) {
        expect_close(dz, ref.dz, dt, what + " dz (epilogue)");
        expect_close(db, ref.dbias, dt, what + " dbias (epilogue)");
      }
      // Through the op (epilogue or fallback).
      const kernels::MatmulDgeluBgrad r = kernels::matmul_dgelu_bgrad(on_gpu(g), on_gpu(b), on_gpu(pre), true);
      expect_close(r.dz, ref.dz, dt, what + " dz");
      expect_close(r.dbias, ref.dbias, dt, what + " dbias");
      const kernels::MatmulDgeluBgrad r2 = kernels::matmul_dgelu_bgrad(on_gpu(g), on_gpu(b), on_gpu(pre), false);
      expect_close(r2.dz, ref.dz, dt, what + " dz (no dbias: DGELU)");
      EXPECT_FALSE(r2.dbias.defined()) << what;
    }
  }
}

TEST(CudaMatmulDgelu, MlpGeluMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator gen(4);
  for (DType dt : {DType::f32, DType::bf16}) {
    const Tensor x0 = randn({2, 9, 64}, gen, dt), w10 = randn({64, 256}, gen, dt) * 0.1, b10 = randn({256}, gen, dt);
    const Tensor w20 = randn({256, 64}, gen, dt) * 0.1, b20 = randn({64}, gen, dt), gy = randn({2, 9, 64}, gen, dt);
    std::vector<Tensor> out[2];
    for (int dev = 0; dev < 2; ++dev) {
      const auto put = [&](const Tensor& t) { return (dev ? on_gpu(t) : t.clone()).set_requires_grad(true); };
      Tensor x = put(x0), w1 = put(w10), b1 = put(b10), w2 = put(w20), b2 = put(b20);
      const Tensor y = mlp_gelu(x, w1, b1, w2, b2);
      backward(y, dev ? on_gpu(gy) : gy);
      out[dev] = {y, x.grad(), w1.grad(), b1.grad(), w2.grad(), b2.grad()};
    }
    const char* names[] = {"y", "dx", "dw1", "db1", "dw2", "db2"};
    for (int i = 0; i < 6; ++i) expect_close(out[1][i], out[0][i], dt, std::string(names[i]) + " " + dtype_name(dt));
  }
}
