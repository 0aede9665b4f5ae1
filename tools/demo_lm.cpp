#include "tools/demo_lm.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "autograd/engine.h"
#include "autograd/functions.h"
#include "autograd/grad_mode.h"
#include "kernels/ops.h"
#include "tensor/format.h"
#include "tensor/random.h"

namespace somnus::tools {

namespace {

struct Corpus {
  std::vector<int64_t> train, val;
  std::vector<unsigned char> itos;  // token id -> byte
  int64_t vocab = 0;
};

Corpus load_corpus(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  SOMNUS_CHECK(f.good(), "demo: cannot open corpus '{}' (expected ../shared/data/tinyshakespeare/input.txt; "
                         "pass --data PATH)", path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  SOMNUS_CHECK(text.size() > 10000, "demo: corpus '{}' is too small ({} bytes)", path, text.size());
  std::vector<int64_t> stoi(256, -1);
  Corpus c;
  for (unsigned char ch : text) {
    if (stoi[ch] < 0) {
      stoi[ch] = 0;
      c.itos.push_back(ch);
    }
  }
  std::sort(c.itos.begin(), c.itos.end());
  for (size_t i = 0; i < c.itos.size(); ++i) stoi[c.itos[i]] = static_cast<int64_t>(i);
  c.vocab = static_cast<int64_t>(c.itos.size());
  const size_t n_train = text.size() * 9 / 10;
  for (size_t i = 0; i < text.size(); ++i) {
    (i < n_train ? c.train : c.val).push_back(stoi[static_cast<unsigned char>(text[i])]);
  }
  return c;
}

// x (B, context) and y (B,) i64, from random windows of `data`.
std::pair<Tensor, Tensor> get_batch(const std::vector<int64_t>& data, int64_t batch, int64_t context,
                                    Generator& gen) {
  const Tensor starts = randint(0, static_cast<int64_t>(data.size()) - context - 1, {batch}, gen);
  const int64_t* s = starts.data<int64_t>();
  Tensor x = Tensor::empty({batch, context}, DType::i64), y = Tensor::empty({batch}, DType::i64);
  int64_t* xp = x.data<int64_t>();
  int64_t* yp = y.data<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < context; ++t) xp[b * context + t] = data[s[b] + t];
    yp[b] = data[s[b] + context];
  }
  return {x, y};
}

struct MlpLm {
  Tensor wte, w1, b1, w2, b2;  // (V, E), (ctx·E, H), (H,), (H, V), (V,)
  int64_t context;

  MlpLm(const DemoConfig& cfg, int64_t vocab, Generator& gen) : context(cfg.context) {
    const int64_t fan_in = cfg.context * cfg.embed;
    wte = randn({vocab, cfg.embed}, gen, DType::f32, Device::cpu(), 0.0, 0.5);
    w1 = randn({fan_in, cfg.hidden}, gen, DType::f32, Device::cpu(), 0.0, 1.0 / std::sqrt(double(fan_in)));
    b1 = Tensor::zeros({cfg.hidden});
    w2 = randn({cfg.hidden, vocab}, gen, DType::f32, Device::cpu(), 0.0, 0.1 / std::sqrt(double(cfg.hidden)));
    b2 = Tensor::zeros({vocab});
    for (Tensor* p : params()) p->set_requires_grad(true);
  }
  std::vector<Tensor*> params() { return {&wte, &w1, &b1, &w2, &b2}; }

  // logits (B, V) for x (B, ctx)
  Tensor forward(const Tensor& x) const {
    const int64_t batch = x.size(0);
    Tensor emb = embedding(wte, x);                        // (B, ctx, E)
    Tensor flat = reshape(emb, {batch, -1});               // (B, ctx·E)
    Tensor h = matmul(flat, w1, b1, /*gelu=*/true);        // (B, H)   bias + GELU epilogue
    return matmul(h, w2, b2);                              // (B, V)
  }

