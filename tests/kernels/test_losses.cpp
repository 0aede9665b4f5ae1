// Fused chunked lm-head losses (kernels/losses.h, autograd/losses.h) on CPU, checked against
//   - the explicit textbook formula of every branch, computed naively in f64 from the logits:
//     CE (label smoothing, z-loss, ignore_index), forward KL, reverse KL, JSD_β at 0.5,
//     the PPO clipped surrogate in its clipped and unclipped regions for A > 0 and A < 0, k3;
//   - the unfused composition (matmul + log_softmax + the formula, through autograd) for the
//     gradients of h and W;
//   - f64 finite differences (gradcheck);
// plus masks, temperature, different student/teacher widths, V not a multiple of the chunk,
// exact gradient accumulation with a global token count, memory (no (N, V) buffer), errors.
#include <gtest/gtest.h>
#include <omp.h>

#include <bit>
#include <cmath>
#include <vector>

#include "autograd/functions.h"
#include "autograd/gradcheck.h"
#include "autograd/losses.h"
#include "kernels/losses.h"
#include "kernels/ops.h"
#include "tensor/allocator.h"
#include "tensor/random.h"
#include "tensor/format.h"

namespace somnus {
namespace {

// ‖out − ref‖ / ‖ref‖; +inf on a size mismatch or any NaN/inf, so NaN never passes.
double rel_err(const std::vector<double>& out, const std::vector<double>& ref) {
  if (out.size() != ref.size()) return INFINITY;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i]) || !std::isfinite(ref[i])) return INFINITY;
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}
double rel_err(const Tensor& out, const std::vector<double>& ref) { return rel_err(out.to_vector(), ref); }
using Mat = std::vector<std::vector<double>>;

// logits[n][v] = Σ_k h[n][k] W[v][k] / τ, in f64.
Mat logits_of(const Tensor& h, const Tensor& W, double tau) {
  const int64_t H = W.size(1), V = W.size(0), N = h.numel() / H;
  const std::vector<double> hv = h.to_vector(), wv = W.to_vector();
  Mat z(N, std::vector<double>(V));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t v = 0; v < V; ++v) {
      double s = 0.0;
      for (int64_t k = 0; k < H; ++k) s += hv[n * H + k] * wv[v * H + k];
      z[n][v] = s / tau;
    }
  return z;
}

std::vector<double> probs(const std::vector<double>& z) {
  double m = -INFINITY;
  for (double x : z) m = std::max(m, x);
  double s = 0.0;
  for (double x : z) s += std::exp(x - m);
  std::vector<double> p(z.size());
  for (size_t i = 0; i < z.size(); ++i) p[i] = std::exp(z[i] - m) / s;
  return p;
}
double lse(const std::vector<double>& z) {
  double m = -INFINITY;
  for (double x : z) m = std::max(m, x);
  double s = 0.0;
  for (double x : z) s += std::exp(x - m);
  return m + std::log(s);
}

Tensor ids(const std::vector<int64_t>& v) {
  return Tensor::from_vector(std::vector<double>(v.begin(), v.end()), {static_cast<int64_t>(v.size())}, DType::i64);
}

Tensor leaf(Tensor t) {
  t.set_requires_grad(true);
  return t;
}

// ---------------------------------------------------------------- cross-entropy

struct CECase {
  double eps, zl, tau;
  int64_t rows;  // forced rows per chunk (0 = auto)
};

TEST(LinearCrossEntropy, MatchesTextbookAndUnfusedGradients) {
  Generator g(11);
  const int64_t N = 37, H = 16, V = 103;
  for (const CECase c : {CECase{0.0, 0.0, 1.0, 0}, CECase{0.1, 1e-3, 1.0, 8}, CECase{0.2, 1e-2, 1.7, 5}}) {
    SCOPED_TRACE(fmt::format("eps {} z {} tau {} rows {}", c.eps, c.zl, c.tau, c.rows));
    Tensor h = leaf(randn({N, H}, g)), W = leaf(randn({V, H}, g, DType::f32, Device::cpu(), 0.0, 0.3));
    std::vector<int64_t> y(N);
    for (int64_t n = 0; n < N; ++n) y[n] = (n % 7 == 3) ? -100 : (n * 31 + 5) % V;
    LinearCrossEntropyOptions o;
    o.label_smoothing = c.eps;
    o.z_loss = c.zl;
    o.temperature = c.tau;
    o.chunking.rows_per_chunk = c.rows;
    Tensor loss = linear_cross_entropy(h, W, ids(y), o);
    // textbook
    const Mat z = logits_of(h, W, c.tau);
    double ref = 0.0, cnt = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      if (y[n] == -100) continue;
      const double l = lse(z[n]);
      double smooth = 0.0;
      for (int64_t v = 0; v < V; ++v) smooth += (l - z[n][v]) / V;
      ref += (1 - c.eps) * (l - z[n][y[n]]) + c.eps * smooth + c.zl * l * l;
      cnt += 1;
    }
    ref /= cnt;
    EXPECT_NEAR(loss.item(), ref, 1e-5 * std::abs(ref));
    backward(loss);
    // unfused composition in f64 through autograd
    Tensor h64 = leaf(h.detach().to(DType::f64)), W64 = leaf(W.detach().to(DType::f64));
    Tensor logits = matmul(h64, transpose(W64, 0, 1)) / c.tau;
    Tensor lsm = log_softmax(logits);
    std::vector<double> yc(N), m(N);
    for (int64_t n = 0; n < N; ++n) {
      yc[n] = y[n] < 0 ? 0 : y[n];
      m[n] = y[n] < 0 ? 0.0 : 1.0;
    }
    Tensor yi = Tensor::from_vector(yc, {N, 1}, DType::i64), mk = Tensor::from_vector(m, {N}, DType::f64);
    Tensor nll = neg(squeeze(gather(lsm, 1, yi), 1));
    Tensor smooth = neg(mean(lsm, 1));
    Tensor l = squeeze(slice(logits, 1, 0, 1) - slice(lsm, 1, 0, 1), 1);  // logsumexp per row
    Tensor per = nll * (1 - c.eps) + smooth * c.eps + square(l) * c.zl;
    Tensor unf = sum(per * mk) / cnt;
    EXPECT_NEAR(unf.item(), ref, 1e-10 * std::abs(ref));
    backward(unf);
    EXPECT_LT(rel_err(h.grad(), h64.grad().to_vector()), 1e-5);
    EXPECT_LT(rel_err(W.grad(), W64.grad().to_vector()), 1e-5);
  }
}

