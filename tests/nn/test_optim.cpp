// Optimisers (nn/optim.h) and learning-rate schedules (nn/lr_schedule.h): AdamW against its
// formula and a naive f64 reference, the kernels:: ops path against the CPU loops, bf16
// master weights, SGD, clipping, the multi-frequency rule of PARADIGM §1, bit-exact resume
// through saved state, state validation, and schedule values.
#include <gtest/gtest.h>

#include <bit>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <memory>
#include <numbers>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "kernels/ops.h"
#include "nn/lr_schedule.h"
#include "nn/optim.h"
#include "nn/safetensors.h"
#include "tensor/random.h"
#include "testing.h"

// Config structs are meant to be filled with designated initializers, leaving the rest at
// their defaults; GCC 12's -Wextra flags every omitted member anyway.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace somnus;
using namespace somnus::testing;
namespace fs = std::filesystem;

namespace {

Tensor param(const Shape& shape, uint64_t seed, DType dtype = DType::f32) {
  Generator gen(seed);
  Tensor t = randn(shape, gen, dtype);
  t.set_requires_grad(true);
  return t;
}

class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() / (std::string("somnus_opt_") + info->name() + "_" + std::to_string(::getpid()));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// Textbook Adam with decoupled weight decay, in f64, for one flat parameter.
struct NaiveAdamW {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  std::vector<double> m, v;
  int t = 0;
  void step(std::vector<double>& p, const std::vector<double>& g, double lr, double wd) {
    if (m.empty()) m.assign(p.size(), 0.0), v.assign(p.size(), 0.0);
    ++t;
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] *= 1.0 - lr * wd;
      m[i] = beta1 * m[i] + (1 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
      const double mhat = m[i] / (1 - std::pow(beta1, t));
      const double vhat = v[i] / (1 - std::pow(beta2, t));
      p[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

std::vector<double> scaled(std::vector<double> v, double s) {
  for (double& x : v) x *= s;
  return v;
}

}  // namespace

// ---------------------------------------------------------------- AdamW

TEST(AdamW, OneStepMatchesHandComputedFormula) {
  Generator gen(1);
  Tensor p = param({3, 4}, 2);
  const Tensor g = randn({3, 4}, gen);
  p.set_grad(g.clone());
  const std::vector<double> p0 = p.to_vector(), g0 = g.to_vector();
  const double lr = 1e-2, wd = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  AdamW opt({ParamGroup{.params = {p}, .lr = lr, .weight_decay = wd}}, AdamWOptions{b1, b2, eps});
  opt.step();

  std::vector<double> expected(p0.size());
  for (size_t i = 0; i < p0.size(); ++i) {
    const double m = (1 - b1) * g0[i], v = (1 - b2) * g0[i] * g0[i];
    const double mhat = m / (1 - b1), vhat = v / (1 - b2);
    expected[i] = p0[i] * (1 - lr * wd) - lr * mhat / (std::sqrt(vhat) + eps);
  }
  EXPECT_LT(rel_or_abs_error(p.to_vector(), expected), 1e-6);
  // The first Adam step moves every element by about lr (plus the decay).
  for (size_t i = 0; i < p0.size(); ++i) EXPECT_NEAR(std::abs(p.to_vector()[i] - p0[i] * (1 - lr * wd)), lr, 1e-5);
  EXPECT_FALSE(p.grad().defined()) << "step() clears the applied group's gradient";
  EXPECT_EQ(opt.step_count(), 1);
}

TEST(AdamW, ManyStepsMatchNaiveReference) {
  for (DType dtype : {DType::f64, DType::f32}) {
    Tensor a = param({4, 5}, 3, dtype);
    Tensor b = param({7}, 4, dtype);
    std::vector<double> ra = a.to_vector(), rb = b.to_vector();
    AdamW opt({ParamGroup{.params = {a}, .lr = 3e-2, .weight_decay = 0.05, .name = "decayed"},
               ParamGroup{.params = {b}, .lr = 1e-2, .name = "plain"}},
              AdamWOptions{.beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6});
    NaiveAdamW na{.beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6}, nb{.beta1 = 0.8, .beta2 = 0.99, .eps = 1e-6};
    const LrSchedule sched = cosine_schedule(1.0, 3, 12, 0.1);
    Generator gen(5);
    for (int k = 0; k < 12; ++k) {
      const Tensor ga = randn({4, 5}, gen, dtype), gb = randn({7}, gen, dtype);
      a.set_grad(ga.clone());
      b.set_grad(gb.clone());
      const double s = sched.lr_at(opt.step_count());
      opt.set_lr_scale(s);
      opt.step();
      na.step(ra, ga.to_vector(), 3e-2 * s, 0.05);
      nb.step(rb, gb.to_vector(), 1e-2 * s, 0.0);
    }
    const double tol = dtype == DType::f64 ? 1e-12 : 2e-6;
    EXPECT_LT(rel_or_abs_error(a.to_vector(), ra), tol) << dtype_name(dtype);
    EXPECT_LT(rel_or_abs_error(b.to_vector(), rb), tol) << dtype_name(dtype);
  }
}

// The device-generic path (kernels:: ops, what CUDA tensors use) against the CPU loops.
TEST(Optimizer, KernelOpsPathMatchesCpuLoops) {
  for (DType dtype : {DType::f32, DType::f64, DType::bf16}) {
    for (int which = 0; which < 2; ++which) {
      Tensor p1 = param({6, 5}, 10, dtype), p2 = param({6, 5}, 10, dtype);
      std::vector<ParamGroup> g1 = {ParamGroup{.params = {p1}, .lr = 1e-2, .weight_decay = 0.1, .period = 2}};
      std::vector<ParamGroup> g2 = {ParamGroup{.params = {p2}, .lr = 1e-2, .weight_decay = 0.1, .period = 2}};
      std::unique_ptr<Optimizer> loops, ops;
      if (which == 0) {
        loops = std::make_unique<AdamW>(g1);
        ops = std::make_unique<AdamW>(g2);
      } else {
        const SGDOptions o{.momentum = 0.9, .nesterov = true};
        loops = std::make_unique<SGD>(g1, o);
        ops = std::make_unique<SGD>(g2, o);
      }
      ops->set_update_path(Optimizer::UpdatePath::kernel_ops);
      Generator gen(11);
      for (int k = 0; k < 8; ++k) {
        const Tensor g = randn({6, 5}, gen, dtype);
        for (Tensor* p : {&p1, &p2}) {
          // Accumulate as autograd does (period 2 sums two steps).
          if (p->grad().defined()) {
            p->grad().copy_(kernels::binary(kernels::Binary::add, p->grad(), g));
          } else {
            p->set_grad(g.clone());
          }
        }
        loops->step();
        ops->step();
      }
      const std::string what = std::string(loops->type()) + " " + dtype_name(dtype);
      EXPECT_LT(rel_or_abs_error(p2.to_vector(), p1.to_vector()), dtype == DType::f64 ? 1e-14 : 1e-7) << what;
      EXPECT_NE(p1.to_vector(), param({6, 5}, 10, dtype).to_vector()) << what << ": parameters never moved";
    }
  }
}

// AdamW applies a group as one multi-tensor kernel call per (device, dtype): a group mixing
// f32, f64, a bf16 parameter (f32 master), a strided view and a parameter without a grad must
// end bit for bit where per-tensor updates (each tensor its own group) end, over several
// steps with different per-tensor step counts.
TEST(AdamW, GroupedMultiTensorCallEqualsPerTensorUpdates) {
  auto make = [] {
    std::vector<Tensor> ps = {param({7, 3}, 20), param({5}, 21, DType::f64), param({4, 6}, 22, DType::bf16),
                              param({9}, 23), param({40000}, 24)};  // the last one above the OpenMP threshold
    Tensor base = param({6, 4}, 25);
    Tensor strided = base.detach().transpose(0, 1);  // (4, 6), not contiguous
    strided.set_requires_grad(true);
    ps.push_back(strided);
    return ps;
  };
  std::vector<Tensor> a = make(), b = make();
  AdamW grouped({ParamGroup{.params = a, .lr = 1e-2, .weight_decay = 0.1}}, AdamWOptions{.beta1 = 0.8, .beta2 = 0.95});
  std::vector<ParamGroup> singles;
  for (const Tensor& p : b) singles.push_back(ParamGroup{.params = {p}, .lr = 1e-2, .weight_decay = 0.1});
  AdamW separate(singles, AdamWOptions{.beta1 = 0.8, .beta2 = 0.95});
  Generator gen(26);
  for (int k = 0; k < 5; ++k) {
    for (size_t i = 0; i < a.size(); ++i) {
      if (k % 2 == 1 && i == 3) continue;  // no grad this step: skipped, its step count lags
      const Tensor g = randn(a[i].shape(), gen, a[i].dtype());
      a[i].set_grad(g.clone());
      b[i].set_grad(g.clone());
    }
    grouped.step();
    separate.step();
  }
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].to_vector(), b[i].to_vector()) << "parameter " << i;
    EXPECT_NE(a[i].to_vector(), make()[i].to_vector()) << "parameter " << i << " never moved";
  }
  EXPECT_EQ(grouped.master_weight(0, 2).to_vector(), separate.master_weight(2, 0).to_vector());
  const OptimizerState sa = grouped.state_dict(), sb = separate.state_dict();
  ASSERT_EQ(sa.tensors.size(), sb.tensors.size());
  for (size_t i = 0; i < sa.tensors.size(); ++i) {
    EXPECT_EQ(sa.tensors[i].second.to_vector(), sb.tensors[i].second.to_vector()) << sa.tensors[i].first;
  }
}

