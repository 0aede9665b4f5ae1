// Fused attention on CPU (kernels/cpu/attention.cpp, the CUDA kernels' twin) against the f64
// explicit-P reference of attention_reference.h: forward o and lse, backward dq, dk, dv in
// the atomic and the deterministic mode, over a table of odd sizes (T not a multiple of the
// 64-row tile, T = 1, S ≠ T with a query offset, D ∈ {64, 128, 24, 7}, GQA ratios 1, 4, 8,
// causal and not) for f32, f64 and bf16; a finite-difference gradcheck of the autograd
// wrapper in f64; split-K decode against the forward; the fused path of nn::attention against
// its composed path; and the errors on bad input.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <string>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "kernels/decode_splits.h"
#include "kernels/ops.h"
#include "nn/attention.h"
#include "tests/kernels/attention_reference.h"
#include "tests/kernels/reference.h"

using namespace somnus;
using namespace somnus::kernels;
using namespace somnus::test;

namespace {

//                B  Hq Hkv  T    S    D   causal offset
const AttnCase kCases[] = {
    {2, 2, 2, 64, 64, 64, true, 0},      // one tile exactly
    {1, 4, 1, 77, 77, 64, true, 0},      // masked tails, MQA (ratio 4)
    {2, 8, 1, 33, 33, 128, false, 0},    // GQA ratio 8, non-causal
    {1, 2, 2, 1, 1, 64, true, 0},        // T = S = 1
    {2, 4, 1, 1, 130, 128, true, 129},   // one decode query at the end of a cache
    {1, 4, 4, 5, 131, 64, true, 126},    // S ≠ T with offset S − T
    {1, 2, 1, 19, 70, 64, true, 3},      // offset with keys no query sees (their dk, dv = 0)
    {1, 2, 2, 70, 45, 24, false, 0},     // S < T, odd D, non-causal
    {1, 4, 2, 129, 129, 7, true, 0},     // D = 7, three query tiles, ratio 2
    {1, 8, 1, 65, 200, 128, false, 0},   // ratio 8, S ≫ tile
    {4, 8, 4, 70, 70, 64, true, 0},      // B·Hkv = 16: the per-group deterministic backward
    {8, 2, 2, 9, 140, 24, true, 131},    // per-group, offset, odd D
};

std::string case_name(const AttnCase& c, DType dt) {
  return fmt::format("B{} Hq{} Hkv{} T{} S{} D{} {} off{} {}", c.B, c.Hq, c.Hkv, c.T, c.S, c.D,
                     c.causal ? "causal" : "full", c.q_offset, dtype_name(dt));
}

double fwd_tol(DType d) { return d == DType::f64 ? 1e-12 : d == DType::bf16 ? 1e-2 : 1e-5; }
double bwd_tol(DType d) { return d == DType::f64 ? 1e-11 : d == DType::bf16 ? 2e-2 : 2e-5; }

struct Inputs {
  Tensor q, k, v, dout;
};

Inputs make_inputs(const AttnCase& c, DType dt, uint64_t seed) {
  Generator gen(seed);
  return {randn({c.B, c.Hq, c.T, c.D}, gen, dt), randn({c.B, c.Hkv, c.S, c.D}, gen, dt),
          randn({c.B, c.Hkv, c.S, c.D}, gen, dt), randn({c.B, c.Hq, c.T, c.D}, gen, dt)};
}

TEST(Attention, ForwardAndBackwardMatchExplicitReference) {
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    uint64_t seed = 100;
    for (const AttnCase& c : kCases) {
      SCOPED_TRACE(case_name(c, dt));
      const Inputs in = make_inputs(c, dt, seed++);
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.D));
      const AttnRef ref = attention_reference(in.q, in.k, in.v, in.dout, c.causal, scale, c.q_offset);
      const AttentionOutput out = attention_fwd(in.q, in.k, in.v, c.causal, 0.0, c.q_offset);
      ASSERT_EQ(out.o.dtype(), dt);
      ASSERT_EQ(out.lse.dtype(), dt == DType::f64 ? DType::f64 : DType::f32);
      ASSERT_EQ(out.lse.shape(), Shape({c.B, c.Hq, c.T}));
      EXPECT_LT(rel_or_abs_error(out.o, ref.o), fwd_tol(dt));
      EXPECT_LT(rel_or_abs_error(out.lse, ref.lse), dt == DType::f64 ? 1e-12 : 1e-5);
      for (bool det : {false, true}) {
        SCOPED_TRACE(det ? "deterministic" : "atomic dQ");
        const AttentionGrads g = attention_bwd(in.q, in.k, in.v, out.o, out.lse, in.dout, c.causal, 0.0, c.q_offset, det);
        EXPECT_LT(rel_or_abs_error(g.dq, ref.dq), bwd_tol(dt));
        EXPECT_LT(rel_or_abs_error(g.dk, ref.dk), bwd_tol(dt));
        EXPECT_LT(rel_or_abs_error(g.dv, ref.dv), bwd_tol(dt));
      }
    }
  }
}

