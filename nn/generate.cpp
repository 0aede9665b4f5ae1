// Generation (see generate.h): the preallocated KV cache, the host sampler, and the
// prefill/decode loop.
//
// Cost per decode step with the cache: one forward of B tokens, 2·N_params FLOPs per token
// plus attention over S cached keys (4·B·Hq·S·D); without the cache the step recomputes
// all S tokens, O(S) times more. The sampler works on the host in f64 per row: O(V) for
// greedy and plain temperature sampling, O(V log k) with top-k, O(V log V) with top-p
// alone (a full sort).
#include "nn/generate.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>

#include "autograd/grad_mode.h"
#include "kernels/sampling.h"
#include "tensor/format.h"
#include "tensor/philox.h"

namespace somnus::nn {

namespace {

// The pad bias: large and finite (see attention()).
constexpr double kPadBias = -1e9;

// The kernels' sampling options for cfg (greedy as temperature 0) at decode step `step`.
SamplingOptions sampling_options(const GenerateConfig& cfg, uint64_t step = 0) {
  SamplingOptions o;
  o.temperature = cfg.greedy() ? 0.0 : cfg.temperature;
  o.top_k = cfg.top_k;
  o.top_p = cfg.top_p;
  o.seed = cfg.seed;
  o.step = step;
  o.stream_offset = cfg.stream_offset;
  return o;
}

// Samples the rows with active[b] (all when empty) of host logits (B, V).
SampleResult sample_host(const std::vector<double>& logits, int64_t B, int64_t V, const GenerateConfig& cfg,
                         const std::vector<double>& uniforms, const std::vector<bool>& active = {}) {
  SampleResult r;
  r.tokens.assign(static_cast<size_t>(B), 0);
  r.logprobs.assign(static_cast<size_t>(B), 0.0);
  r.sampling_logprobs.assign(static_cast<size_t>(B), 0.0);
  const SamplingOptions opt = sampling_options(cfg);
  std::vector<int32_t> order;
  std::vector<double> weights;
  for (int64_t b = 0; b < B; ++b) {
    if (!active.empty() && !active[static_cast<size_t>(b)]) continue;
    const double u = cfg.greedy() ? 1.0 : uniforms[static_cast<size_t>(b)];
    SOMNUS_CHECK(u > 0.0 && u <= 1.0, "sample_next: uniform of row {} must be in (0, 1], got {}", b, u);
    const double* x = logits.data() + b * V;
    const SampledRow s = kernels::sample_row(x, V, opt, u, order, weights);
    if (s.token < 0) {
      const double* nan = std::find_if(x, x + V, [](double v) { return std::isnan(v); });
      SOMNUS_CHECK(nan == x + V, "sample_next: NaN logit in row {} at token {}", b, nan - x);
      fail("sample_next: row {} has no finite logit", b);
    }
    r.tokens[static_cast<size_t>(b)] = static_cast<TokenId>(s.token);
    r.logprobs[static_cast<size_t>(b)] = s.logprob;
    r.sampling_logprobs[static_cast<size_t>(b)] = s.sampling_logprob;
  }
  return r;
}

// Every row of CUDA logits (B, V) sampled by the GPU sampler at `step`; row b uses stream
// cfg.stream_offset + b, the stream generate() gives prompt b.
SampleResult sample_device(const Tensor& logits, const GenerateConfig& cfg, uint64_t step) {
  const SampledTokens t = kernels::sample_tokens(logits, sampling_options(cfg, step));
  SampleResult r;
  for (double v : t.tokens.to_vector()) r.tokens.push_back(static_cast<TokenId>(v));
  r.logprobs = t.logprobs.to_vector();
  r.sampling_logprobs = t.sampling_logprobs.to_vector();
  return r;
}

void check_logits(const Tensor& logits) {
  SOMNUS_CHECK(logits.defined() && logits.dim() == 2 && is_floating(logits.dtype()) && logits.size(1) > 0,
               "sample_next: expected floating logits (B, V) with V > 0, got {}",
               logits.defined() ? shape_str(logits.shape()) + " " + dtype_name(logits.dtype()) : "undefined");
}

}  // namespace

// ---------------------------------------------------------------- KV cache

StaticKVCache::StaticKVCache(const TransformerConfig& cfg, int64_t batch, int64_t capacity, DType dtype,
                             Device device)
    : batch_(batch), capacity_(capacity > 0 ? capacity : cfg.block_size) {
  cfg.validate();
  SOMNUS_CHECK(batch > 0, "StaticKVCache: batch must be positive, got {}", batch);
  SOMNUS_CHECK(is_floating(dtype), "StaticKVCache: expected a floating dtype, got {}", dtype_name(dtype));
  n_kv_head_ = cfg.kv_heads();
  head_dim_ = cfg.head_dim();
  for (int64_t l = 0; l < cfg.n_layer; ++l) {
    // Zero-filled so that the unfilled tail never holds garbage (it is never read).
    k_.push_back(Tensor::zeros({batch_, n_kv_head_, capacity_, head_dim_}, dtype, device));  // (B, Hkv, cap, D)
    v_.push_back(Tensor::zeros({batch_, n_kv_head_, capacity_, head_dim_}, dtype, device));  // (B, Hkv, cap, D)
  }
  length_.assign(static_cast<size_t>(cfg.n_layer), 0);
}

std::pair<Tensor, Tensor> StaticKVCache::update(int64_t layer, const Tensor& k, const Tensor& v) {
  SOMNUS_CHECK(layer >= 0 && layer < n_layer(), "StaticKVCache: layer {} out of range [0, {})", layer, n_layer());
  const Tensor& K = k_[static_cast<size_t>(layer)];
  const Tensor& Vb = v_[static_cast<size_t>(layer)];
  SOMNUS_CHECK(k.defined() && v.defined() && k.dim() == 4 && k.shape() == v.shape() && k.size(0) == batch_ &&
                   k.size(1) == n_kv_head_ && k.size(3) == head_dim_,
               "StaticKVCache: expected k and v ({}, {}, T, {}), got k {} v {}", batch_, n_kv_head_, head_dim_,
               k.defined() ? shape_str(k.shape()) : "undefined", v.defined() ? shape_str(v.shape()) : "undefined");
  SOMNUS_CHECK(k.dtype() == K.dtype() && v.dtype() == K.dtype() && k.device() == K.device() &&
                   v.device() == K.device(),
               "StaticKVCache: k {} {} and v {} {} must match the cache ({} {})", dtype_name(k.dtype()),
               k.device().str(), dtype_name(v.dtype()), v.device().str(), dtype_name(K.dtype()), K.device().str());
  // The copy into the buffer is not differentiable: the cache is for inference.
  SOMNUS_CHECK(!is_grad_enabled() || (!k.requires_grad() && !v.requires_grad()),
               "StaticKVCache: update() with inputs that require grad outside no_grad; generation runs under "
               "NoGradGuard");
  int64_t& len = length_[static_cast<size_t>(layer)];
  const int64_t T = k.size(2);
  SOMNUS_CHECK(len + T <= capacity_,
               "StaticKVCache: layer {} holds {} tokens, {} more exceed the capacity {}", layer, len, T, capacity_);
  K.slice(2, len, len + T).copy_(k);
  Vb.slice(2, len, len + T).copy_(v);
  len += T;
  return {K.slice(2, 0, len), Vb.slice(2, 0, len)};  // views (B, Hkv, S, D)
}

int64_t StaticKVCache::length(int64_t layer) const {
  SOMNUS_CHECK(layer >= 0 && layer < n_layer(), "StaticKVCache: layer {} out of range [0, {})", layer, n_layer());
  return length_[static_cast<size_t>(layer)];
}

void StaticKVCache::reset() { std::fill(length_.begin(), length_.end(), 0); }

int64_t StaticKVCache::nbytes() const {
  int64_t n = 0;
  for (size_t l = 0; l < k_.size(); ++l) n += k_[l].nbytes() + v_[l].nbytes();
  return n;
}

// ---------------------------------------------------------------- config

void GenerateConfig::validate() const {
  SOMNUS_CHECK(max_new_tokens >= 0, "GenerateConfig: max_new_tokens must be >= 0, got {}", max_new_tokens);
  SOMNUS_CHECK(std::isfinite(temperature) && temperature >= 0.0,
               "GenerateConfig: temperature must be finite and >= 0 (0 = greedy), got {}", temperature);
  SOMNUS_CHECK(top_k >= 0, "GenerateConfig: top_k must be >= 0 (0 = off), got {}", top_k);
  SOMNUS_CHECK(top_p > 0.0 && top_p <= 1.0, "GenerateConfig: top_p must be in (0, 1] (1 = off), got {}", top_p);
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::stop_token: return "stop_token";
    case FinishReason::max_new_tokens: return "max_new_tokens";
    case FinishReason::block_size: return "block_size";
  }
  return "?";
}