// ---------------------------------------------------------------- bf16 master weights

TEST(AdamW, Bf16MasterWeightsTrackTheF32Run) {
  Generator gen(21);
  const Tensor target = randn({64}, gen);
  Tensor p16 = param({64}, 22, DType::bf16);
  Tensor p32 = p16.to(DType::f32);  // the same starting values
  p32.set_requires_grad(true);
  AdamW o16({ParamGroup{.params = {p16}, .lr = 1e-2, .weight_decay = 0.01}});
  AdamW o32({ParamGroup{.params = {p32}, .lr = 1e-2, .weight_decay = 0.01}});
  for (int k = 0; k < 100; ++k) {
    // grad = p − target, evaluated at each run's own parameter; bf16 grads for the bf16 run.
    const Tensor g32 = kernels::binary(kernels::Binary::sub, p32, target);
    const Tensor g16 = kernels::binary(kernels::Binary::sub, p16.to(DType::f32), target).to(DType::bf16);
    p32.set_grad(g32);
    p16.set_grad(g16);
    o32.step();
    o16.step();
  }
  const Tensor master = o16.master_weight(0, 0);
  ASSERT_TRUE(master.defined());
  EXPECT_EQ(master.dtype(), DType::f32);
  const double err_param = rel_or_abs_error(p16.to_vector(), p32.to_vector());
  const double err_master = rel_or_abs_error(master.to_vector(), p32.to_vector());
  EXPECT_LT(err_param, 5e-3);
  EXPECT_LT(err_master, 2e-3);
  // The bf16 parameter is exactly the rounded master.
  EXPECT_EQ(raw_bytes(p16), raw_bytes(master.to(DType::bf16)));
}