TEST(LinearCrossEntropy, GradcheckF64) {
  Generator g(3);
  Tensor h = leaf(randn({6, 5}, g, DType::f64)), W = leaf(randn({11, 5}, g, DType::f64));
  Tensor y = ids({1, 0, -100, 10, 4, 7});
  LinearCrossEntropyOptions o;
  o.label_smoothing = 0.1;
  o.z_loss = 0.01;
  o.temperature = 1.3;
  o.chunking.rows_per_chunk = 4;
  auto r = gradcheck([&](const std::vector<Tensor>& x) { return linear_cross_entropy(x[0], x[1], y, o); }, {h, W});
  EXPECT_TRUE(r.ok) << r.message;
}

// Mean with the caller's global count: two half batches summed equal one full batch.
TEST(LinearCrossEntropy, GlobalCountMakesAccumulationExact) {
  Generator g(5);
  const int64_t N = 40, H = 8, V = 50;
  Tensor h = randn({N, H}, g, DType::f64), W = randn({V, H}, g, DType::f64);
  std::vector<int64_t> y(N);
  for (int64_t n = 0; n < N; ++n) y[n] = n < 13 ? (n % 3 == 0 ? -100 : n) : (n * 7) % V;  // uneven halves
  int64_t valid = 0;
  for (int64_t v : y) valid += v != -100;
  LinearCrossEntropyOptions o;
  auto full = kernels::linear_cross_entropy(h, W, ids(y), o);
  o.num_valid = static_cast<double>(valid);
  std::vector<int64_t> y1(y.begin(), y.begin() + 20), y2(y.begin() + 20, y.end());
  auto a = kernels::linear_cross_entropy(h.slice(0, 0, 20), W, ids(y1), o);
  auto b = kernels::linear_cross_entropy(h.slice(0, 20, 40), W, ids(y2), o);
  EXPECT_NEAR(a.loss.item() + b.loss.item(), full.loss.item(), 1e-12);
  std::vector<double> dw = a.dW.to_vector(), dwb = b.dW.to_vector();
  for (size_t i = 0; i < dw.size(); ++i) dw[i] += dwb[i];
  EXPECT_LT(rel_err(dw, full.dW.to_vector()), 1e-12);
  // The local-count means differ (the halves have different valid counts): the test can fail.
  o.num_valid = 0;
  auto a2 = kernels::linear_cross_entropy(h.slice(0, 0, 20), W, ids(y1), o);
  auto b2 = kernels::linear_cross_entropy(h.slice(0, 20, 40), W, ids(y2), o);
  EXPECT_GT(std::abs((a2.loss.item() + b2.loss.item()) / 2 - full.loss.item()), 1e-6);
}

// Never more than a chunk of logits: the peak is dh + dW + one chunk, far below N·V.
TEST(LinearCrossEntropy, PeakMemoryIsOneChunk) {
  Generator g(2);
  const int64_t N = 512, H = 32, V = 2000;
  Tensor h = randn({N, H}, g), W = randn({V, H}, g);
  std::vector<int64_t> y(N);
  for (int64_t n = 0; n < N; ++n) y[n] = (n * 13) % V;
  Tensor yt = ids(y);
  LinearCrossEntropyOptions o;
  o.chunking.rows_per_chunk = 64;
  Allocator& a = cpu_allocator();
  const int64_t before = a.stats().current;
  a.reset_peak();
  auto r = kernels::linear_cross_entropy(h, W, yt, o);
  const int64_t extra = a.stats().peak - before;
  const int64_t grads = (N * H + V * H) * 4, chunk = 64 * V * 4;
  EXPECT_LE(extra, grads + chunk + 64 * 1024) << "peak " << extra;
  EXPECT_LT(extra, N * V * 4 / 4);
  EXPECT_TRUE(std::isfinite(r.loss.item()));
}

// A frozen lm head (W without requires_grad): dW is neither computed nor allocated, and dh is
// the same as with a trainable W.
TEST(LinearCrossEntropy, FrozenHeadSkipsDW) {
  Generator g(14);
  const int64_t N = 16, H = 256, V = 500;  // dW (512 KB) is larger than a chunk + dh (48 KB)
  Tensor W = randn({V, H}, g, DType::f32, Device::cpu(), 0.0, 0.1);
  Tensor h1 = leaf(randn({N, H}, g)), h2 = leaf(h1.detach().clone()), Wt = leaf(W.clone());
  std::vector<int64_t> y(N);
  for (int64_t n = 0; n < N; ++n) y[n] = (n * 7) % V;
  Allocator& a = cpu_allocator();
  const int64_t before = a.stats().current;
  a.reset_peak();
  Tensor l1 = linear_cross_entropy(h1, W, ids(y));
  const int64_t frozen_peak = a.stats().peak - before;
  backward(l1);
  EXPECT_LT(frozen_peak, V * H * 4) << "a (V, H) dW buffer was allocated";
  backward(linear_cross_entropy(h2, Wt, ids(y)));
  EXPECT_FALSE(W.grad().defined());
  EXPECT_TRUE(Wt.grad().defined());
  EXPECT_LT(rel_err(h1.grad(), h2.grad().to_vector()), 1e-7);
}