// ---------------------------------------------------------------- sampling

double stream_uniform(uint64_t seed, uint64_t stream, uint64_t step) {
  return kernels::sampling_uniform(seed, stream, step);
}

SampleResult sample_next(const Tensor& logits, const GenerateConfig& cfg, const std::vector<double>& uniforms) {
  cfg.validate();
  check_logits(logits);
  const int64_t B = logits.size(0), V = logits.size(1);
  SOMNUS_CHECK(cfg.greedy() || static_cast<int64_t>(uniforms.size()) == B,
               "sample_next: {} uniforms for {} rows (logits {})", uniforms.size(), B, shape_str(logits.shape()));
  return sample_host(logits.to_vector(), B, V, cfg, uniforms);
}

SampleResult sample_next(const Tensor& logits, const GenerateConfig& cfg, Generator& gen) {
  check_logits(logits);
  const int64_t B = logits.size(0);
  // One Philox counter (4 lanes, two of them used) per row.
  const uint64_t offset = gen.advance(4 * static_cast<uint64_t>(B));
  std::vector<double> u(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) u[static_cast<size_t>(b)] = philox::uniform53(philox::philox4x32_10(offset + b, 0, gen.seed));
  return sample_next(logits, cfg, u);
}

// ---------------------------------------------------------------- generation