TEST(AdamW, Bf16MasterKeepsUpdatesSmallerThanBf16Spacing) {
  Tensor p = Tensor::ones({8}, DType::bf16);
  p.set_requires_grad(true);
  // Without a master copy, 1 − 1e-4 rounds back to 1 in bf16: the parameter would never move.
  ASSERT_EQ(static_cast<float>(bf16(1.0f - 1e-4f)), 1.0f);
  AdamW opt({ParamGroup{.params = {p}, .lr = 1e-4}});
  for (int k = 0; k < 50; ++k) {
    p.set_grad(Tensor::ones({8}, DType::bf16));
    opt.step();
  }
  const Tensor master = opt.master_weight(0, 0);
  for (double m : master.to_vector()) EXPECT_NEAR(m, 1.0 - 50 * 1e-4, 5e-6);
  for (double v : p.to_vector()) EXPECT_EQ(v, static_cast<float>(bf16(static_cast<float>(1.0 - 50 * 1e-4))));
  for (double v : p.to_vector()) EXPECT_LT(v, 1.0);

  // An outside write to the parameter (a checkpoint load, a slot reset) is adopted by the
  // master instead of being overwritten at the next update.
  p.slice(0, 0, 4).fill_(0.5);
  p.set_grad(Tensor::ones({8}, DType::bf16));
  opt.step();
  const std::vector<double> pv = p.to_vector(), mv = opt.master_weight(0, 0).to_vector();
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(mv[i], 0.5 - 1e-4, 5e-6) << i;
  for (int i = 4; i < 8; ++i) EXPECT_NEAR(mv[i], 1.0 - 51 * 1e-4, 5e-6) << i;
  EXPECT_NEAR(pv[0], 0.5, 1e-3);
}

// Stochastic rounding of the bf16 copy (AdamWOptions::stochastic_rounding): the master and the
// moments are those of nearest-even rounding; each parameter element is one of the master's two
// bf16 neighbours (not always the nearest); the copy is seeded (same seed: same bits); an
// outside write is still adopted by the master.
TEST(AdamW, Bf16StochasticRoundingKeepsTheMasterAndRoundsEitherWay) {
  auto run = [](bool sr, uint64_t seed, Tensor* master_out) {
    Tensor p = param({4096}, 31, DType::bf16);
    AdamW opt({ParamGroup{.params = {p}, .lr = 1e-3}},
              AdamWOptions{.stochastic_rounding = sr, .rounding_seed = seed});
    Generator gen(5);
    for (int k = 0; k < 3; ++k) {
      p.set_grad(randn({4096}, gen).to(DType::bf16));
      opt.step();
    }
    *master_out = opt.master_weight(0, 0).clone();
    return p;
  };
  Tensor m_rne, m_sr, m_sr2, m_other;
  const Tensor rne = run(false, 0, &m_rne), sr = run(true, 1, &m_sr), sr2 = run(true, 1, &m_sr2),
               other = run(true, 2, &m_other);
  EXPECT_EQ(raw_bytes(m_rne), raw_bytes(m_sr)) << "the master does not depend on the rounding of the copy";
  EXPECT_EQ(raw_bytes(rne), raw_bytes(m_rne.to(DType::bf16))) << "nearest-even: the copy is the rounded master";
  EXPECT_EQ(raw_bytes(sr), raw_bytes(sr2)) << "seeded";
  EXPECT_NE(raw_bytes(sr), raw_bytes(other)) << "another seed rounds other elements up";
  const std::vector<double> m = m_sr.to_vector(), q = sr.to_vector(), r = rne.to_vector();
  int64_t differ = 0;
  for (size_t i = 0; i < m.size(); ++i) {
    const float down = bf16::to_float(static_cast<uint16_t>(std::bit_cast<uint32_t>(static_cast<float>(m[i])) >> 16));
    const double spacing = std::abs(m[i]) * 0.0078125 + 1e-30;
    EXPECT_LE(std::abs(q[i] - m[i]), spacing) << i;
    EXPECT_TRUE(q[i] == down || std::abs(q[i]) > std::abs(down)) << i;
    differ += q[i] != r[i];
  }
  EXPECT_GT(differ, 100) << "stochastic, not nearest";
  EXPECT_LT(differ, 4000);
}

// ---------------------------------------------------------------- SGD

TEST(SGD, MomentumNesterovWeightDecayMatchHandComputation) {
  const std::vector<std::vector<double>> grads = {{0.5, 1.0}, {-1.0, 2.0}, {0.25, 0.25}, {3.0, -0.5}};
  struct Case {
    SGDOptions o;
    double wd;
  };
  for (const Case& c : {Case{{.momentum = 0.0}, 0.0}, Case{{.momentum = 0.9}, 0.01},
                        Case{{.momentum = 0.9, .dampening = 0.1}, 0.0}, Case{{.momentum = 0.8, .nesterov = true}, 0.05}}) {
    Tensor p = Tensor::from_vector({1.0, -2.0}, {2}, DType::f64);
    p.set_requires_grad(true);
    SGD opt({ParamGroup{.params = {p}, .lr = 0.1, .weight_decay = c.wd}}, c.o);
    std::vector<double> ref = {1.0, -2.0}, buf(2, 0.0);
    for (size_t k = 0; k < grads.size(); ++k) {
      p.set_grad(Tensor::from_vector(grads[k], {2}, DType::f64));
      opt.step();
      for (int i = 0; i < 2; ++i) {
        double g = grads[k][i] + c.wd * ref[i];
        if (c.o.momentum != 0) {
          buf[i] = k == 0 ? g : c.o.momentum * buf[i] + (1 - c.o.dampening) * g;
          g = c.o.nesterov ? g + c.o.momentum * buf[i] : buf[i];
        }
        ref[i] -= 0.1 * g;
      }
      EXPECT_LT(rel_or_abs_error(p.to_vector(), ref), 1e-15) << "step " << k + 1 << " momentum " << c.o.momentum;
    }
  }
  // Momentum really changes the trajectory (the cases above are not all the same).
  Tensor q = Tensor::from_vector({0.0}, {1}, DType::f64);
  SGD with_momentum({ParamGroup{.params = {q}, .lr = 1.0}}, {.momentum = 0.5});
  for (int k = 0; k < 3; ++k) {
    q.set_grad(Tensor::ones({1}, DType::f64));
    with_momentum.step();
  }
  EXPECT_DOUBLE_EQ(q.item(), -(1.0 + 1.5 + 1.75));
}

// ---------------------------------------------------------------- clipping