  // Mean next-character negative log-likelihood.
  Tensor loss(const Tensor& x, const Tensor& y) const {
    Tensor logp = log_softmax(forward(x));                 // (B, V)
    Tensor picked = gather(logp, 1, y.unsqueeze(1));       // (B, 1)
    return neg(mean(picked));
  }
};

// AdamW on CPU f32 parameters (the engine's optimisers land with the nn layer).
struct AdamW {
  double lr, wd, b1 = 0.9, b2 = 0.95, eps = 1e-8;
  int64_t t = 0;
  std::vector<std::vector<float>> m, v;
  AdamW(std::vector<Tensor*> ps, double lr_, double wd_) : lr(lr_), wd(wd_) {
    for (Tensor* p : ps) {
      m.emplace_back(p->numel(), 0.0f);
      v.emplace_back(p->numel(), 0.0f);
    }
  }
  void step(std::vector<Tensor*> ps, double lr_now) {
    ++t;
    const double c1 = 1.0 - std::pow(b1, double(t)), c2 = 1.0 - std::pow(b2, double(t));
    for (size_t k = 0; k < ps.size(); ++k) {
      Tensor g = ps[k]->grad();
      if (!g.defined()) continue;
      g = g.contiguous();
      float* w = ps[k]->data<float>();
      const float* gp = g.data<float>();
      const bool decay = ps[k]->dim() >= 2;
      for (int64_t i = 0; i < ps[k]->numel(); ++i) {
        m[k][i] = float(b1 * m[k][i] + (1 - b1) * gp[i]);
        v[k][i] = float(b2 * v[k][i] + (1 - b2) * gp[i] * gp[i]);
        const double update = (m[k][i] / c1) / (std::sqrt(v[k][i] / c2) + eps);
        w[i] = float(w[i] - lr_now * (update + (decay ? wd * w[i] : 0.0)));
      }
      ps[k]->set_grad(Tensor());
    }
  }
};

double eval_loss(const MlpLm& model, const std::vector<int64_t>& data, const DemoConfig& cfg) {
  NoGradGuard no_grad;
  Generator gen(cfg.seed + 999);  // the same validation batches every time
  double total = 0;
  for (int64_t i = 0; i < cfg.eval_batches; ++i) {
    auto [x, y] = get_batch(data, cfg.batch, cfg.context, gen);
    total += model.loss(x, y).item();
  }
  return total / static_cast<double>(cfg.eval_batches);
}

std::string sample(const MlpLm& model, const Corpus& corpus, const DemoConfig& cfg, double temperature) {
  NoGradGuard no_grad;
  Generator gen(cfg.seed + 7);
  std::vector<int64_t> window(corpus.val.begin(), corpus.val.begin() + cfg.context);
  std::string out;
  for (int64_t id : window) out += char(corpus.itos[id]);
  for (int64_t i = 0; i < cfg.sample_chars; ++i) {
    std::vector<double> ctx(window.begin(), window.end());
    Tensor x = Tensor::from_vector(ctx, {1, cfg.context}, DType::i64);
    Tensor probs = kernels::softmax(kernels::binary(kernels::Binary::mul, model.forward(x),
                                                    Tensor::scalar(1.0 / temperature)));
    const std::vector<double> p = probs.to_vector();
    const double u = rand({1}, gen, DType::f64).item();
    double acc = 0;
    int64_t next = static_cast<int64_t>(p.size()) - 1;
    for (size_t k = 0; k < p.size(); ++k) {
      acc += p[k];
      if (u < acc) {
        next = static_cast<int64_t>(k);
        break;
      }
    }
    out += char(corpus.itos[next]);
    window.erase(window.begin());
    window.push_back(next);
  }
  return out;
}

void write_plot(const std::string& dir, const std::vector<std::array<double, 3>>& rows) {
  const std::string csv = dir + "/loss.csv";
  {
    std::ofstream f(csv);
    f << "step,train_loss,val_loss\n";
    for (const auto& r : rows) f << fmt::format("{},{:.5f},{:.5f}\n", r[0], r[1], r[2]);
  }
  const std::string gp = dir + "/loss.gp";
  {
    std::ofstream f(gp);
    f << "set terminal pngcairo size 800,500 noenhanced\n"
      << "set output '" << dir << "/loss.png'\n"
      << "set datafile separator ','\n"
      << "set title 'somnus demo: char-level MLP LM on tinyshakespeare'\n"
      << "set xlabel 'step'\nset ylabel 'cross-entropy (nats/char)'\nset grid\n"
      << "plot '" << csv << "' using 1:2 skip 1 with linespoints title 'train', '" << csv
      << "' using 1:3 skip 1 with linespoints title 'val'\n";
  }
  const int rc = std::system(fmt::format("gnuplot '{}' 2>/dev/null", gp).c_str());
  if (rc == 0) {
    fmt::print("plot: {}/loss.png\n", dir);
  } else {
    fmt::print("plot: gnuplot failed or is missing (rc={}); data is in {}\n", rc, csv);
  }
}

}  // namespace