// The autograd node scales the precomputed gradients by the incoming gradient g, and for a
// bf16 parameter with g = 1 hands out the cast of dW directly (no f32 g · dW buffer): both
// must give what the kernel computed — exactly the cast for g = 1, and g · dW otherwise.
TEST(LinearCrossEntropy, AutogradScalesByUpstreamGradientAndCastsForBf16) {
  Generator g(15);
  const int64_t N = 12, H = 32, V = 70;
  const Tensor h0 = randn({N, H}, g, DType::bf16), W0 = randn({V, H}, g, DType::bf16, Device::cpu(), 0.0, 0.1);
  std::vector<int64_t> y(N);
  for (int64_t n = 0; n < N; ++n) y[n] = (n * 5) % V;
  const LinearLossResult k = kernels::linear_cross_entropy(h0, W0, ids(y), LinearCrossEntropyOptions{});
  for (double up : {1.0, 2.5}) {
    Tensor h = leaf(h0.clone()), W = leaf(W0.clone());
    backward(linear_cross_entropy(h, W, ids(y)), Tensor::scalar(up, DType::f32));
    ASSERT_EQ(W.grad().dtype(), DType::bf16);
    const Tensor want_dW = kernels::cast(kernels::binary(kernels::Binary::mul, k.dW, Tensor::scalar(up, k.dW.dtype())),
                                         DType::bf16);
    const Tensor want_dh = kernels::cast(kernels::binary(kernels::Binary::mul, k.dh, Tensor::scalar(up, k.dh.dtype())),
                                         DType::bf16);
    EXPECT_EQ(W.grad().to_vector(), want_dW.to_vector()) << "upstream " << up;
    EXPECT_EQ(h.grad().to_vector(), want_dh.to_vector()) << "upstream " << up;
  }
}

// ---------------------------------------------------------------- JSD

struct JSDTextbook {
  double loss = 0.0;
};
// β = 0: KL(T‖S); β = 1: KL(S‖T); else β KL(T‖M) + (1−β) KL(S‖M), M = β p_T + (1−β) p_S.
double jsd_textbook(const std::vector<double>& zs, const std::vector<double>& zt, double beta) {
  const std::vector<double> ps = probs(zs), pt = probs(zt);
  double l = 0.0;
  for (size_t v = 0; v < ps.size(); ++v) {
    if (beta == 0.0) {
      l += pt[v] * std::log(pt[v] / ps[v]);
    } else if (beta == 1.0) {
      l += ps[v] * std::log(ps[v] / pt[v]);
    } else {
      const double m = beta * pt[v] + (1 - beta) * ps[v];
      l += beta * pt[v] * std::log(pt[v] / m) + (1 - beta) * ps[v] * std::log(ps[v] / m);
    }
  }
  return l;
}

TEST(LinearJSD, MatchesTextbookAndUnfusedGradients) {
  Generator g(21);
  const int64_t B = 3, T = 9, Hs = 12, Ht = 20, V = 77;
  const int64_t N = B * T;
  for (double beta : {0.0, 0.5, 1.0, 0.3}) {
    for (double tau : {1.0, 2.0}) {
      for (double hw : {0.0, 0.4}) {
        SCOPED_TRACE(fmt::format("beta {} tau {} hard {}", beta, tau, hw));
        Tensor hs = leaf(randn({B, T, Hs}, g)), Ws = leaf(randn({V, Hs}, g, DType::f32, Device::cpu(), 0.0, 0.3));
        Tensor ht = randn({B, T, Ht}, g), Wt = randn({V, Ht}, g, DType::f32, Device::cpu(), 0.0, 0.3);
        std::vector<double> m(N), yv(N);
        for (int64_t n = 0; n < N; ++n) {
          m[n] = (n % 5 == 2) ? 0.0 : 1.0;
          yv[n] = (n % 4 == 1) ? -100 : (n * 17 + 3) % V;
        }
        LinearJSDOptions o;
        o.beta = beta;
        o.temperature = tau;
        o.mask = Tensor::from_vector(m, {B, T});
        o.chunking.rows_per_chunk = 4;
        if (hw != 0.0) {
          o.targets = Tensor::from_vector(yv, {B, T}, DType::i64);
          o.hard_label_weight = hw;
        }
        Tensor loss = linear_jsd(hs, Ws, ht, Wt, o);
        const Mat zs = logits_of(hs, Ws, tau), zt = logits_of(ht, Wt, tau), raw = logits_of(hs, Ws, 1.0);
        double ref = 0.0, cnt = 0.0;
        for (int64_t n = 0; n < N; ++n) {
          if (m[n] == 0.0) continue;
          cnt += 1;
          ref += jsd_textbook(zs[n], zt[n], beta);
          if (hw != 0.0 && yv[n] >= 0) ref += hw * (lse(raw[n]) - raw[n][static_cast<int64_t>(yv[n])]);
        }
        ref /= cnt;
        EXPECT_NEAR(loss.item(), ref, 2e-5 * std::abs(ref) + 1e-7);
        backward(loss);
        // unfused, f64, through autograd
        Tensor hs64 = leaf(hs.detach().to(DType::f64).view({N, Hs})), Ws64 = leaf(Ws.detach().to(DType::f64));
        Tensor lps = log_softmax(matmul(hs64, transpose(Ws64, 0, 1)) / tau);
        Tensor lpt = log_softmax(matmul(ht.to(DType::f64).view({N, Ht}), Wt.to(DType::f64).transpose(0, 1)) / tau);
        Tensor per;
        if (beta == 0.0) {
          per = sum(exp(lpt) * (lpt - lps), 1);
        } else if (beta == 1.0) {
          per = sum(exp(lps) * (lps - lpt), 1);
        } else {
          Tensor lm = log(exp(lpt) * beta + exp(lps) * (1 - beta));
          per = sum(exp(lpt) * (lpt - lm), 1) * beta + sum(exp(lps) * (lps - lm), 1) * (1 - beta);
        }
        if (hw != 0.0) {
          std::vector<double> yc(N), ym(N);
          for (int64_t n = 0; n < N; ++n) {
            yc[n] = yv[n] < 0 ? 0 : yv[n];
            ym[n] = yv[n] < 0 ? 0 : 1;
          }
          Tensor lr = log_softmax(matmul(hs64, transpose(Ws64, 0, 1)));
          Tensor nll = neg(squeeze(gather(lr, 1, Tensor::from_vector(yc, {N, 1}, DType::i64)), 1));
          per = per + nll * Tensor::from_vector(ym, {N}, DType::f64) * hw;
        }
        Tensor unf = sum(per * Tensor::from_vector(m, {N}, DType::f64)) / cnt;
        EXPECT_NEAR(unf.item(), ref, 1e-9 * std::abs(ref) + 1e-12);
        backward(unf);
        EXPECT_LT(rel_err(hs.grad(), hs64.grad().to_vector()), 2e-5);
        EXPECT_LT(rel_err(Ws.grad(), Ws64.grad().to_vector()), 2e-5);
      }
    }
  }
}