TEST(Optimizer, ClipGradNormValueAndScaling) {
  Tensor a = Tensor::zeros({2}), b = Tensor::zeros({1}, DType::f64), c = Tensor::zeros({3}), d = Tensor::zeros({2}, DType::bf16);
  a.set_grad(Tensor::from_vector({3, 4}, {2}));
  b.set_grad(Tensor::from_vector({12}, {1}, DType::f64));
  // c has no grad: skipped.
  EXPECT_DOUBLE_EQ(grad_norm({a, b, c}), 13.0);
  // Below the limit: nothing changes.
  EXPECT_DOUBLE_EQ(clip_grad_norm({a, b, c}, 20.0), 13.0);
  EXPECT_EQ(a.grad().to_vector(), (std::vector<double>{3, 4}));
  // Above: scaled to max_norm.
  EXPECT_DOUBLE_EQ(clip_grad_norm({a, b, c}, 6.5), 13.0);
  const double coef = 6.5 / (13.0 + 1e-6);
  EXPECT_NEAR(a.grad().to_vector()[0], 3 * coef, 1e-6);
  EXPECT_NEAR(a.grad().to_vector()[1], 4 * coef, 1e-6);
  EXPECT_NEAR(b.grad().item(), 12 * coef, 1e-12);
  EXPECT_NEAR(grad_norm({a, b, c}), 6.5, 1e-5);
  // bf16 grads count (at their stored values) and are scaled in place.
  d.set_grad(Tensor::from_vector({0.6, 0.8}, {2}, DType::bf16));
  const std::vector<double> dv = d.grad().to_vector();
  EXPECT_DOUBLE_EQ(grad_norm({d}), std::sqrt(dv[0] * dv[0] + dv[1] * dv[1]));
  clip_grad_norm({d}, 0.5);
  EXPECT_NEAR(d.grad().to_vector()[1], 0.4, 4e-3);
  // scale_grads (gradient accumulation).
  scale_grads({a}, 0.5);
  EXPECT_NEAR(a.grad().to_vector()[1], 2 * coef, 1e-6);
  EXPECT_THROW(clip_grad_norm({a}, 0.0), Error);
  // A non-finite norm is returned and nothing is scaled.
  b.set_grad(Tensor::from_vector({NAN}, {1}, DType::f64));
  const std::vector<double> before = a.grad().to_vector();
  EXPECT_TRUE(std::isnan(clip_grad_norm({a, b}, 1.0)));
  EXPECT_EQ(a.grad().to_vector(), before);
}

// ---------------------------------------------------------------- the multi-frequency rule

// Clipping the due groups (opt.due_params()) measures what they apply: a period-4 group's
// .grad holds a 4-step sum, but under mean reduction it applies the mean, and that is what the
// norm counts. SGD, lr 1, a period-1 and a period-4 scalar, each with gradient g every step:
// the per-step norm is g·√2. At g = 0.6 (0.85 < 1) nothing is clipped, on any step (the raw
// sums measured 2.47 at step 4 and shrank both updates to 0.2425); at g = 2 (2.83 > 1) every
// step is clipped by the same factor, the fourth included.
TEST(MultiFrequency, ClipMeasuresWhatTheDueGroupsApply) {
  const auto clip_coef = [](double norm) { return norm > 1.0 ? 1.0 / (norm + 1e-6) : 1.0; };
  for (const double g : {0.6, 2.0}) {
    for (const AccumulationReduction red : {AccumulationReduction::mean, AccumulationReduction::sum}) {
      Tensor fast = Tensor::zeros({1}, DType::f64), slow = Tensor::zeros({1}, DType::f64);
      fast.set_requires_grad(true);
      slow.set_requires_grad(true);
      SGD opt({ParamGroup{.params = {fast}, .lr = 1.0, .period = 1, .name = "fast"},
               ParamGroup{.params = {slow}, .lr = 1.0, .period = 4, .name = "slow"}},
              {.reduction = red});
      // What step 4 applies to the slow group: the mean g, or under sum reduction the sum 4g.
      const double slow_applied = red == AccumulationReduction::mean ? g : 4.0 * g;
      for (int k = 1; k <= 4; ++k) {
        opt.zero_grad();
        backward(add(mul(sum(fast), g), mul(sum(slow), g)));
        const ScaledParams due = opt.due_params();
        ASSERT_EQ(due.params.size(), k == 4 ? 2u : 1u);
        const double expected_norm = k < 4 ? g : std::hypot(g, slow_applied);
        const double f0 = fast.item();
        EXPECT_NEAR(clip_grad_norm(due, 1.0), expected_norm, 1e-12) << "step " << k << " g " << g;
        opt.step();
        EXPECT_NEAR(f0 - fast.item(), g * clip_coef(expected_norm), 1e-9) << "step " << k << " g " << g;
      }
      EXPECT_NEAR(slow.item(), -slow_applied * clip_coef(std::hypot(g, slow_applied)), 1e-9) << "g " << g;
    }
  }
}

// A period-4 group changes only at steps 4, 8, 12, by the update of its mean accumulated
// gradient; a period-1 group changes every step. Gradients come from autograd, which adds
// into the slow group's .grad across steps; zero_grad() must not clear it.
TEST(MultiFrequency, Period4GroupUpdatesOnlyEvery4thStepWithTheMeanGradient) {
  for (AccumulationReduction red : {AccumulationReduction::mean, AccumulationReduction::sum}) {
    Tensor fast = param({3}, 30), slow = param({3}, 31);
    SGD opt({ParamGroup{.params = {fast}, .lr = 0.1, .period = 1, .name = "fast"},
             ParamGroup{.params = {slow}, .lr = 0.1, .period = 4, .name = "slow"}},
            {.reduction = red});
    Generator data(42);
    std::vector<double> accum(3, 0.0);
    for (int k = 1; k <= 12; ++k) {
      const bool zero_first = red == AccumulationReduction::mean;  // try both loop orders
      if (zero_first) opt.zero_grad();
      const Tensor x = randn({3}, data), y = randn({3}, data);
      const Tensor loss = add(sum(mul(fast, x)), sum(mul(slow, y)));
      backward(loss);
      for (int i = 0; i < 3; ++i) accum[i] += y.to_vector()[i];
      const std::vector<double> f0 = fast.to_vector(), s0 = slow.to_vector();
      EXPECT_EQ(opt.groups_due(), k % 4 == 0 ? (std::vector<size_t>{0, 1}) : (std::vector<size_t>{0}));
      opt.step();
      if (!zero_first) opt.zero_grad();
      // fast: every step, by −lr·x.
      const std::vector<double> f1 = fast.to_vector();
      for (int i = 0; i < 3; ++i) EXPECT_NEAR(f1[i], f0[i] - 0.1 * x.to_vector()[i], 1e-6) << "step " << k;
      const std::vector<double> s1 = slow.to_vector();
      if (k % 4 != 0) {
        EXPECT_EQ(s1, s0) << "the period-4 group changed at step " << k;
        ASSERT_TRUE(slow.grad().defined()) << "the accumulator was cleared at step " << k;
        EXPECT_LT(rel_or_abs_error(slow.grad().to_vector(), accum), 1e-6) << "step " << k;
      } else {
        const double div = red == AccumulationReduction::mean ? 4.0 : 1.0;
        for (int i = 0; i < 3; ++i) {
          EXPECT_NE(s1[i], s0[i]) << "step " << k;
          EXPECT_NEAR(s1[i], s0[i] - 0.1 * accum[i] / div, 1e-6) << "step " << k;
        }
        EXPECT_FALSE(slow.grad().defined()) << "the accumulator survived its application at step " << k;
        accum.assign(3, 0.0);
      }
    }
    EXPECT_EQ(opt.applications(0), 12);
    EXPECT_EQ(opt.applications(1), 3);
  }
}