TEST(Attention, ExplicitScaleAndStridedInputs) {
  const AttnCase c{2, 4, 2, 40, 40, 64, true, 0};
  Generator gen(5);
  // (B, T, H, D) tensors transposed to (B, H, T, D): the module's layout.
  const Tensor q = randn({c.B, c.T, c.Hq, c.D}, gen).transpose(1, 2);
  const Tensor k = randn({c.B, c.S, c.Hkv, c.D}, gen).transpose(1, 2);
  const Tensor v = randn({c.B, c.S, c.Hkv, c.D}, gen).transpose(1, 2);
  const AttnRef ref = attention_reference(q, k, v, Tensor(), true, 0.3, 0);
  const AttentionOutput out = attention_fwd(q, k, v, true, 0.3, 0);
  EXPECT_LT(rel_or_abs_error(out.o, ref.o), 1e-5);
  EXPECT_LT(rel_or_abs_error(out.lse, ref.lse), 1e-5);
}

// A KV cache hands the attention a (B, Hkv, len, D) prefix of (B, Hkv, capacity, D) buffers:
// rows contiguous, heads `capacity` rows apart. The CPU forward and decode read it in place
// (kernels/ops.cpp kv_operand) and must give bit for bit what the contiguous copy gives.
TEST(Attention, KvCachePrefixViewsReadInPlace) {
  Generator g(31);
  const int64_t B = 2, Hq = 4, Hkv = 2, D = 16, cap = 1300;
  const Tensor kbuf = randn({B, Hkv, cap, D}, g), vbuf = randn({B, Hkv, cap, D}, g);
  for (int64_t S : {1, 37, 1100}) {
    const Tensor k = kbuf.slice(2, 0, S), v = vbuf.slice(2, 0, S);
    ASSERT_FALSE(k.is_contiguous());
    const Tensor kc = k.contiguous(), vc = v.contiguous();
    for (int64_t T : {1, 3}) {
      if (T > S) continue;
      const Tensor q = randn({B, Hq, T, D}, g);
      const AttentionOutput a = attention_fwd(q, k, v, true, 0.0, S - T), b = attention_fwd(q, kc, vc, true, 0.0, S - T);
      EXPECT_EQ(a.o.to_vector(), b.o.to_vector()) << "fwd S " << S << " T " << T;
      EXPECT_EQ(a.lse.to_vector(), b.lse.to_vector()) << "fwd S " << S << " T " << T;
      const AttentionOutput c = attention_decode(q, k, v, true, 0.0, S - T, 4);
      const AttentionOutput e = attention_decode(q, kc, vc, true, 0.0, S - T, 4);
      EXPECT_EQ(c.o.to_vector(), e.o.to_vector()) << "decode S " << S << " T " << T;
      EXPECT_LT(rel_or_abs_error(c.o, b.o.to_vector()), 1e-5) << "decode vs fwd S " << S;
    }
  }
}

TEST(Attention, DeterministicBackwardIsBitwiseRepeatable) {
  // Key-tile chunks with per-chunk dQ accumulators (B·Hkv = 2: 4 chunks of one tile;
  // B·Hkv = 4: 4 chunks over 5 tiles, cut by work) and one chunk per group (B·Hkv = 16).
  // The same bits with 1, 2 and 3 threads: the chunking depends on the shapes only.
  const int threads = omp_get_max_threads();
  for (const AttnCase& c : {AttnCase{2, 4, 1, 200, 200, 64, true, 0}, AttnCase{1, 4, 4, 260, 280, 24, true, 20},
                            AttnCase{4, 8, 4, 100, 100, 64, true, 0}}) {
    const Inputs in = make_inputs(c, DType::f32, 9);
    const AttentionOutput out = attention_fwd(in.q, in.k, in.v, true, 0.0, c.q_offset);
    omp_set_num_threads(2);
    const AttentionGrads a = attention_bwd(in.q, in.k, in.v, out.o, out.lse, in.dout, true, 0.0, c.q_offset, true);
    for (int n : {1, 3}) {
      omp_set_num_threads(n);
      const AttentionGrads b = attention_bwd(in.q, in.k, in.v, out.o, out.lse, in.dout, true, 0.0, c.q_offset, true);
      EXPECT_EQ(a.dq.to_vector(), b.dq.to_vector()) << case_name(c, DType::f32) << " threads " << n;
      EXPECT_EQ(a.dk.to_vector(), b.dk.to_vector()) << case_name(c, DType::f32) << " threads " << n;
      EXPECT_EQ(a.dv.to_vector(), b.dv.to_vector()) << case_name(c, DType::f32) << " threads " << n;
    }
    // And still the gradients: against the explicit-P reference.
    const AttnRef ref =
        attention_reference(in.q, in.k, in.v, in.dout, true, 1.0 / std::sqrt(static_cast<double>(c.D)), c.q_offset);
    EXPECT_LT(rel_or_abs_error(a.dq, ref.dq), bwd_tol(DType::f32)) << case_name(c, DType::f32);
    EXPECT_LT(rel_or_abs_error(a.dk, ref.dk), bwd_tol(DType::f32)) << case_name(c, DType::f32);
    EXPECT_LT(rel_or_abs_error(a.dv, ref.dv), bwd_tol(DType::f32)) << case_name(c, DType::f32);
  }
  omp_set_num_threads(threads);
}