GenerateResult generate(Transformer& model, const std::vector<std::vector<TokenId>>& prompts,
                        const GenerateConfig& cfg) {
  cfg.validate();
  const TransformerConfig& mc = model.config();
  const int64_t B = static_cast<int64_t>(prompts.size());
  SOMNUS_CHECK(B > 0, "generate: no prompts");
  int64_t P = 0;  // the longest prompt: the padded prefill length
  for (int64_t i = 0; i < B; ++i) {
    const auto& p = prompts[static_cast<size_t>(i)];
    SOMNUS_CHECK(!p.empty(), "generate: prompt {} is empty", i);
    SOMNUS_CHECK(static_cast<int64_t>(p.size()) <= mc.block_size,
                 "generate: prompt {} has {} tokens, longer than block_size = {}", i, p.size(), mc.block_size);
    for (TokenId t : p) {
      SOMNUS_CHECK(t >= 0 && t < mc.vocab_size, "generate: prompt {} has token id {} outside [0, {})", i, t,
                   mc.vocab_size);
    }
    P = std::max<int64_t>(P, static_cast<int64_t>(p.size()));
  }
  const Tensor& w = model.wte->weight;
  const DType dtype = w.dtype();
  const Device device = w.device();

  GenerateResult result;
  result.sequences.resize(static_cast<size_t>(B));
  std::vector<int64_t> len(static_cast<size_t>(B)), pad(static_cast<size_t>(B)), limit(static_cast<size_t>(B));
  std::vector<bool> active(static_cast<size_t>(B));
  int64_t steps = 0;  // the most tokens any sequence may generate
  bool ragged = false;
  for (size_t i = 0; i < prompts.size(); ++i) {
    len[i] = static_cast<int64_t>(prompts[i].size());
    pad[i] = P - len[i];
    ragged = ragged || pad[i] > 0;
    // prompt + generated <= block_size: the result can be rescored by one forward.
    limit[i] = std::min(cfg.max_new_tokens, mc.block_size - len[i]);
    active[i] = limit[i] > 0;
    if (!active[i]) {
      result.sequences[i].finish = cfg.max_new_tokens == 0 ? FinishReason::max_new_tokens : FinishReason::block_size;
    }
    steps = std::max(steps, limit[i]);
  }
  if (steps == 0) return result;

  NoGradGuard no_grad;
  // Step n (0-based) feeds the padded columns up to P + n; the last generated token is
  // never fed, so the cache holds at most P + steps − 1 columns.
  const int64_t capacity = P + steps - 1;
  std::unique_ptr<StaticKVCache> cache;
  if (cfg.use_cache) cache = std::make_unique<StaticKVCache>(mc, B, capacity, dtype, device);
  Tensor bias;  // (B, 1, 1, capacity): kPadBias on each row's pad columns
  if (ragged) {
    std::vector<double> b(static_cast<size_t>(B * capacity), 0.0);
    for (int64_t i = 0; i < B; ++i) std::fill_n(b.begin() + i * capacity, pad[static_cast<size_t>(i)], kPadBias);
    bias = Tensor::from_vector(b, {B, 1, 1, capacity}, dtype, device);
  }
  // The padded token rows (pad id 0), extended by one column per step.
  std::vector<std::vector<double>> rows(static_cast<size_t>(B));
  for (size_t i = 0; i < rows.size(); ++i) {
    rows[i].assign(static_cast<size_t>(pad[i]), 0.0);
    rows[i].insert(rows[i].end(), prompts[i].begin(), prompts[i].end());
  }
  // Position of padded column j of row i; finished rows (ignored) are clamped into the table.
  auto position = [&](size_t i, int64_t j) {
    return static_cast<double>(std::clamp<int64_t>(j - pad[i], 0, mc.block_size - 1));
  };

  std::vector<double> uniforms(static_cast<size_t>(B), 1.0);
  for (int64_t n = 0; n < steps; ++n) {
    // Columns [c0, c1) of the padded sequence go in: all of them for the prefill and for
    // full recomputation, the newest one for a cached decode step.
    const int64_t c1 = P + n;
    const int64_t c0 = (cfg.use_cache && n > 0) ? c1 - 1 : 0;
    const int64_t T = c1 - c0;
    std::vector<double> ids_v, pos_v;
    ids_v.reserve(static_cast<size_t>(B * T));
    pos_v.reserve(static_cast<size_t>(B * T));
    for (size_t i = 0; i < rows.size(); ++i) {
      for (int64_t j = c0; j < c1; ++j) {
        ids_v.push_back(rows[i][static_cast<size_t>(j)]);
        pos_v.push_back(position(i, j));
      }
    }
    ForwardContext ctx;
    ctx.positions = Tensor::from_vector(pos_v, {B, T}, DType::i64, device);  // (B, T)
    if (ragged) ctx.attn_bias = bias.slice(3, 0, c1);                          // (B, 1, 1, S)
    ctx.cache = cache.get();
    const Tensor ids = Tensor::from_vector(ids_v, {B, T}, DType::i64, device);  // (B, T)
    const Tensor hidden = model.hidden_states(ids, ctx);                         // (B, T, C)
    // Only the last column is needed: the lm head runs on (B, 1, C), not (B, T, C).
    const Tensor logits = model.logits_from_hidden(hidden.slice(1, T - 1, T)).reshape({B, mc.vocab_size});  // (B, V)
    ++result.forward_calls;

    for (int64_t i = 0; i < B; ++i) {
      if (active[static_cast<size_t>(i)]) uniforms[static_cast<size_t>(i)] = stream_uniform(cfg.seed, cfg.stream_offset + i, n);
    }
    // CUDA logits are sampled on the device (kernels/sampling.h draws the same Philox uniforms);
    // only B tokens and log-probs come back. The host sampler serves CPU logits.
    const SampleResult s = logits.device().is_cuda() ? sample_device(logits, cfg, static_cast<uint64_t>(n))
                                                     : sample_host(logits.to_vector(), B, mc.vocab_size, cfg, uniforms, active);
    bool any_active = false;
    for (size_t i = 0; i < rows.size(); ++i) {
      // Finished rows are fed their last token again; their outputs are ignored.
      double next = rows[i].back();
      if (active[i]) {
        GeneratedSequence& seq = result.sequences[i];
        seq.tokens.push_back(s.tokens[i]);
        seq.logprobs.push_back(s.logprobs[i]);
        seq.sampling_logprobs.push_back(s.sampling_logprobs[i]);
        next = s.tokens[i];
        const bool stop =
            std::find(cfg.stop_tokens.begin(), cfg.stop_tokens.end(), s.tokens[i]) != cfg.stop_tokens.end();
        if (stop) {
          seq.finish = FinishReason::stop_token;
          active[i] = false;
        } else if (static_cast<int64_t>(seq.tokens.size()) == limit[i]) {
          seq.finish = limit[i] == cfg.max_new_tokens ? FinishReason::max_new_tokens : FinishReason::block_size;
          active[i] = false;
        }
      }
      rows[i].push_back(next);
      any_active = any_active || active[i];
    }
    if (!any_active) break;
  }
  return result;
}

}  // namespace somnus::nn