// With AdamW, the slow group's Adam state advances once per application (t = 1, 2, 3),
// matching a naive Adam run on the mean gradients.
TEST(MultiFrequency, AdamStepCounterCountsOwnApplications) {
  Tensor fast = param({4}, 40), slow = param({4}, 41);
  AdamW opt({ParamGroup{.params = {fast}, .lr = 1e-2, .period = 1},
             ParamGroup{.params = {slow}, .lr = 1e-2, .weight_decay = 0.1, .period = 4}});
  NaiveAdamW nf, ns;
  std::vector<double> rf = fast.to_vector(), rs = slow.to_vector(), accum(4, 0.0);
  Generator data(43);
  for (int k = 1; k <= 12; ++k) {
    opt.zero_grad();
    const Tensor x = randn({4}, data), y = randn({4}, data);
    backward(add(sum(mul(fast, x)), sum(mul(slow, y))));
    const std::vector<double> yv = y.to_vector();
    for (int i = 0; i < 4; ++i) accum[i] += yv[i];
    const std::vector<double> s0 = slow.to_vector();
    opt.step();
    nf.step(rf, x.to_vector(), 1e-2, 0.0);
    if (k % 4 == 0) {
      ns.step(rs, scaled(accum, 0.25), 1e-2, 0.1);
      accum.assign(4, 0.0);
    } else {
      EXPECT_EQ(slow.to_vector(), s0) << "step " << k;
    }
    EXPECT_LT(rel_or_abs_error(fast.to_vector(), rf), 1e-5) << "step " << k;
    EXPECT_LT(rel_or_abs_error(slow.to_vector(), rs), 1e-5) << "step " << k;
  }
  const OptimizerState st = opt.state_dict();
  EXPECT_EQ(st.meta["groups"][0]["params"][0]["step"].get<int64_t>(), 12);
  EXPECT_EQ(st.meta["groups"][1]["params"][0]["step"].get<int64_t>(), 3);
  EXPECT_EQ(ns.t, 3);
}

TEST(MultiFrequency, ZeroGradModes) {
  Tensor fast = param({2}, 50), slow = param({2}, 51);
  SGD opt({ParamGroup{.params = {fast}, .period = 1}, ParamGroup{.params = {slow}, .period = 3}});
  fast.set_grad(Tensor::ones({2}));
  slow.set_grad(Tensor::ones({2}));
  opt.step();  // step 1: only fast applies
  slow.grad().fill_(2.0);
  fast.set_grad(Tensor::ones({2}));
  opt.zero_grad(/*set_to_none=*/false);
  EXPECT_EQ(fast.grad().to_vector(), (std::vector<double>{0, 0}));  // zero-filled, still defined
  EXPECT_EQ(slow.grad().to_vector(), (std::vector<double>{2, 2}));  // mid-window: kept
  opt.zero_grad();
  EXPECT_FALSE(fast.grad().defined());
  EXPECT_TRUE(slow.grad().defined());
  opt.zero_grad_all();
  EXPECT_FALSE(slow.grad().defined());
  EXPECT_EQ(opt.groups_due(3), (std::vector<size_t>{0, 1}));
  EXPECT_EQ(opt.groups_due(4), (std::vector<size_t>{0}));
}

// ---------------------------------------------------------------- resume

namespace {

struct Model {
  Tensor a, b, c;  // f32 (4, 3) period 1; f32 (5,) period 3; bf16 (6,) period 2
  NamedTensors named() const { return {{"a", a}, {"b", b}, {"c", c}}; }
};

Model make_model(bool random) {
  Model m;
  m.a = random ? param({4, 3}, 60) : Tensor::zeros({4, 3});
  m.b = random ? param({5}, 61) : Tensor::zeros({5});
  m.c = random ? param({6}, 62, DType::bf16) : Tensor::zeros({6}, DType::bf16);
  for (Tensor* t : {&m.a, &m.b, &m.c}) t->set_requires_grad(true);
  return m;
}

std::unique_ptr<AdamW> make_opt(const Model& m) {
  return std::make_unique<AdamW>(
      std::vector<ParamGroup>{ParamGroup{.params = {m.a}, .lr = 2e-2, .weight_decay = 0.1, .period = 1, .name = "a"},
                              ParamGroup{.params = {m.b}, .lr = 1e-2, .period = 3, .name = "b"},
                              ParamGroup{.params = {m.c}, .lr = 3e-2, .weight_decay = 0.01, .period = 2, .name = "c"}},
      AdamWOptions{.beta1 = 0.9, .beta2 = 0.95});
}

// One training step k (1-based): data depends only on k; returns the loss.
double train_step(const Model& m, AdamW& opt, int k, const LrSchedule& sched) {
  Generator gen(1000 + k);
  const Tensor xa = randn({4, 3}, gen), ya = randn({4, 3}, gen);
  const Tensor xb = randn({5}, gen), yb = randn({5}, gen);
  const Tensor xc = randn({6}, gen), yc = randn({6}, gen);
  opt.zero_grad();
  const Tensor loss = add(add(sum(square(sub(mul(m.a, xa), ya))), sum(square(sub(mul(m.b, xb), yb)))),
                          sum(square(sub(mul(to(m.c, DType::f32), xc), yc))));
  backward(loss);
  opt.set_lr_scale(sched.lr_at(opt.step_count()));
  opt.step();
  return loss.item();
}

}  // namespace