// The exact branches are what they claim: β = 0 is forward KL and β = 1 reverse KL, and
// the fused op gives no gradient to the teacher.
TEST(LinearJSD, BranchesAreForwardAndReverseKL) {
  Generator g(8);
  Tensor hs = leaf(randn({5, 6}, g)), Ws = leaf(randn({13, 6}, g));
  Tensor ht = leaf(randn({5, 4}, g)), Wt = leaf(randn({13, 4}, g));
  LinearJSDOptions o;
  o.reduction = LossReduction::sum;
  const Mat zs = logits_of(hs, Ws, 1.0), zt = logits_of(ht, Wt, 1.0);
  double fwd = 0, rev = 0;
  for (int64_t n = 0; n < 5; ++n) {
    const auto ps = probs(zs[n]), pt = probs(zt[n]);
    for (size_t v = 0; v < ps.size(); ++v) {
      fwd += pt[v] * (std::log(pt[v]) - std::log(ps[v]));
      rev += ps[v] * (std::log(ps[v]) - std::log(pt[v]));
    }
  }
  o.beta = 0.0;
  EXPECT_NEAR(linear_jsd(hs, Ws, ht, Wt, o).item(), fwd, 1e-5 * fwd);
  o.beta = 1.0;
  Tensor l = linear_jsd(hs, Ws, ht, Wt, o);
  EXPECT_NEAR(l.item(), rev, 1e-5 * rev);
  EXPECT_GT(std::abs(fwd - rev), 1e-3);  // the two branches really differ here
  backward(l);
  EXPECT_TRUE(hs.grad().defined());
  EXPECT_FALSE(ht.grad().defined());
  EXPECT_FALSE(Wt.grad().defined());
}

TEST(LinearJSD, GradcheckF64) {
  Generator g(4);
  for (double beta : {0.0, 0.5, 1.0}) {
    Tensor hs = leaf(randn({4, 5}, g, DType::f64)), Ws = leaf(randn({9, 5}, g, DType::f64));
    Tensor ht = randn({4, 3}, g, DType::f64), Wt = randn({9, 3}, g, DType::f64);
    LinearJSDOptions o;
    o.beta = beta;
    o.temperature = 1.5;
    o.targets = ids({1, -100, 8, 2}).view({4});
    o.hard_label_weight = 0.25;
    o.chunking.rows_per_chunk = 3;
    auto r = gradcheck([&](const std::vector<Tensor>& x) { return linear_jsd(x[0], x[1], ht, Wt, o); }, {hs, Ws});
    EXPECT_TRUE(r.ok) << "beta " << beta << ": " << r.message;
  }
}

TEST(LinearJSD, GlobalCountMakesAccumulationExact) {
  Generator g(6);
  const int64_t N = 30, H = 6, V = 40;
  Tensor hs = randn({N, H}, g, DType::f64), Ws = randn({V, H}, g, DType::f64);
  Tensor ht = randn({N, 7}, g, DType::f64), Wt = randn({V, 7}, g, DType::f64);
  std::vector<double> m(N);
  for (int64_t n = 0; n < N; ++n) m[n] = (n < 10 && n % 2) ? 0.0 : 1.0;
  double valid = 0;
  for (double x : m) valid += x;
  Tensor mk = Tensor::from_vector(m, {N});
  LinearJSDOptions o;
  o.mask = mk;
  auto full = kernels::linear_jsd(hs, Ws, ht, Wt, o);
  o.num_valid = valid;
  o.mask = mk.slice(0, 0, 15);
  auto a = kernels::linear_jsd(hs.slice(0, 0, 15), Ws, ht.slice(0, 0, 15), Wt, o);
  o.mask = mk.slice(0, 15, 30);
  auto b = kernels::linear_jsd(hs.slice(0, 15, 30), Ws, ht.slice(0, 15, 30), Wt, o);
  EXPECT_NEAR(a.loss.item() + b.loss.item(), full.loss.item(), 1e-12);
  std::vector<double> dw = a.dW.to_vector(), dwb = b.dW.to_vector();
  for (size_t i = 0; i < dw.size(); ++i) dw[i] += dwb[i];
  EXPECT_LT(rel_err(dw, full.dW.to_vector()), 1e-12);
}

