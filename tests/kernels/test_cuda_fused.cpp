// The fused training-path kernels on CUDA (kernels/cuda/{norm,activation,rope,adamw}.cu)
// against their CPU twins (themselves tested against f64 references in test_norm.cpp,
// test_activation.cpp, test_rope.cpp, test_adamw.cpp): the same random inputs made on the
// CPU and copied, outputs poisoned first (the caching allocator is primed with 0xFF blocks,
// NaN in every float dtype) so that unwritten elements fail; odd sizes (unaligned rows take
// the scalar path, multiples of 8 the 16-byte vector path), row counts across the 32-row
// dweight chunks, head dims 64 and 128, f32/f64/bf16. The norm backward runs twice: the default
// kernel and SOMNUS_NORM_BWD=v1 (the previous one, kept selectable as a fallback).
//
// Without a CUDA device every test calls GTEST_SKIP() with a message (ctest label `cuda`).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tensor/allocator.h"
#include "tests/kernels/reference.h"

using namespace somnus;
using namespace somnus::test;

namespace {

const char* const kNoCuda = "no CUDA device: fused-kernel CUDA tests need a GPU (run tools/gpu_check.sh on one)";

Device gpu() { return Device::cuda(0); }

void poison_next(int64_t nbytes, int count = 4) {
  if (nbytes <= 0) return;
  cuda_allocator(0).empty_cache();
  std::vector<Tensor> blocks;
  for (int i = 0; i < count; ++i) blocks.push_back(Tensor::full({(nbytes + 3) / 4}, -1.0, DType::i32, gpu()));
}

Tensor on_gpu(const Tensor& t) { return t.defined() ? t.to(gpu()) : Tensor(); }

void expect_close(const Tensor& g, const Tensor& c, DType dt, const std::string& what) {
  ASSERT_TRUE(g.defined() && c.defined()) << what;
  EXPECT_TRUE(g.device().is_cuda()) << what;
  ASSERT_EQ(g.shape(), c.shape()) << what;
  const double tol = dt == DType::f64 ? 1e-12 : dt == DType::bf16 ? 1.5e-2 : 2e-5;
  const double err = rel_or_abs_error(g.to_vector(), c.to_vector());
  EXPECT_LE(err, tol) << what << " (rel err " << err << ")";
}

constexpr DType kFloat[] = {DType::f32, DType::f64, DType::bf16};

// Sets a kernel-version variable (SOMNUS_NORM_FWD, SOMNUS_NORM_BWD: kernels/cuda/norm.cu reads
// them on every call) for one scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) { ::setenv(name, value, 1); }
  ~ScopedEnv() { ::unsetenv(name_); }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
};