TEST(Optimizer, ResumeFromSavedStateIsBitExact) {
  TempDir dir;
  const LrSchedule sched = cosine_schedule(1.0, 2, 10, 0.1);
  const int n = 10, half = 5;  // step 5 is mid-window for the period-3 and period-2 groups

  Model straight = make_model(true);
  auto opt_s = make_opt(straight);
  std::vector<double> losses_s;
  for (int k = 1; k <= n; ++k) losses_s.push_back(train_step(straight, *opt_s, k, sched));

  Model first = make_model(true);
  auto opt_f = make_opt(first);
  std::vector<double> losses_r;
  for (int k = 1; k <= half; ++k) losses_r.push_back(train_step(first, *opt_f, k, sched));
  ASSERT_TRUE(first.b.grad().defined()) << "the test must save in the middle of the slow group's window";
  save_safetensors(dir.file("model.safetensors"), first.named());
  opt_f->save_state(dir.file("optim.safetensors"));

  Model resumed = make_model(false);
  load_into(dir.file("model.safetensors"), resumed.named());
  auto opt_r = make_opt(resumed);
  opt_r->load_state(dir.file("optim.safetensors"));
  EXPECT_EQ(opt_r->step_count(), half);
  EXPECT_EQ(opt_r->applications(1), 1);
  for (int k = half + 1; k <= n; ++k) losses_r.push_back(train_step(resumed, *opt_r, k, sched));

  ASSERT_EQ(losses_r.size(), losses_s.size());
  for (int k = 0; k < n; ++k) {
    EXPECT_EQ(std::memcmp(&losses_r[k], &losses_s[k], sizeof(double)), 0)
        << "loss at step " << k + 1 << ": " << losses_r[k] << " vs " << losses_s[k];
  }
  EXPECT_EQ(raw_bytes(resumed.a), raw_bytes(straight.a));
  EXPECT_EQ(raw_bytes(resumed.b), raw_bytes(straight.b));
  EXPECT_EQ(raw_bytes(resumed.c), raw_bytes(straight.c));
  EXPECT_EQ(raw_bytes(opt_r->master_weight(2, 0)), raw_bytes(opt_s->master_weight(2, 0)));

  // The check has teeth: resuming the weights without the optimiser state diverges.
  Model fresh = make_model(false);
  load_into(dir.file("model.safetensors"), fresh.named());
  auto opt_x = make_opt(fresh);
  for (int k = half + 1; k <= n; ++k) train_step(fresh, *opt_x, k, sched);
  EXPECT_NE(raw_bytes(fresh.a), raw_bytes(straight.a));
  EXPECT_NE(raw_bytes(fresh.b), raw_bytes(straight.b));
}

TEST(Optimizer, StateLoadValidates) {
  TempDir dir;
  Model m = make_model(true);
  auto opt = make_opt(m);
  const LrSchedule sched = constant_schedule(1.0);
  for (int k = 1; k <= 4; ++k) train_step(m, *opt, k, sched);
  const OptimizerState good = opt->state_dict();
  ASSERT_FALSE(good.tensors.empty());

  auto target = make_opt(m);
  // A different optimiser type.
  Tensor q = param({4, 3}, 70);
  SGD sgd({ParamGroup{.params = {q}}}, {.momentum = 0.9});
  q.set_grad(Tensor::ones({4, 3}));
  sgd.step();
  expect_contains(error_of([&] { target->load_state_dict(sgd.state_dict()); }), "saved by a SGD optimizer");
  // Different period.
  OptimizerState s = good;
  s.meta["groups"][1]["period"] = 4;
  expect_contains(error_of([&] { target->load_state_dict(s); }), "period");
  // Different parameter shape.
  s = good;
  s.meta["groups"][0]["params"][0]["shape"] = {3, 4};
  expect_contains(error_of([&] { target->load_state_dict(s); }), "parameter 0");
  // Unexpected and missing tensors.
  s = good;
  s.tensors.emplace_back("opt.9.9.exp_avg", Tensor::zeros({1}));
  expect_contains(error_of([&] { target->load_state_dict(s); }), "unexpected tensor 'opt.9.9.exp_avg'");
  s = good;
  s.tensors.erase(s.tensors.begin());
  expect_contains(error_of([&] { target->load_state_dict(s); }), "missing tensor");
  // A buffer of the wrong shape.
  s = good;
  s.tensors[0].second = Tensor::zeros({2});
  expect_contains(error_of([&] { target->load_state_dict(s); }), "expected");
  // Malformed metadata.
  s = good;
  s.meta["groups"] = "oops";
  EXPECT_THROW(target->load_state_dict(s), Error);
  s = good;
  s.meta.erase("step");
  expect_contains(error_of([&] { target->load_state_dict(s); }), "malformed");
  // A failed load changed nothing.
  EXPECT_EQ(target->step_count(), 0);
  // A safetensors file that is not optimiser state.
  save_safetensors(dir.file("w.safetensors"), m.named());
  expect_contains(error_of([&] { target->load_state(dir.file("w.safetensors")); }), "somnus.optimizer");
  // The good state loads.
  EXPECT_NO_THROW(target->load_state_dict(good));
  EXPECT_EQ(target->step_count(), 4);

  // Out-of-schedule applications (apply_group_now, used by an explicit sleep) are recorded and
  // round-trip; more of them than applications in all is refused.
  opt->apply_group_now(1);
  const OptimizerState forced = opt->state_dict();
  EXPECT_EQ(forced.meta["groups"][1]["forced"], 1);
  auto again = make_opt(m);
  EXPECT_NO_THROW(again->load_state_dict(forced));
  EXPECT_EQ(again->applications(1), opt->applications(1));
  s = forced;
  s.meta["groups"][1]["forced"] = opt->applications(1) + 1;
  expect_contains(error_of([&] { again->load_state_dict(s); }), "out-of-schedule applications");
}