// The loss is bitwise the same from call to call whatever the thread count (DESIGN §5): the
// rows' terms are added in row order, not by an OpenMP reduction, whose partial sums are added
// in the order the threads finish (with 8 threads an f64 loss took 2-3 distinct values in 50
// calls). And it is bitwise the single-thread loss.
TEST(LinearLosses, F64LossIsBitwiseRepeatableWithManyThreads) {
  Generator g(3);
  const int64_t N = 256, H = 64, V = 4096;
  Tensor h = randn({N, H}, g, DType::f64), W = randn({V, H}, g, DType::f64);
  Tensor ht = randn({N, H}, g, DType::f64), Wt = randn({V, H}, g, DType::f64);
  std::vector<int64_t> yv(N);
  for (int64_t n = 0; n < N; ++n) yv[static_cast<size_t>(n)] = (n * 37) % V;
  const Tensor y = ids(yv);
  LinearCrossEntropyOptions co;
  co.compute_grad = false;
  co.chunking.rows_per_chunk = N;
  LinearJSDOptions jo;
  jo.compute_grad = false;
  jo.chunking.rows_per_chunk = N;
  jo.targets = y;
  jo.hard_label_weight = 0.5;
  const auto ce = [&] { return std::bit_cast<uint64_t>(kernels::linear_cross_entropy(h, W, y, co).loss.item()); };
  const auto jsd = [&] { return std::bit_cast<uint64_t>(kernels::linear_jsd(h, W, ht, Wt, jo).loss.item()); };
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const uint64_t ce1 = ce(), jsd1 = jsd();
  omp_set_num_threads(8);
  for (int i = 0; i < 50; ++i) {
    ASSERT_EQ(ce(), ce1) << "call " << i;
    ASSERT_EQ(jsd(), jsd1) << "call " << i;
  }
  omp_set_num_threads(saved);
}

// ---------------------------------------------------------------- PPO

struct PPOData {
  int64_t B = 4, T = 6, H = 10, V = 53;
  Tensor h, W, actions, old_lp, ref_lp, adv, mask;
  std::vector<double> lp;  // true log-probs (f64)
};

// Ratios are placed by construction: per sequence b, old_logp = logp − log(ratio_b), with
// ratios 1.5 (above 1 + eps_high), 0.5 (below 1 − eps_low) and 1.05 (inside), and advantages
// of both signs, so every clipped / unclipped branch is hit.
PPOData make_ppo(Generator& g, const std::vector<double>& ratios, const std::vector<double>& advs) {
  PPOData d;
  d.B = static_cast<int64_t>(advs.size());
  const int64_t N = d.B * d.T;
  d.h = leaf(randn({d.B, d.T, d.H}, g));
  d.W = leaf(randn({d.V, d.H}, g, DType::f32, Device::cpu(), 0.0, 0.4));
  std::vector<double> a(N), m(N), old(N), ref(N);
  for (int64_t n = 0; n < N; ++n) {
    a[n] = (n * 29 + 7) % d.V;
    m[n] = (n % d.T == d.T - 1 && n / d.T == 1) ? 0.0 : 1.0;  // one padded token
  }
  const Mat z = logits_of(d.h, d.W, 1.0);
  d.lp.resize(N);
  for (int64_t n = 0; n < N; ++n) {
    d.lp[n] = z[n][static_cast<int64_t>(a[n])] - lse(z[n]);
    old[n] = d.lp[n] - std::log(ratios[n % ratios.size()]);
    ref[n] = d.lp[n] + 0.3 * std::sin(static_cast<double>(n));
  }
  d.actions = Tensor::from_vector(a, {d.B, d.T}, DType::i64);
  d.old_lp = Tensor::from_vector(old, {d.B, d.T});
  d.ref_lp = Tensor::from_vector(ref, {d.B, d.T});
  d.adv = Tensor::from_vector(advs, {d.B});
  d.mask = Tensor::from_vector(m, {d.B, d.T});
  return d;
}