TEST(Attention, GradcheckOfAutogradWrapper) {
  struct G {
    int64_t Hq, Hkv, T, S, D;
    bool causal;
    int64_t off;
  };
  for (const G& c : {G{2, 1, 5, 5, 3, true, 0}, G{4, 2, 3, 7, 4, true, 4}, G{2, 2, 4, 6, 5, false, 0}}) {
    SCOPED_TRACE(fmt::format("Hq{} Hkv{} T{} S{} D{} causal{} off{}", c.Hq, c.Hkv, c.T, c.S, c.D, c.causal, c.off));
    Generator gen(21);
    Tensor q = randn({1, c.Hq, c.T, c.D}, gen, DType::f64).set_requires_grad(true);
    Tensor k = randn({1, c.Hkv, c.S, c.D}, gen, DType::f64).set_requires_grad(true);
    Tensor v = randn({1, c.Hkv, c.S, c.D}, gen, DType::f64).set_requires_grad(true);
    const auto r = gradcheck(
        [&](const std::vector<Tensor>& x) {
          return scaled_dot_product_attention(x[0], x[1], x[2], c.causal, 0.0, c.off);
        },
        {q, k, v});
    EXPECT_TRUE(r.ok) << r.message;
  }
}

TEST(Attention, DecodeMatchesForward) {
  for (DType dt : {DType::f32, DType::bf16, DType::f64}) {
    for (int64_t Tq : {1, 4}) {
      for (int64_t splits : {0, 1, 3, 7, 1000}) {
        const AttnCase c{2, 8, 2, Tq, 523, 128, true, 523 - Tq};
        SCOPED_TRACE(case_name(c, dt) + fmt::format(" splits {}", splits));
        const Inputs in = make_inputs(c, dt, 77 + Tq);
        const AttentionOutput ref = attention_fwd(in.q, in.k, in.v, true, 0.0, c.q_offset);
        const AttentionOutput dec = attention_decode(in.q, in.k, in.v, true, 0.0, c.q_offset, splits);
        // The same f32 algorithm with a different summation split: f32 rounding apart (bf16:
        // o is rounded once from f32 on both paths).
        EXPECT_LT(rel_or_abs_error(dec.o, ref.o.to_vector()), dt == DType::bf16 ? 1e-2 : 1e-5);
        EXPECT_LT(rel_or_abs_error(dec.lse, ref.lse.to_vector()), 1e-6);
        const AttnRef exact = attention_reference(in.q, in.k, in.v, Tensor(), true, 1.0 / std::sqrt(128.0), c.q_offset);
        EXPECT_LT(rel_or_abs_error(dec.o, exact.o), fwd_tol(dt));
      }
    }
  }
  // Non-causal, with a query offset (ignored) and S not a multiple of the splits.
  const AttnCase c{1, 4, 4, 3, 300, 64, false, 0};
  const Inputs in = make_inputs(c, DType::f32, 3);
  const AttnRef exact = attention_reference(in.q, in.k, in.v, Tensor(), false, 0.125, 0);
  EXPECT_LT(rel_or_abs_error(attention_decode(in.q, in.k, in.v, false, 0.0, 0, 4).o, exact.o), 1e-5);
}