// A group added mid-run (add_param_group: an activated slot's parameters) and a group whose
// period was edited apply on schedules of their own (fewer applications than step / period);
// their state saves, loads into an optimiser of the same layout, and the run continues
// bit-exactly. (Loading refused them: "1 applications recorded, expected 4 at step 4".)
TEST(Optimizer, StateOfAGroupAddedOrRetimedMidRunLoads) {
  for (const bool retime : {false, true}) {
    Tensor a = param({3}, 120), b = param({2}, 121), a2 = param({3}, 122), b2 = param({2}, 123);
    AdamW opt({ParamGroup{.params = {a}, .lr = 0.1, .name = "base"}});
    const auto grads = [](const Tensor& x, const Tensor& y, int k) {
      x.set_grad(Tensor::full(x.shape(), 0.1 * k));
      if (y.defined()) y.set_grad(Tensor::full(y.shape(), -0.2 * k));
    };
    for (int k = 1; k <= 3; ++k) {
      grads(a, Tensor(), k);
      opt.step();
    }
    opt.add_param_group(ParamGroup{.params = {b}, .lr = 0.1, .name = "slot"});
    if (retime) opt.groups()[0].period = 2;
    grads(a, b, 4);
    opt.step();
    a2.copy_(a);
    b2.copy_(b);
    AdamW loaded({ParamGroup{.params = {a2}, .lr = 0.1, .period = retime ? 2 : 1, .name = "base"},
                  ParamGroup{.params = {b2}, .lr = 0.1, .name = "slot"}});
    ASSERT_NO_THROW(loaded.load_state_dict(opt.state_dict())) << "retime " << retime;
    EXPECT_EQ(loaded.applications(1), 1);
    for (int k = 5; k <= 8; ++k) {
      grads(a, b, k);
      grads(a2, b2, k);
      opt.step();
      loaded.step();
    }
    EXPECT_EQ(raw_bytes(a2), raw_bytes(a)) << "retime " << retime;
    EXPECT_EQ(raw_bytes(b2), raw_bytes(b)) << "retime " << retime;
  }
}

TEST(Optimizer, ConstructionValidates) {
  Tensor p = param({2}, 80);
  expect_contains(error_of([&] { SGD({ParamGroup{.params = {p}, .period = 0}}); }), "period");
  expect_contains(error_of([&] { SGD({ParamGroup{.params = {p}}, ParamGroup{.params = {p}}}); }), "more than once");
  expect_contains(error_of([&] { SGD({ParamGroup{.params = {Tensor::zeros({2}, DType::i64)}}}); }), "floating");
  expect_contains(error_of([&] { SGD({ParamGroup{.params = {Tensor()}}}); }), "undefined");
  EXPECT_THROW(AdamW({ParamGroup{.params = {p}}}, {.beta1 = 1.0}), Error);
  EXPECT_THROW(SGD({ParamGroup{.params = {p}}}, {.momentum = 0.0, .nesterov = true}), Error);
}

// A parameter without a gradient is skipped; its state does not advance.
TEST(Optimizer, ParamWithoutGradIsSkipped) {
  Tensor a = param({3}, 90), b = param({3}, 91);
  AdamW opt({ParamGroup{.params = {a, b}, .lr = 0.1}});
  const std::vector<double> b0 = b.to_vector();
  a.set_grad(Tensor::ones({3}));
  opt.step();
  EXPECT_EQ(b.to_vector(), b0);
  EXPECT_EQ(opt.state_dict().meta["groups"][0]["params"][1]["step"].get<int64_t>(), 0);
  EXPECT_EQ(opt.state_dict().meta["groups"][0]["params"][0]["step"].get<int64_t>(), 1);
}

TEST(Optimizer, AddParamGroupAndLayoutChecks) {
  Tensor a = param({3}, 110), b = param({2}, 111);
  SGD opt({ParamGroup{.params = {a}, .lr = 0.5}});
  a.set_grad(Tensor::ones({3}));
  opt.step();
  opt.add_param_group(ParamGroup{.params = {b}, .lr = 1.0, .period = 2, .name = "slot"});
  const std::vector<double> b0 = b.to_vector();
  b.set_grad(Tensor::ones({2}));
  opt.step();  // step 2: the new period-2 group applies (mean over its window: 1/2)
  for (int i = 0; i < 2; ++i) EXPECT_NEAR(b.to_vector()[i], b0[i] - 0.5, 1e-6);
  EXPECT_EQ(opt.applications(1), 1);
  expect_contains(error_of([&] { opt.add_param_group(ParamGroup{.params = {a}}); }), "more than once");
  opt.groups()[0].lr = 0.25;  // editing hyperparameters in place is fine
  a.set_grad(Tensor::ones({3}));
  const std::vector<double> a0 = a.to_vector();
  opt.step();
  EXPECT_NEAR(a.to_vector()[0], a0[0] - 0.25, 1e-6);
  opt.groups()[0].params.push_back(param({1}, 112));  // changing the parameter list is not
  expect_contains(error_of([&] { opt.step(); }), "cannot be added");
}