TEST(LinearPPO, ClippedAndUnclippedBranchesMatchTextbook) {
  Generator g(31);
  const std::vector<double> ratios = {1.5, 0.5, 1.05};
  const std::vector<double> advs = {1.3, -0.7, 0.9, -1.1};
  for (PPOLossType lt : {PPOLossType::grpo, PPOLossType::bnpo, PPOLossType::dr_grpo, PPOLossType::dapo}) {
    for (double kl_beta : {0.0, 0.1}) {
      SCOPED_TRACE(fmt::format("{} kl_beta {}", kernels::ppo_loss_type_name(lt), kl_beta));
      PPOData d = make_ppo(g, ratios, advs);
      LinearPPOOptions o;
      o.eps_low = 0.2;
      o.eps_high = 0.28;
      o.kl_beta = kl_beta;
      o.loss_type = lt;
      o.max_completion_length = 8;
      o.num_valid = 40;  // dapo: a global count larger than the local one
      auto out = linear_ppo_loss(d.h, d.W, d.actions, d.old_lp, d.ref_lp, d.adv, d.mask, o);
      // textbook
      const int64_t B = d.B, T = d.T;
      const std::vector<double> m = d.mask.to_vector(), old = d.old_lp.to_vector(), ref = d.ref_lp.to_vector();
      double total = 0, nvalid = 0, lo = 0, hi = 0, kl = 0;
      std::vector<double> seq_sum(B, 0), seq_cnt(B, 0);
      for (int64_t n = 0; n < B * T; ++n) {
        if (m[n] == 0) continue;
        const double A = advs[n / T], r = std::exp(d.lp[n] - old[n]);
        const double unclipped = r * A, clipped = std::clamp(r, 1 - 0.2, 1 + 0.28) * A;
        double l = -std::min(unclipped, clipped);
        const double k3 = std::exp(ref[n] - d.lp[n]) - (ref[n] - d.lp[n]) - 1;
        l += kl_beta * k3;
        kl += k3;
        lo += (r < 0.8 && A < 0);
        hi += (r > 1.28 && A > 0);
        seq_sum[n / T] += l;
        seq_cnt[n / T] += 1;
        total += l;
        nvalid += 1;
      }
      double ref_loss = 0;
      switch (lt) {
        case PPOLossType::grpo:
          for (int64_t b = 0; b < B; ++b) ref_loss += seq_sum[b] / seq_cnt[b] / B;
          break;
        case PPOLossType::bnpo: ref_loss = total / nvalid; break;
        case PPOLossType::dr_grpo: ref_loss = total / (B * 8.0); break;
        case PPOLossType::dapo: ref_loss = total / 40.0; break;
      }
      EXPECT_NEAR(out.loss.item(), ref_loss, 1e-5 * std::abs(ref_loss) + 1e-7);
      EXPECT_DOUBLE_EQ(out.clip_low_fraction, lo / nvalid);
      EXPECT_DOUBLE_EQ(out.clip_high_fraction, hi / nvalid);
      EXPECT_GT(lo, 0);
      EXPECT_GT(hi, 0);
      EXPECT_NEAR(out.mean_kl, kl / nvalid, 1e-5 * kl / nvalid);
      EXPECT_LT(rel_err(out.logp, d.lp), 1e-5);
      // entropy
      const Mat z = logits_of(d.h, d.W, 1.0);
      double ent = 0;
      for (int64_t n = 0; n < B * T; ++n) {
        if (m[n] == 0) continue;
        for (double p : probs(z[n])) ent -= p * std::log(p);
      }
      EXPECT_NEAR(out.entropy, ent / nvalid, 1e-5 * ent / nvalid);
      backward(out.loss);
      // unfused composition (f64 autograd): logp = gather(log_softmax), surrogate with where-clamp
      const int64_t N = B * T;
      Tensor h64 = leaf(d.h.detach().to(DType::f64).view({N, d.H})), W64 = leaf(d.W.detach().to(DType::f64));
      Tensor lsm = log_softmax(matmul(h64, transpose(W64, 0, 1)));
      Tensor lp = squeeze(gather(lsm, 1, d.actions.view({N, 1})), 1);
      Tensor ratio = exp(lp - d.old_lp.to(DType::f64).view({N}));
      std::vector<double> av(N), in_range(N), clampv(N), wts(N);
      const std::vector<double> rv = ratio.detach().to_vector();
      for (int64_t n = 0; n < N; ++n) {
        av[n] = advs[n / T];
        in_range[n] = rv[n] >= 0.8 && rv[n] <= 1.28;
        clampv[n] = std::clamp(rv[n], 0.8, 1.28);
        const double w = lt == PPOLossType::grpo ? 1.0 / (B * seq_cnt[n / T])
                         : lt == PPOLossType::bnpo ? 1.0 / nvalid
                         : lt == PPOLossType::dr_grpo ? 1.0 / (B * 8.0) : 1.0 / 40.0;
        wts[n] = m[n] * w;
      }
      Tensor A = Tensor::from_vector(av, {N}, DType::f64);
      Tensor clipped = where(Tensor::from_vector(in_range, {N}, DType::f64), ratio,
                             Tensor::from_vector(clampv, {N}, DType::f64));
      Tensor per = neg(minimum(ratio * A, clipped * A));
      if (kl_beta != 0) {
        Tensor dlt = d.ref_lp.to(DType::f64).view({N}) - lp;
        per = per + (exp(dlt) - dlt - 1.0) * kl_beta;
      }
      Tensor unf = sum(per * Tensor::from_vector(wts, {N}, DType::f64));
      EXPECT_NEAR(unf.item(), ref_loss, 1e-9 * std::abs(ref_loss) + 1e-12);
      backward(unf);
      EXPECT_LT(rel_err(d.h.grad().view({N, d.H}), h64.grad().to_vector()), 2e-5);
      EXPECT_LT(rel_err(d.W.grad(), W64.grad().to_vector()), 2e-5);
    }
  }
}

// Per-token gradient of the surrogate, branch by branch: for a single token with A > 0 and
// r > 1 + eps_high (clipped) nothing flows; with r inside, d loss / d logp = −r·A.
TEST(LinearPPO, ClippedRegionHasNoGradient) {
  Generator g(9);
  for (double r : {1.5, 0.5, 1.05}) {
    for (double A : {1.0, -1.0}) {
      PPOData d = make_ppo(g, {r}, {A});
      LinearPPOOptions o;
      o.loss_type = PPOLossType::bnpo;
      auto out = kernels::linear_ppo_loss(d.h.detach(), d.W.detach(), d.actions, d.old_lp, Tensor(), d.adv,
                                          d.mask, o);
      const bool clipped = (r > 1.2 && A > 0) || (r < 0.8 && A < 0);
      double norm = 0;
      for (double x : out.dW.to_vector()) norm += x * x;
      SCOPED_TRACE(fmt::format("r {} A {}", r, A));
      if (clipped) {
        EXPECT_EQ(norm, 0.0);
      } else {
        EXPECT_GT(norm, 1e-8);
      }
      EXPECT_NEAR(out.loss.item(), -std::min(r * A, std::clamp(r, 0.8, 1.2) * A), 1e-5);
    }
  }
}