// Forward and backward against the CPU twin. The backward shapes cover both kernels of
// kernels/cuda/norm.cu: v2 (the row in registers, NV ≤ 4 vectors per thread) takes C = 3..1001
// on the scalar path and 96/1024/2056/8192 vectorised: G = 8 row groups per block (C = 3; 96 in
// bf16/f32), 4 (C = 33; 96 in f64), 2 (1024 in bf16), 1 with NV = 1, 2, 4 and partly owned
// vector slots; it falls back to v1 for wider rows (C = 4100 in every dtype, 8192 in f32/f64,
// 2056 in f64). Row counts 1, 7, 69, 37, 66, 5: a last chunk shorter than 32 rows, groups past
// its end.
// quick: the shapes to run under SOMNUS_TEST_QUICK (compute-sanitizer), one per kernel instance
// of an opt-in backward (empty: all nine).
void norms_match_cpu(const std::string& label, const std::vector<Shape>& quick = {}) {
  Generator gen(1);
  const std::vector<Shape> shapes =
      !quick.empty() && somnus::testing::quick_mode()
          ? quick
          : std::vector<Shape>{{1, 3}, {7, 33}, {69, 96}, {2, 3, 257}, {9, 1001}, {40, 1024}, {37, 2056}, {5, 4100}, {66, 8192}};
  for (DType dt : kFloat) {
    for (const Shape& s : shapes) {
      for (bool layer : {false, true}) {
        for (bool res : {false, true}) {
          const std::string what = case_name(s, dt, Layout::contiguous) + (layer ? " layer" : " rms") +
                                   (res ? " residual" : "") + " " + label;
          const int64_t C = s.back();
          Tensor x = randn(s, gen, dt, Device::cpu(), 0.5, 1.0), r = res ? randn(s, gen, dt) : Tensor();
          Tensor w = randn({C}, gen, dt, Device::cpu(), 1.0, 0.3), b = layer ? randn({C}, gen, dt) : Tensor();
          Tensor dy = randn(s, gen, dt), dh = res ? randn(s, gen, dt) : Tensor();
          kernels::NormResult c = layer ? kernels::layer_norm(x, r, w, b, 1e-5) : kernels::rms_norm(x, r, w, 1e-5);
          kernels::NormGrads cg = kernels::norm_backward(layer, dy, dh, c.h, w, c.mean, c.rstd, layer);
          poison_next(shape_numel(s) * dtype_size(dt));
          kernels::NormResult g = layer ? kernels::layer_norm(on_gpu(x), on_gpu(r), on_gpu(w), on_gpu(b), 1e-5)
                                        : kernels::rms_norm(on_gpu(x), on_gpu(r), on_gpu(w), 1e-5);
          expect_close(g.y, c.y, dt, what + " y");
          expect_close(g.h, c.h, dt, what + " h");
          expect_close(g.rstd, c.rstd, dt == DType::f64 ? dt : DType::f32, what + " rstd");
          poison_next(shape_numel(s) * dtype_size(dt));
          kernels::NormGrads gg =
              kernels::norm_backward(layer, on_gpu(dy), on_gpu(dh), g.h, on_gpu(w), g.mean, g.rstd, layer);
          expect_close(gg.dh, cg.dh, dt, what + " dh");
          expect_close(gg.dweight, cg.dweight, dt, what + " dweight");
          if (layer) {
            expect_close(gg.dbias, cg.dbias, dt, what + " dbias");
            // LayerNorm without a bias gradient: the register kernel's instance without db
            // (kDb = false, as RMSNorm's) with the mean subtracted.
            poison_next(shape_numel(s) * dtype_size(dt));
            kernels::NormGrads nb =
                kernels::norm_backward(layer, on_gpu(dy), on_gpu(dh), g.h, on_gpu(w), g.mean, g.rstd, false);
            EXPECT_FALSE(nb.dbias.defined()) << what;
            expect_close(nb.dh, cg.dh, dt, what + " dh (no bias)");
            expect_close(nb.dweight, cg.dweight, dt, what + " dweight (no bias)");
          }
        }
      }
    }
  }
}

}  // namespace

TEST(CudaFused, NormsMatchCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  ScopedEnv fwd("SOMNUS_NORM_FWD", ""), bwd("SOMNUS_NORM_BWD", "");  // the defaults (v2)
  norms_match_cpu("fwd v2 bwd v2");
}

// LayerNorm's backward with its dw / db accumulators side by side (kernels/cuda/norm.cu kPair).
TEST(CudaFused, NormsMatchCpuBackwardPair) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  ScopedEnv fwd("SOMNUS_NORM_FWD", ""), bwd("SOMNUS_NORM_BWD", "pair");
  // quick: the scalar rows, the row groups G 8 / 4 / 2, and NV 1 / 2 / 4 (f64 among them)
  norms_match_cpu("fwd v2 bwd pair", {{1, 3}, {7, 33}, {69, 96}, {40, 1024}, {37, 2056}, {66, 8192}});
}