TEST(Optimizer, CudaMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA device: the CUDA optimizer path is not tested here";
  for (DType dtype : {DType::f32, DType::bf16}) {
    Tensor pc = param({33, 7}, 100, dtype);
    Tensor pg = pc.to(Device::cuda());
    pg.set_requires_grad(true);
    AdamW oc({ParamGroup{.params = {pc}, .lr = 1e-2, .weight_decay = 0.1}});
    AdamW og({ParamGroup{.params = {pg}, .lr = 1e-2, .weight_decay = 0.1}});
    Generator gen(101);
    for (int k = 0; k < 5; ++k) {
      const Tensor g = randn({33, 7}, gen, dtype);
      pc.set_grad(g.clone());
      pg.set_grad(g.to(Device::cuda()));
      oc.step();
      og.step();
    }
    EXPECT_LT(rel_or_abs_error(pg.to_vector(), pc.to_vector()), dtype == DType::f32 ? 1e-6 : 1e-2) << dtype_name(dtype);
    pc.set_grad(Tensor::full({33, 7}, 3.0, dtype));
    pg.set_grad(Tensor::full({33, 7}, 3.0, dtype, Device::cuda()));
    EXPECT_NEAR(clip_grad_norm({pg}, 1.0), clip_grad_norm({pc}, 1.0), 1e-3);
    EXPECT_LT(rel_or_abs_error(pg.grad().to_vector(), pc.grad().to_vector()), 1e-2);
  }
}

// ---------------------------------------------------------------- schedules

TEST(LrSchedule, ValuesAtKeySteps) {
  const LrSchedule cos = cosine_schedule(1.0, 10, 110, 0.1);
  EXPECT_DOUBLE_EQ(cos.lr_at(0), 0.1);
  EXPECT_DOUBLE_EQ(cos.lr_at(4), 0.5);
  EXPECT_DOUBLE_EQ(cos.lr_at(9), 1.0);
  EXPECT_DOUBLE_EQ(cos.lr_at(10), 1.0);
  EXPECT_NEAR(cos.lr_at(60), 0.55, 1e-12);
  EXPECT_NEAR(cos.lr_at(35), 0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi / 4)), 1e-12);
  EXPECT_NEAR(cos.lr_at(110), 0.1, 1e-12);
  EXPECT_NEAR(cos.lr_at(5000), 0.1, 1e-12);
  for (int64_t s = 10; s < 110; ++s) EXPECT_GE(cos.lr_at(s), cos.lr_at(s + 1)) << s;

  const LrSchedule wsd = wsd_schedule(2.0, 10, 100, 0.2, 0.0);
  EXPECT_DOUBLE_EQ(wsd.lr_at(0), 0.2);
  EXPECT_DOUBLE_EQ(wsd.lr_at(10), 2.0);
  EXPECT_DOUBLE_EQ(wsd.lr_at(79), 2.0);
  EXPECT_DOUBLE_EQ(wsd.lr_at(80), 2.0);
  EXPECT_DOUBLE_EQ(wsd.lr_at(90), 1.0);
  EXPECT_DOUBLE_EQ(wsd.lr_at(95), 0.5);
  EXPECT_DOUBLE_EQ(wsd.lr_at(100), 0.0);
  const LrSchedule wsd_sqrt = wsd_schedule(1.0, 0, 100, 0.5, 0.1, LrDecayShape::one_minus_sqrt);
  EXPECT_DOUBLE_EQ(wsd_sqrt.lr_at(49), 1.0);
  EXPECT_NEAR(wsd_sqrt.lr_at(75), 0.1 + 0.9 * (1 - std::sqrt(0.5)), 1e-12);
  EXPECT_NEAR(wsd_sqrt.lr_at(100), 0.1, 1e-12);
  const LrSchedule wsd_cos = wsd_schedule(1.0, 0, 100, 0.5, 0.0, LrDecayShape::cosine);
  EXPECT_NEAR(wsd_cos.lr_at(75), 0.5, 1e-12);

  const LrSchedule c = constant_schedule(3e-4, 4);
  EXPECT_DOUBLE_EQ(c.lr_at(0), 0.75e-4);
  EXPECT_DOUBLE_EQ(c.lr_at(3), 3e-4);
  EXPECT_DOUBLE_EQ(c.lr_at(1'000'000), 3e-4);
  EXPECT_DOUBLE_EQ(constant_schedule(0.5).lr_at(0), 0.5);
  EXPECT_THROW(c.lr_at(-1), Error);
}

TEST(LrSchedule, JsonRoundTripAndValidation) {
  const LrSchedule w = wsd_schedule(6e-4, 100, 5000, 0.1, 0.05, LrDecayShape::one_minus_sqrt);
  const nlohmann::json j = w;
  EXPECT_EQ(j["kind"], "wsd");
  EXPECT_EQ(j["decay_shape"], "1-sqrt");
  const LrSchedule back = j.get<LrSchedule>();
  for (int64_t s : {0, 50, 99, 100, 4000, 4500, 4800, 5000, 6000}) EXPECT_EQ(back.lr_at(s), w.lr_at(s)) << s;

  const LrSchedule partial = nlohmann::json::parse(R"({"kind": "constant", "max_lr": 0.1})").get<LrSchedule>();
  EXPECT_EQ(partial.kind, LrScheduleKind::constant);
  EXPECT_DOUBLE_EQ(partial.lr_at(7), 0.1);

  auto parse = [](const char* text) { return nlohmann::json::parse(text).get<LrSchedule>(); };
  expect_contains(error_of([&] { parse(R"({"kind": "linear"})"); }), "unknown kind 'linear'");
  expect_contains(error_of([&] { parse(R"({"kind": "cosine", "warmup": 5})"); }), "unknown key 'warmup'");
  expect_contains(error_of([&] { parse(R"({"max_lr": "big"})"); }), "bad value");
  expect_contains(error_of([&] { parse(R"({"kind": "cosine", "warmup_steps": 50, "total_steps": 10})"); }),
                  "exceed");
  expect_contains(error_of([&] { parse(R"({"kind": "cosine", "min_ratio": 2})"); }), "min_ratio");
  expect_contains(error_of([&] { parse(R"({"kind": "wsd", "decay_fraction": 1.5})"); }), "decay_fraction");
  expect_contains(error_of([&] { parse(R"({"kind": "wsd", "warmup_steps": 900, "total_steps": 1000})"); }),
                  "overlap");
  expect_contains(error_of([&] { parse(R"({"decay_shape": "exp"})"); }), "decay_shape");
  expect_contains(error_of([&] { parse("[1]"); }), "JSON object");
}