double run_demo_lm(const DemoConfig& cfg) {
  SOMNUS_CHECK(cfg.steps > 0 && cfg.batch > 0 && cfg.context > 0 && cfg.eval_every > 0,
               "demo: steps, batch, context and eval_every must be positive");
  const Corpus corpus = load_corpus(cfg.data_path);
  Generator gen(cfg.seed);
  MlpLm model(cfg, corpus.vocab, gen);
  AdamW opt(model.params(), cfg.lr, cfg.weight_decay);
  int64_t n_params = 0;
  for (Tensor* p : model.params()) n_params += p->numel();
  fmt::print("somnus demo: char-level MLP LM, vocab {}, context {}, {} parameters, {} train / {} val chars\n",
             corpus.vocab, cfg.context, n_params, corpus.train.size(), corpus.val.size());
  fmt::print("uniform-guess loss would be ln({}) = {:.3f}\n\n", corpus.vocab, std::log(double(corpus.vocab)));
  fmt::print("| {:>5} | {:>10} | {:>8} | {:>10} | {:>9} |\n", "step", "train loss", "val loss", "chars/s", "ms/step");
  fmt::print("|------:|-----------:|---------:|-----------:|----------:|\n");

  std::filesystem::create_directories(cfg.out_dir);
  std::vector<std::array<double, 3>> rows;
  double running = 0, val = 0;
  int64_t since = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (int64_t step = 1; step <= cfg.steps; ++step) {
    auto [x, y] = get_batch(corpus.train, cfg.batch, cfg.context, gen);
    Tensor loss = model.loss(x, y);
    backward(loss);
    // cosine decay to 10% of the peak learning rate
    const double frac = double(step) / double(cfg.steps);
    opt.step(model.params(), cfg.lr * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * frac))));
    running += loss.item();
    ++since;
    if (step % cfg.eval_every == 0 || step == cfg.steps) {
      const auto t1 = std::chrono::steady_clock::now();
      const double secs = std::chrono::duration<double>(t1 - t0).count();
      val = eval_loss(model, corpus.val, cfg);
      const double train = running / double(since);
      rows.push_back({double(step), train, val});
      fmt::print("| {:>5} | {:>10.4f} | {:>8.4f} | {:>10.0f} | {:>9.2f} |\n", step, train, val,
                 double(since * cfg.batch) / secs, 1000.0 * secs / double(since));
      std::fflush(stdout);
      running = 0;
      since = 0;
      t0 = std::chrono::steady_clock::now();
    }
  }
  write_plot(cfg.out_dir, rows);
  fmt::print("\nsample (temperature 0.8):\n{}\n", sample(model, corpus, cfg, 0.8));
  return val;
}

}  // namespace somnus::tools