// Two-level chunking (rows × vocab chunks, V not a multiple of the chunk) gives the
// single-chunk result.
TEST(LinearPPO, VocabChunksMatchSingleChunk) {
  Generator g(12);
  PPOData d = make_ppo(g, {1.5, 0.5, 1.05}, {1.0, -0.5, 2.0});
  LinearPPOOptions o;
  o.kl_beta = 0.05;
  auto one = kernels::linear_ppo_loss(d.h.detach(), d.W.detach(), d.actions, d.old_lp, d.ref_lp, d.adv, d.mask, o);
  o.chunking.vocab_chunk = 17;  // 53 = 3·17 + 2
  o.chunking.rows_per_chunk = 5;
  auto two = kernels::linear_ppo_loss(d.h.detach(), d.W.detach(), d.actions, d.old_lp, d.ref_lp, d.adv, d.mask, o);
  EXPECT_NEAR(two.loss.item(), one.loss.item(), 1e-6 * std::abs(one.loss.item()));
  EXPECT_LT(rel_err(two.dh, one.dh.to_vector()), 1e-5);
  EXPECT_LT(rel_err(two.dW, one.dW.to_vector()), 1e-5);
  EXPECT_LT(rel_err(two.logp, one.logp.to_vector()), 1e-6);
  EXPECT_NEAR(two.entropy, one.entropy, 1e-5 * one.entropy);
}

// Per-token advantages (B, T) equal to the per-sequence ones broadcast give the same result.
TEST(LinearPPO, PerTokenAdvantagesMatchBroadcast) {
  Generator g(15);
  PPOData d = make_ppo(g, {1.5, 0.5, 1.05}, {1.0, -0.5, 2.0});
  std::vector<double> a = d.adv.to_vector(), at;
  for (int64_t b = 0; b < d.B; ++b)
    for (int64_t t = 0; t < d.T; ++t) at.push_back(a[b]);
  LinearPPOOptions o;
  auto seq = kernels::linear_ppo_loss(d.h.detach(), d.W.detach(), d.actions, d.old_lp, Tensor(), d.adv, d.mask, o);
  auto tok = kernels::linear_ppo_loss(d.h.detach(), d.W.detach(), d.actions, d.old_lp, Tensor(),
                                      Tensor::from_vector(at, {d.B, d.T}), d.mask, o);
  EXPECT_EQ(tok.loss.item(), seq.loss.item());
  EXPECT_EQ(tok.dW.to_vector(), seq.dW.to_vector());
}

TEST(LinearPPO, GradcheckF64) {
  Generator g(13);
  const int64_t B = 2, T = 3, H = 4, V = 7;
  Tensor h = leaf(randn({B, T, H}, g, DType::f64)), W = leaf(randn({V, H}, g, DType::f64));
  Tensor act = Tensor::from_vector({1, 6, 0, 3, 3, 5}, {B, T}, DType::i64);
  // old_logp far from logp in a few places so both branches are present; the check stays
  // away from the kink r = 1 ± eps.
  Tensor old = Tensor::from_vector({-2.0, -1.5, -3.0, -1.0, -2.5, -2.2}, {B, T}, DType::f64);
  Tensor ref = Tensor::from_vector({-1.8, -2.0, -2.0, -1.9, -2.1, -2.3}, {B, T}, DType::f64);
  Tensor adv = Tensor::from_vector({0.7, -1.2}, {B}, DType::f64);
  LinearPPOOptions o;
  o.kl_beta = 0.2;
  o.chunking.vocab_chunk = 3;
  o.chunking.rows_per_chunk = 2;
  auto r = gradcheck(
      [&](const std::vector<Tensor>& x) {
        return linear_ppo_loss(x[0], x[1], act, old, ref, adv, Tensor(), o).loss;
      },
      {h, W});
  EXPECT_TRUE(r.ok) << r.message;
}

// ---------------------------------------------------------------- helpers

TEST(RLHelpers, GroupAdvantagesTextbook) {
  Tensor r = Tensor::from_vector({1, 0, 0, 1, 2, 2, 2, 5}, {8});
  for (auto sc : {kernels::AdvantageScaling::group, kernels::AdvantageScaling::batch, kernels::AdvantageScaling::none}) {
    const std::vector<double> a = kernels::group_advantages(r, 4, sc).to_vector();
    // group 1: mean 0.5, sample std sqrt(1/3); group 2: mean 2.75, std 1.5; batch std of all 8
    const double s1 = std::sqrt(1.0 / 3.0), s2 = 1.5;
    double mu = 13.0 / 8, var = 0;
    for (double x : r.to_vector()) var += (x - mu) * (x - mu);
    const double sb = std::sqrt(var / 7);
    const double d1 = sc == kernels::AdvantageScaling::group ? s1 + 1e-4 : sc == kernels::AdvantageScaling::batch ? sb + 1e-4 : 1;
    const double d2 = sc == kernels::AdvantageScaling::group ? s2 + 1e-4 : sc == kernels::AdvantageScaling::batch ? sb + 1e-4 : 1;
    EXPECT_NEAR(a[0], 0.5 / d1, 1e-6);
    EXPECT_NEAR(a[1], -0.5 / d1, 1e-6);
    EXPECT_NEAR(a[7], 2.25 / d2, 1e-6);
  }
  EXPECT_THROW(kernels::group_advantages(r, 3), Error);
}