// The backward with dw / db accumulators in registers (kernels/cuda/norm.cu
// norm_backward_racc_kernel: bf16 / f32 rows of more than 128 vectors; the other shapes here
// take the default kernel).
TEST(CudaFused, NormsMatchCpuBackwardRacc) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  ScopedEnv fwd("SOMNUS_NORM_FWD", ""), bwd("SOMNUS_NORM_BWD", "racc");
  // quick: racc's 256-, 512- and 1024-thread shapes and a partly filled row
  norms_match_cpu("fwd v2 bwd racc", {{40, 1024}, {37, 2056}, {5, 4100}, {66, 8192}});
}

// Each thread of the register-accumulator backward adds its columns' dw / db products in row
// order, as the default kernel's shared-memory accumulators do: dweight and dbias are bitwise the
// default's, at 256, 512 and 1024 threads a block (dh is not: its row sums are grouped over the
// block's threads). tests/kernels/cuda_emu/norm.cpp checks the same under the host emulation.
TEST(CudaFused, NormBackwardRaccDwDbBitwiseDefault) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  if (somnus::testing::quick_mode()) return;  // NormsMatchCpuBackwardRacc runs the kernel under the sanitizers
  Generator gen(12);
  using somnus::testing::raw_bytes;
  // bf16: 256 / 512 / 1024 threads (C = 2048 / 4096 / 8192); f32: 256 / 512 / 1024 (C = 1024 /
  // 4096 / 8192); f64 and rows that are not 16-byte vectors take the default on both settings.
  for (DType dt : kFloat) {
    for (const Shape& s : std::vector<Shape>{{70, 1024}, {33, 2048}, {40, 4096}, {3, 8192}, {5, 4100}}) {
      for (bool layer : {false, true}) {
        const std::string what = case_name(s, dt, Layout::contiguous) + (layer ? " layer" : " rms");
        const int64_t C = s.back();
        const Tensor x = on_gpu(randn(s, gen, dt, Device::cpu(), 0.5, 1.0));
        const Tensor w = on_gpu(randn({C}, gen, dt, Device::cpu(), 1.0, 0.3)), b = layer ? on_gpu(randn({C}, gen, dt)) : Tensor();
        const Tensor dy = on_gpu(randn(s, gen, dt)), dh = on_gpu(randn(s, gen, dt));
        const kernels::NormResult f = layer ? kernels::layer_norm(x, Tensor(), w, b, 1e-5) : kernels::rms_norm(x, Tensor(), w, 1e-5);
        auto run = [&](const char* version) {
          ScopedEnv env("SOMNUS_NORM_BWD", version);
          return kernels::norm_backward(layer, dy, dh, f.h, w, f.mean, f.rstd, layer);
        };
        const kernels::NormGrads def = run(""), racc = run("racc");
        EXPECT_EQ(raw_bytes(racc.dweight), raw_bytes(def.dweight)) << what << " dweight";
        if (layer) {
          EXPECT_EQ(raw_bytes(racc.dbias), raw_bytes(def.dbias)) << what << " dbias";
        }
        expect_close(racc.dh, def.dh, dt, what + " dh");
      }
    }
  }
}

TEST(CudaFused, NormsMatchCpuBackwardV1) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  if (somnus::testing::quick_mode()) return;  // the sanitizer runs check the default kernels
  ScopedEnv fwd("SOMNUS_NORM_FWD", "v1"), bwd("SOMNUS_NORM_BWD", "v1");  // the previous kernels
  norms_match_cpu("fwd v1 bwd v1");
}