// The CUDA backend's choice of decode splits (kernels/decode_splits.h): the wave efficiency
// of blocks_per_split·n blocks on `slots` slots, the smallest n within 0.85 of the best.
TEST(Attention, DecodeSplitHeuristicFillsWaves) {
  // H100, GQA decode kernel at R = 4: 132 SMs × 3 blocks; B 8 × Hkv 8 = 64 blocks per split.
  // n = 6: 384 of 396 slots (0.97 of a wave); n = 5: 320 (0.81 < 0.85 · 0.97).
  EXPECT_EQ(decode_splits_for_waves(64, 396, 4096), 6);
  EXPECT_EQ(decode_splits_for_waves(64, 396, 1024), 6);
  EXPECT_EQ(decode_splits_for_waves(64, 396, 32768), 6);
  // A short cache caps the splits at S / 64 keys: S = 200 gives at most 3.
  EXPECT_EQ(decode_splits_for_waves(64, 396, 200), 3);
  EXPECT_EQ(decode_splits_for_waves(64, 396, 10), 1);
  // Enough blocks already (>= 80% of a wave): one split.
  EXPECT_EQ(decode_splits_for_waves(320, 396, 4096), 1);
  // Two blocks per split on 396 slots: more splits always fill more; the smallest n with
  // 2n >= 0.85 · 2 · 15 under the cap S / 64 = 15 is 13.
  EXPECT_EQ(decode_splits_for_waves(2, 396, 1000), 13);
  // Degenerate inputs give one split, never 0.
  EXPECT_EQ(decode_splits_for_waves(0, 396, 1000), 1);
  EXPECT_EQ(decode_splits_for_waves(64, 0, 1000), 1);
  // Every answer is within [1, max_splits] and never below 0.85 of the best efficiency.
  for (int64_t blocks : {1, 7, 64, 100, 250}) {
    for (int64_t S : {64, 1000, 4096, 100000}) {
      const int64_t n = decode_splits_for_waves(blocks, 396, S);
      EXPECT_GE(n, 1);
      EXPECT_LE(n, 128);
      EXPECT_LE(n, std::max<int64_t>(S / 64, 1));
    }
  }
}

// Without grad, a few queries against a long cache take the decode kernel in the wrapper.
TEST(Attention, WrapperUsesDecodeForShortQueriesWithoutGrad) {
  const AttnCase c{1, 4, 2, 2, 1500, 64, true, 1498};
  const Inputs in = make_inputs(c, DType::f32, 13);
  Tensor y;
  {
    autograd::NoGradGuard guard;
    y = scaled_dot_product_attention(in.q, in.k, in.v, true, 0.0, c.q_offset);
  }
  const AttnRef exact = attention_reference(in.q, in.k, in.v, Tensor(), true, 0.125, c.q_offset);
  EXPECT_LT(rel_or_abs_error(y, exact.o), 1e-5);
}

// The fused path of nn::attention (no bias) against its composed matmul + softmax path
// (taken whenever a bias is given; a zero bias changes nothing): values and gradients.
TEST(Attention, FusedMatchesComposedNnAttention) {
  const AttnCase c{2, 4, 2, 37, 41, 64, true, 4};
  Generator gen(11);
  Tensor q = randn({c.B, c.Hq, c.T, c.D}, gen).set_requires_grad(true);
  Tensor k = randn({c.B, c.Hkv, c.S, c.D}, gen).set_requires_grad(true);
  Tensor v = randn({c.B, c.Hkv, c.S, c.D}, gen).set_requires_grad(true);
  const Tensor w = randn({c.B, c.Hq, c.T, c.D}, gen);
  std::vector<std::vector<double>> res[2];
  for (int composed = 0; composed < 2; ++composed) {
    q.set_grad(Tensor());
    k.set_grad(Tensor());
    v.set_grad(Tensor());
    const Tensor bias = composed ? Tensor::zeros({1, 1, 1, c.S}) : Tensor();
    Tensor y = nn::attention(q, k, v, true, 0.0, c.q_offset, bias);
    backward(sum(y * w));
    res[composed] = {y.to_vector(), q.grad().to_vector(), k.grad().to_vector(), v.grad().to_vector()};
  }
  for (int i = 0; i < 4; ++i) EXPECT_LT(rel_or_abs_error(res[0][i], res[1][i]), 1e-5) << "output " << i;
}

TEST(Attention, BadInputThrows) {
  const Tensor q = Tensor::zeros({1, 4, 8, 16}), k = Tensor::zeros({1, 3, 8, 16});
  EXPECT_THROW(attention_fwd(q, k, k, true), Error);                           // 3 ∤ 4
  EXPECT_THROW(attention_fwd(q, q, Tensor::zeros({1, 4, 9, 16}), true), Error);  // k, v differ
  EXPECT_THROW(attention_fwd(q, q, q, true, 0.0, -1), Error);                  // negative offset
  EXPECT_THROW(attention_fwd(q, q.to(DType::f64), q, true), Error);            // dtypes differ
  EXPECT_THROW(attention_fwd(q.view({4, 8, 16}), q, q, true), Error);          // rank
  const AttentionOutput out = attention_fwd(q, q, q, true);
  EXPECT_THROW(attention_bwd(q, q, q, out.o, out.lse.to(DType::f64), q, true), Error);  // lse dtype
  try {
    attention_fwd(q, k, k, true);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("attention_fwd"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("(1, 3, 8, 16)"), std::string::npos) << e.what();
  }
}

}  // namespace