TEST(RLHelpers, GAETextbook) {
  const double gm = 0.9, lm = 0.8;
  Tensor rw = Tensor::from_vector({1, 0, 2, 0.5, 0, 0}, {2, 3}, DType::f64);
  Tensor val = Tensor::from_vector({0.5, 0.2, 0.1, 0.3, 0.4, 0.9}, {2, 3}, DType::f64);
  Tensor mk = Tensor::from_vector({1, 1, 1, 1, 1, 0}, {2, 3}, DType::f64);
  auto res = kernels::gae(rw, val, mk, gm, lm);
  // row 0: δ2 = 2 − 0.1; δ1 = 0 + γ·0.1 − 0.2; δ0 = 1 + γ·0.2 − 0.5
  const double d2 = 1.9, d1 = gm * 0.1 - 0.2, d0 = 1 + gm * 0.2 - 0.5;
  const double a2 = d2, a1 = d1 + gm * lm * a2, a0 = d0 + gm * lm * a1;
  // row 1 ends after t = 1: δ1 = 0 − 0.4, δ0 = 0.5 + γ·0.4 − 0.3
  const double b1 = -0.4, b0 = 0.5 + gm * 0.4 - 0.3 + gm * lm * b1;
  const std::vector<double> ref = {a0, a1, a2, b0, b1, 0.0};
  EXPECT_LT(rel_err(res.advantages, ref), 1e-12);
  EXPECT_NEAR(res.returns.to_vector()[0], a0 + 0.5, 1e-12);
}

// ---------------------------------------------------------------- errors

TEST(LossErrors, BadInputsThrowClearErrors) {
  Generator g(1);
  Tensor h = randn({4, 8}, g), W = randn({10, 8}, g), Wbad = randn({10, 7}, g);
  Tensor y = ids({1, 2, 3, 4});
  auto msg = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([&] { kernels::linear_cross_entropy(h, Wbad, y); }).find("linear_cross_entropy: W must be (V, H)"),
            std::string::npos);
  EXPECT_NE(msg([&] { kernels::linear_cross_entropy(h, W, ids({1, 2, 3})); }).find("targets must have shape"),
            std::string::npos);
  EXPECT_NE(msg([&] { kernels::linear_cross_entropy(h, W, ids({1, 2, 3, 10})); }).find("outside [0, 10)"),
            std::string::npos);
  LinearCrossEntropyOptions co;
  co.temperature = 0.0;
  EXPECT_NE(msg([&] { kernels::linear_cross_entropy(h, W, y, co); }).find("temperature must be > 0"), std::string::npos);
  LinearJSDOptions o;
  o.beta = 1.5;
  EXPECT_NE(msg([&] { kernels::linear_jsd(h, W, h, W, o); }).find("beta must be in [0, 1]"), std::string::npos);
  o.beta = -0.1;
  EXPECT_NE(msg([&] { kernels::linear_jsd(h, W, h, W, o); }).find("beta must be in [0, 1]"), std::string::npos);
  o.beta = 0.5;
  o.temperature = -1.0;
  EXPECT_NE(msg([&] { kernels::linear_jsd(h, W, h, W, o); }).find("temperature must be > 0"), std::string::npos);
  o.temperature = 1.0;
  EXPECT_NE(msg([&] { kernels::linear_jsd(h, W, h.slice(0, 0, 3), W, o); }).find("student and teacher tokens differ"),
            std::string::npos);
  EXPECT_NE(msg([&] { kernels::linear_jsd(h, W, h, randn({11, 8}, g), o); }).find("vocab sizes differ"),
            std::string::npos);
  Tensor h3 = randn({2, 2, 8}, g), act = Tensor::from_vector({0, 1, 2, 3}, {2, 2}, DType::i64);
  Tensor lp = Tensor::zeros({2, 2}), adv = Tensor::zeros({2});
  EXPECT_NE(msg([&] { kernels::linear_ppo_loss(h3, W, act, Tensor::zeros({2, 3}), Tensor(), adv, Tensor()); })
                .find("old_logp must be (2, 2)"),
            std::string::npos);
  LinearPPOOptions po;
  po.kl_beta = 0.1;
  EXPECT_NE(msg([&] { kernels::linear_ppo_loss(h3, W, act, lp, Tensor(), adv, Tensor(), po); }).find("needs ref_logp"),
            std::string::npos);
  // PPO has no ignore value: an action of -1 (a -1 padding, masked or not) is refused, not read
  // as a stale logit (it was let through as if -1 were an ignore index).
  for (const Tensor& m : {Tensor(), Tensor::from_vector({1, 0, 1, 1}, {2, 2})}) {
    EXPECT_NE(msg([&] {
                kernels::linear_ppo_loss(h3, W, Tensor::from_vector({2, -1, 5, 1}, {2, 2}, DType::i64), lp, Tensor(),
                                         adv, m);
              }).find("actions[1] = -1 is outside [0, 10)"),
              std::string::npos);
  }
  EXPECT_THROW(kernels::ppo_loss_type_from_name("ppo2"), Error);
  EXPECT_EQ(kernels::ppo_loss_type_from_name("dr_grpo"), PPOLossType::dr_grpo);
}

}  // namespace
}  // namespace somnus