// Where a block holds one row (G = 1: rows of more than 128 16-byte vectors, up to 4 per
// thread), the register forward forms every sum in v1's order: y, h, mean and rstd must be
// bitwise v1's (tests/kernels/cuda_emu/norm.cpp checks the same under the host emulation).
TEST(CudaFused, NormForwardV2BitwiseV1OneRowPerBlock) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator gen(11);
  using somnus::testing::raw_bytes;
  // NV = 1 (1024, 1000: 129–256 vectors or scalars a row), 2 or 4 (4096, 2056, 333) by dtype;
  // f64 rows of 4096 and 2056 take v1 on both settings.
  for (DType dt : kFloat) {
    for (const Shape& s : std::vector<Shape>{{9, 4096}, {3, 2056}, {4, 333}, {5, 1024}, {5, 1000}}) {
      for (bool layer : {false, true}) {
        for (bool res : {false, true}) {
          const std::string what = case_name(s, dt, Layout::contiguous) + (layer ? " layer" : " rms") +
                                   (res ? " residual" : "");
          const int64_t C = s.back();
          const Tensor x = on_gpu(randn(s, gen, dt, Device::cpu(), 0.5, 1.0)), r = res ? on_gpu(randn(s, gen, dt)) : Tensor();
          const Tensor w = on_gpu(randn({C}, gen, dt, Device::cpu(), 1.0, 0.3)), b = layer ? on_gpu(randn({C}, gen, dt)) : Tensor();
          auto run = [&](const char* version) {
            ScopedEnv env("SOMNUS_NORM_FWD", version);
            return layer ? kernels::layer_norm(x, r, w, b, 1e-5) : kernels::rms_norm(x, r, w, 1e-5);
          };
          const kernels::NormResult v2 = run(""), v1 = run("v1");
          EXPECT_EQ(raw_bytes(v2.y), raw_bytes(v1.y)) << what << " y";
          EXPECT_EQ(raw_bytes(v2.rstd), raw_bytes(v1.rstd)) << what << " rstd";
          if (res) {
            EXPECT_EQ(raw_bytes(v2.h), raw_bytes(v1.h)) << what << " h";
          }
          if (layer) {
            EXPECT_EQ(raw_bytes(v2.mean), raw_bytes(v1.mean)) << what << " mean";
          }
        }
      }
    }
  }
}

TEST(CudaFused, SwigluMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator gen(2);
  for (DType dt : kFloat) {
    for (const Shape& s : std::vector<Shape>{{1}, {7}, {3, 33}, {64, 1000}, {5, 4099}}) {
      const std::string what = case_name(s, dt, Layout::contiguous);
      Tensor g = randn(s, gen, dt, Device::cpu(), 0.0, 3.0), u = randn(s, gen, dt), dy = randn(s, gen, dt);
      Tensor cy = kernels::swiglu(g, u);
      auto [cdg, cdu] = kernels::swiglu_backward(g, u, dy);
      poison_next(shape_numel(s) * dtype_size(dt));
      expect_close(kernels::swiglu(on_gpu(g), on_gpu(u)), cy, dt, what + " y");
      poison_next(shape_numel(s) * dtype_size(dt));
      auto [gdg, gdu] = kernels::swiglu_backward(on_gpu(g), on_gpu(u), on_gpu(dy));
      expect_close(gdg, cdg, dt, what + " dgate");
      expect_close(gdu, cdu, dt, what + " dup");
    }
  }
}

// RoPE against the CPU twin, both kernels of kernels/cuda/rope.cu: v2 (the default; 16-byte
// vectors where D/2 is a multiple of 16 / sizeof(T) and the tensors are aligned, else scalar;
// 4 heads per thread, H = 3 and 5 leave a partial chunk) and SOMNUS_ROPE=v1. D 6 (scalar), 48,
// 64, 128; T 37 and 1; x one element off alignment (scalar path). v2 must also be bitwise v1:
// the same per-element expression, contracted to the same FMAs in the sm_90 SASS (2026-11-27).
TEST(CudaFused, RopeMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator gen(3);
  for (DType dt : kFloat) {
    for (int64_t D : {6, 48, 64, 128}) {
      for (int variant = 0; variant < 3; ++variant) {  // pos (T,); pos (B, T); misaligned x, T = 1
        const bool per_batch = variant == 1, shifted = variant == 2;
        const int64_t B = 2, H = D == 48 ? 5 : 3, T = shifted ? 1 : 37, P = 50, n = B * H * T * D;
        const std::string what = case_name({B, H, T, D}, dt, Layout::contiguous) + (per_batch ? " (B, T) pos" : "") +
                                 (shifted ? " x misaligned" : "");
        const Tensor flat = randn({n + 1}, gen, dt);
        Tensor c = randn({P, D / 2}, gen, dt), s = randn({P, D / 2}, gen, dt);
        Tensor pos = per_batch ? randint(0, P, {B, T}, gen, DType::i64) : randint(0, P, {T}, gen, DType::i32);
        const Tensor x = flat.slice(0, shifted ? 1 : 0, shifted ? n + 1 : n).view({B, H, T, D});
        const Tensor xg = on_gpu(flat).slice(0, shifted ? 1 : 0, shifted ? n + 1 : n).view({B, H, T, D});
        for (bool inv : {false, true}) {
          Tensor cy = kernels::rope(x, c, s, pos, inv);
          auto run = [&](const char* version) {
            ::setenv("SOMNUS_ROPE", version, 1);
            poison_next(x.nbytes());
            Tensor y = kernels::rope(xg, on_gpu(c), on_gpu(s), on_gpu(pos), inv);
            ::unsetenv("SOMNUS_ROPE");
            return y;
          };
          const Tensor v2 = run(""), v1 = run("v1");
          expect_close(v2, cy, dt, what + (inv ? " inverse" : "") + " v2");
          expect_close(v1, cy, dt, what + (inv ? " inverse" : "") + " v1");
          const std::vector<double> a = v2.to_vector(), b = v1.to_vector();
          int64_t differ = 0;
          for (size_t i = 0; i < a.size(); ++i) differ += a[i] != b[i];
          EXPECT_EQ(differ, 0) << what << (inv ? " inverse" : "") << ": elements where v2 is not bitwise v1";
        }
      }
    }
  }
}

TEST(CudaFused, AdamWMatchesCpu) {
  if (!somnus::cuda_available()) GTEST_SKIP() << kNoCuda;
  Generator gen(4);
  for (DType dt : {DType::f32, DType::f64}) {
    // 30 tensors: more than one launch's batch (24), odd sizes, one larger than a block's chunk.
    std::vector<Tensor> w, g, m, v, wg, gg, mg, vg, outc, outg;
    std::vector<kernels::AdamWHyper> h;
    for (int i = 0; i < 30; ++i) {
      const Shape s = {1 + (i * 37) % 101, i == 7 ? 97 : 3};
      w.push_back(randn(s, gen, dt));
      g.push_back(randn(s, gen, dt));
      m.push_back(randn(s, gen, dt, Device::cpu(), 0.0, 0.1));
      v.push_back(rand(s, gen, dt, Device::cpu(), 0.0, 0.1));
      wg.push_back(w.back().to(gpu()));
      gg.push_back(g.back().to(gpu()));
      mg.push_back(m.back().to(gpu()));
      vg.push_back(v.back().to(gpu()));
      outc.push_back(Tensor::empty(s, DType::bf16));
      outg.push_back(Tensor::full(s, 0.0, DType::bf16, gpu()));
      h.push_back(kernels::AdamWHyper{.lr = 1e-3 * (1 + i % 3), .weight_decay = i % 2 ? 0.1 : 0.0,
                                      .step = 1 + i % 5});
    }
    for (bool sr : {false, true}) {
      const Tensor clip = Tensor::scalar(0.5, DType::f32);
      kernels::adamw_step(w, g, m, v, h, clip, outc, sr, 77);
      kernels::adamw_step(wg, gg, mg, vg, h, clip.to(gpu()), outg, sr, 77);
      for (size_t i = 0; i < w.size(); ++i) {
        const std::string what = std::string(dtype_name(dt)) + (sr ? " sr" : "") + " tensor " + std::to_string(i);
        expect_close(wg[i], w[i], dt, what + " w");
        expect_close(mg[i], m[i], dt, what + " m");
        expect_close(vg[i], v[i], dt, what + " v");
        // The same Philox bits on both devices: bf16 copies agree except where the f32 masters
        // differ by an ulp near a rounding boundary.
        expect_close(outg[i], outc[i], DType::bf16, what + " bf16 copy");
      }
    }
  }
}
