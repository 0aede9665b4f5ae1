#include "sleep/imitation.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <utility>

#include "autograd/grad_mode.h"
#include "nn/generate.h"
#include "sleep/baselines/json_fields.h"
#include "sleep/config_json.h"
#include "tensor/format.h"
#include "tensor/random.h"

namespace somnus::sleep {

using nlohmann::json;

namespace {

const char* kWhere = "imitation config";

// splitmix64 finaliser: independent seeds for (cfg.seed, round, purpose).
uint64_t mix_seed(uint64_t seed, uint64_t round, uint64_t purpose) {
  uint64_t z = seed ^ (round * 0x9E3779B97F4A7C15ULL) ^ (purpose * 0xD1B54A32D192ED03ULL);
  return splitmix64_mix(z + 0x9E3779B97F4A7C15ULL);
}

}  // namespace

// ---------------------------------------------------------------- config

void ImitationConfig::validate() const {
  SOMNUS_CHECK(group_size >= 2, "{}: 'group_size' must be >= 2 (a group of one has no advantage), got {}", kWhere,
               group_size);
  SOMNUS_CHECK(prefix_min_fraction > 0.0 && prefix_min_fraction < 1.0,
               "{}: 'prefix_min_fraction' must be in (0, 1), got {}", kWhere, prefix_min_fraction);
  SOMNUS_CHECK(prefix_max_fraction > 0.0 && prefix_max_fraction < 1.0,
               "{}: 'prefix_max_fraction' must be in (0, 1), got {}", kWhere, prefix_max_fraction);
  SOMNUS_CHECK(prefix_min_fraction <= prefix_max_fraction,
               "{}: 'prefix_min_fraction' ({}) must be <= 'prefix_max_fraction' ({})", kWhere, prefix_min_fraction,
               prefix_max_fraction);
  SOMNUS_CHECK(z0_fraction >= 0.0 && std::isfinite(z0_fraction), "{}: 'z0_fraction' must be >= 0, got {}", kWhere,
               z0_fraction);
  SOMNUS_CHECK(gamma >= 0.0 && gamma <= 1.0, "{}: 'gamma' must be in [0, 1], got {}", kWhere, gamma);
  SOMNUS_CHECK(cosine_threshold >= -1.0 && cosine_threshold <= 1.0,
               "{}: 'cosine_threshold' must be in [-1, 1], got {}", kWhere, cosine_threshold);
  SOMNUS_CHECK(semantic_reward == "auto" || semantic_reward == "answer_match" || semantic_reward == "hidden_cosine",
               "{}: 'semantic_reward' must be \"auto\", \"answer_match\" or \"hidden_cosine\", got \"{}\"", kWhere,
               semantic_reward);
  SOMNUS_CHECK(eps_low > 0.0 && eps_low < 1.0, "{}: 'eps_low' must be in (0, 1), got {}", kWhere, eps_low);
  SOMNUS_CHECK(eps_high > 0.0 && std::isfinite(eps_high), "{}: 'eps_high' must be > 0, got {}", kWhere, eps_high);
  SOMNUS_CHECK(kl_beta >= 0.0 && std::isfinite(kl_beta), "{}: 'kl_beta' must be >= 0, got {}", kWhere, kl_beta);
  SOMNUS_CHECK(advantage_eps > 0.0, "{}: 'advantage_eps' must be > 0, got {}", kWhere, advantage_eps);
  SOMNUS_CHECK(temperature > 0.0 && std::isfinite(temperature),
               "{}: 'temperature' must be > 0 (rollouts sample; greedy completions would all be equal), got {}",
               kWhere, temperature);
  SOMNUS_CHECK(top_k >= 0, "{}: 'top_k' must be >= 0 (0: off), got {}", kWhere, top_k);
  SOMNUS_CHECK(top_k != 1, "{}: 'top_k' = 1 is greedy: the G completions of a prefix would all be equal", kWhere);
  SOMNUS_CHECK(max_completion_tokens >= 0,
               "{}: 'max_completion_tokens' must be >= 0 (0: the rest of the sample), got {}", kWhere,
               max_completion_tokens);
  for (TokenId t : stop_tokens) {
    SOMNUS_CHECK(t >= 0, "{}: 'stop_tokens' must be token ids >= 0, got {}", kWhere, t);
  }
  SOMNUS_CHECK(rollout_batch_size >= 0, "{}: 'rollout_batch_size' must be >= 0 (0: all at once), got {}", kWhere,
               rollout_batch_size);
}

void to_json(json& j, const ImitationConfig& c) {
  j = json{{"group_size", c.group_size},
           {"prefix_min_fraction", c.prefix_min_fraction},
           {"prefix_max_fraction", c.prefix_max_fraction},
           {"z0_fraction", c.z0_fraction},
           {"gamma", c.gamma},
           {"cosine_threshold", c.cosine_threshold},
           {"semantic_reward", c.semantic_reward},
           {"eps_low", c.eps_low},
           {"eps_high", c.eps_high},
           {"kl_beta", c.kl_beta},
           {"loss_type", kernels::ppo_loss_type_name(c.loss_type)},
           {"advantage_eps", c.advantage_eps},
           {"temperature", c.temperature},
           {"top_k", c.top_k},
           {"max_completion_tokens", c.max_completion_tokens},
           {"stop_tokens", c.stop_tokens},
           {"rollout_batch_size", c.rollout_batch_size},
           {"seed", c.seed}};
}

void from_json(const json& j, ImitationConfig& out) {
  detail::check_known_keys(j,
                           {"group_size", "prefix_min_fraction", "prefix_max_fraction", "z0_fraction", "gamma",
                            "cosine_threshold", "semantic_reward", "eps_low", "eps_high", "kl_beta", "loss_type", "advantage_eps",
                            "temperature", "top_k", "max_completion_tokens", "stop_tokens", "rollout_batch_size",
                            "seed"},
                           kWhere);
  ImitationConfig c;
  detail::read_field(j, "group_size", c.group_size, kWhere);
  detail::read_field(j, "prefix_min_fraction", c.prefix_min_fraction, kWhere);
  detail::read_field(j, "prefix_max_fraction", c.prefix_max_fraction, kWhere);
  detail::read_field(j, "z0_fraction", c.z0_fraction, kWhere);
  detail::read_field(j, "gamma", c.gamma, kWhere);
  detail::read_field(j, "cosine_threshold", c.cosine_threshold, kWhere);
  detail::read_field(j, "semantic_reward", c.semantic_reward, kWhere);
  detail::read_field(j, "eps_low", c.eps_low, kWhere);
  detail::read_field(j, "eps_high", c.eps_high, kWhere);
  detail::read_field(j, "kl_beta", c.kl_beta, kWhere);
  if (j.contains("loss_type")) {
    std::string name;
    detail::read_field(j, "loss_type", name, kWhere);
    try {
      c.loss_type = kernels::ppo_loss_type_from_name(name);
    } catch (const Error& e) {
      fail("{}: 'loss_type': {}", kWhere, e.what());
    }
  }
  detail::read_field(j, "advantage_eps", c.advantage_eps, kWhere);
  detail::read_field(j, "temperature", c.temperature, kWhere);
  detail::read_field(j, "top_k", c.top_k, kWhere);
  detail::read_field(j, "max_completion_tokens", c.max_completion_tokens, kWhere);
  if (j.contains("stop_tokens")) c.stop_tokens = token_ids_from_json(j.at("stop_tokens"), kWhere, "stop_tokens");
  detail::read_field(j, "rollout_batch_size", c.rollout_batch_size, kWhere);
  detail::read_field(j, "seed", c.seed, kWhere);
  c.validate();
  out = std::move(c);
}

std::unique_ptr<SemanticReward> make_semantic_reward(const ImitationConfig& cfg, TeacherForward teacher,
                                                     Device device, const AnswerMatchReward::Extractor& answer_of) {
  cfg.validate();
  const bool have = static_cast<bool>(answer_of);
  SOMNUS_CHECK(have || cfg.semantic_reward != "answer_match",
               "{}: 'semantic_reward' is \"answer_match\" but the task defines no answer field (no answer "
               "extractor); use \"auto\" or \"hidden_cosine\"",
               kWhere);
  auto cosine = std::make_unique<HiddenCosineReward>(std::move(teacher), cfg.cosine_threshold, device);
  if (!have || cfg.semantic_reward == "hidden_cosine") return cosine;
  if (cfg.semantic_reward == "answer_match") return std::make_unique<AnswerMatchReward>(answer_of);
  return std::make_unique<AnswerMatchReward>(answer_of, std::move(cosine));  // "auto"
}

// ---------------------------------------------------------------- rollouts

double ImitationRollouts::mean_reward() const {
  if (rewards.empty()) return 0.0;
  double s = 0.0;
  for (double r : rewards) s += r;
  return s / static_cast<double>(rewards.size());
}

int64_t draw_prefix_length(int64_t length, double min_fraction, double max_fraction, Generator& gen) {
  SOMNUS_CHECK(length >= 2, "draw_prefix_length: a sample needs >= 2 tokens (a prefix and a continuation), got {}",
               length);
  const auto clamp = [&](double v) { return std::clamp<int64_t>(static_cast<int64_t>(v), 1, length - 1); };
  const int64_t lo = clamp(std::ceil(min_fraction * static_cast<double>(length)));
  const int64_t hi = std::max(lo, clamp(std::floor(max_fraction * static_cast<double>(length))));
  if (hi == lo) return lo;
  return static_cast<int64_t>(randint(lo, hi + 1, {1}, gen).item());
}

ImitationRollouts imitation_rollouts(nn::Transformer& student, const std::vector<std::vector<TokenId>>& teacher_samples,
                                     const ImitationConfig& cfg, uint64_t round, SemanticReward* semantic) {
  const char* op = "imitation_rollouts";
  cfg.validate();
  const nn::TransformerConfig& mc = student.config();
  SOMNUS_CHECK(!teacher_samples.empty(), "{}: no teacher samples", op);
  for (size_t i = 0; i < teacher_samples.size(); ++i) {
    const auto& d = teacher_samples[i];
    SOMNUS_CHECK(d.size() >= 2 && static_cast<int64_t>(d.size()) <= mc.block_size,
                 "{}: teacher sample {} has {} tokens; need 2..block_size = {}", op, i, d.size(), mc.block_size);
    for (TokenId t : d) {
      SOMNUS_CHECK(t >= 0 && t < mc.vocab_size, "{}: teacher sample {} has token id {} outside [0, {})", op, i, t,
                   mc.vocab_size);
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t N = static_cast<int64_t>(teacher_samples.size()), G = cfg.group_size;
  ImitationRollouts r;
  r.group_size = G;
  Generator prefix_gen(mix_seed(cfg.seed, round, 0));
  std::vector<int64_t> cap(static_cast<size_t>(N));  // completion length limit per sample
  for (int64_t i = 0; i < N; ++i) {
    const auto& d = teacher_samples[static_cast<size_t>(i)];
    const int64_t L = static_cast<int64_t>(d.size());
    const int64_t p = draw_prefix_length(L, cfg.prefix_min_fraction, cfg.prefix_max_fraction, prefix_gen);
    r.prefixes.emplace_back(d.begin(), d.begin() + p);
    r.references.emplace_back(d.begin() + p, d.end());
    int64_t c = L - p;
    if (cfg.max_completion_tokens > 0) c = std::min(c, cfg.max_completion_tokens);
    cap[static_cast<size_t>(i)] = c;  // generate() also stops at block_size − p (>= L − p here)
  }

  // Generation: row k = completion k % G of sample k / G, drawn from Philox stream k
  // whichever chunk it falls in (stream_offset = chunk start), so the chunking changes nothing.
  const int64_t rows = N * G;
  const int64_t chunk = cfg.rollout_batch_size > 0 ? cfg.rollout_batch_size : rows;
  r.completions.resize(static_cast<size_t>(rows));
  r.old_logprobs.resize(static_cast<size_t>(rows));
  nn::GenerateConfig gc;
  gc.temperature = cfg.temperature;
  gc.top_k = cfg.top_k;
  gc.stop_tokens = cfg.stop_tokens;
  gc.seed = mix_seed(cfg.seed, round, 1);
  for (int64_t s = 0; s < rows; s += chunk) {
    const int64_t e = std::min(rows, s + chunk);
    std::vector<std::vector<TokenId>> prompts;
    int64_t longest = 0;
    for (int64_t k = s; k < e; ++k) {
      prompts.push_back(r.prefixes[static_cast<size_t>(k / G)]);
      longest = std::max(longest, cap[static_cast<size_t>(k / G)]);
    }
    gc.max_new_tokens = longest;
    gc.stream_offset = static_cast<uint64_t>(s);
    nn::GenerateResult g = nn::generate(student, prompts, gc);
    for (int64_t k = s; k < e; ++k) {
      nn::GeneratedSequence& seq = g.sequences[static_cast<size_t>(k - s)];
      // A shorter limit is a prefix of the longer run: token j depends only on the tokens
      // before it and on stream k's uniform at step j.
      const size_t n = std::min(seq.tokens.size(), static_cast<size_t>(cap[static_cast<size_t>(k / G)]));
      seq.tokens.resize(n);
      seq.logprobs.resize(n);
      r.tokens_generated += static_cast<int64_t>(n);
      r.completions[static_cast<size_t>(k)] = std::move(seq.tokens);
      r.old_logprobs[static_cast<size_t>(k)] = std::move(seq.logprobs);
    }
  }  // the KV cache and logits of each chunk are freed here

  // Rewards, group by group.
  r.r_abs.resize(static_cast<size_t>(rows));
  if (semantic != nullptr) r.r_sem.resize(static_cast<size_t>(rows));
  for (int64_t i = 0; i < N; ++i) {
    const auto first = r.completions.begin() + i * G;
    const std::vector<std::vector<TokenId>> group(first, first + G);
    const auto& ref = r.references[static_cast<size_t>(i)];
    for (int64_t g = 0; g < G; ++g) {
      r.r_abs[static_cast<size_t>(i * G + g)] =
          absolute_reward_relative(group[static_cast<size_t>(g)], ref, cfg.z0_fraction);
    }
    if (semantic != nullptr) {
      const std::vector<double> sem = semantic->score(r.prefixes[static_cast<size_t>(i)], ref, group);
      SOMNUS_CHECK(static_cast<int64_t>(sem.size()) == G, "{}: the semantic reward '{}' returned {} scores for {}",
                   op, semantic->name(), sem.size(), G);
      std::copy(sem.begin(), sem.end(), r.r_sem.begin() + i * G);
    }
  }
  r.rewards = mix_rewards(r.r_sem, r.r_abs, cfg.gamma);
  r.advantages = group_advantages(r.rewards, G, cfg.advantage_eps);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.tokens_per_second = r.seconds > 0.0 ? static_cast<double>(r.tokens_generated) / r.seconds : 0.0;
  return r;
}

// ---------------------------------------------------------------- generic GRPO helpers

PolicyBatch make_policy_batch(const std::vector<std::vector<TokenId>>& prompts,
                              const std::vector<std::vector<TokenId>>& completions,
                              const std::vector<std::vector<double>>& old_logprobs, Device device) {
  const char* op = "make_policy_batch";
  const size_t B = prompts.size();
  SOMNUS_CHECK(B > 0, "{}: no rows", op);
  SOMNUS_CHECK(completions.size() == B && old_logprobs.size() == B,
               "{}: {} prompts, {} completions and {} log-prob rows must agree", op, B, completions.size(),
               old_logprobs.size());
  int64_t T = 0;
  PolicyBatch pb;
  for (size_t b = 0; b < B; ++b) {
    SOMNUS_CHECK(!prompts[b].empty() && !completions[b].empty(), "{}: row {} has an empty prompt or completion", op,
                 b);
    SOMNUS_CHECK(old_logprobs[b].size() == completions[b].size(), "{}: row {} has {} log-probs for {} tokens", op, b,
                 old_logprobs[b].size(), completions[b].size());
    T = std::max<int64_t>(T, static_cast<int64_t>(prompts[b].size() + completions[b].size()) - 1);
    pb.max_completion_length = std::max<int64_t>(pb.max_completion_length, static_cast<int64_t>(completions[b].size()));
    pb.completion_tokens += static_cast<int64_t>(completions[b].size());
  }
  const size_t Ts = static_cast<size_t>(T);
  std::vector<double> ids(B * Ts, 0.0), actions(B * Ts, 0.0), mask(B * Ts, 0.0), old_lp(B * Ts, 0.0);
  for (size_t b = 0; b < B; ++b) {
    const auto& p = prompts[b];
    const auto& c = completions[b];
    // Position t holds token t of prompt + completion and predicts token t + 1.
    const size_t len = p.size() + c.size();
    const auto token = [&](size_t t) { return t < p.size() ? p[t] : c[t - p.size()]; };
    for (size_t t = 0; t + 1 < len; ++t) {
      ids[b * Ts + t] = token(t);
      actions[b * Ts + t] = token(t + 1);
      if (t + 1 >= p.size()) {
        mask[b * Ts + t] = 1.0;
        old_lp[b * Ts + t] = old_logprobs[b][t + 1 - p.size()];
      }
    }
  }
  const Shape bt{static_cast<int64_t>(B), T};
  pb.ids = Tensor::from_vector(ids, bt, DType::i64, device);
  pb.actions = Tensor::from_vector(actions, bt, DType::i64, device);
  pb.mask = Tensor::from_vector(mask, bt, DType::f32, device);
  pb.old_logp = Tensor::from_vector(old_lp, bt, DType::f32, device);
  return pb;
}

Tensor reference_logprobs(const TeacherForward& forward, const Tensor& W_ref, const PolicyBatch& batch) {
  SOMNUS_CHECK(static_cast<bool>(forward) && W_ref.defined(),
               "reference_logprobs: need a reference forward and its lm-head weight");
  NoGradGuard no_grad;
  const Tensor h = forward(batch.ids);  // (B, T, C)
  const int64_t B = batch.ids.size(0);
  LinearPPOOptions o;
  o.compute_grad = false;
  const Tensor zeros_adv = Tensor::zeros({B}, DType::f32, h.device());
  return linear_ppo_loss(h, W_ref, batch.actions, batch.old_logp, Tensor(), zeros_adv, batch.mask, o).logp;
}

PPOLossOutput policy_loss(nn::Transformer& model, const PolicyBatch& batch, const std::vector<double>& advantages,
                          const LinearPPOOptions& opt, const Tensor& ref_logp) {
  const int64_t B = batch.ids.size(0);
  SOMNUS_CHECK(static_cast<int64_t>(advantages.size()) == B, "policy_loss: {} advantages for {} rows",
               advantages.size(), B);
  LinearPPOOptions o = opt;
  if (o.max_completion_length == 0) o.max_completion_length = batch.max_completion_length;
  const Tensor h = model.hidden_states(batch.ids);  // (B, T, C)
  const Tensor adv = Tensor::from_vector(advantages, {B}, DType::f32, h.device());
  return linear_ppo_loss(h, model.lm_head_weight(), batch.actions, batch.old_logp, ref_logp, adv, batch.mask, o);
}

// ---------------------------------------------------------------- the imitation loss

ImitationLoss imitation_loss(nn::Transformer& student, const ImitationRollouts& rollouts, const ImitationConfig& cfg,
                             const TeacherForward& teacher, const Tensor& teacher_lm_head) {
  const char* op = "imitation_loss";
  cfg.validate();
  const int64_t rows = rollouts.rows();
  SOMNUS_CHECK(rows > 0 && rollouts.group_size > 0 && rows % rollouts.group_size == 0 &&
                   static_cast<int64_t>(rollouts.prefixes.size()) * rollouts.group_size == rows &&
                   static_cast<int64_t>(rollouts.advantages.size()) == rows,
               "{}: malformed rollouts ({} rows, group size {}, {} prefixes, {} advantages)", op, rows,
               rollouts.group_size, rollouts.prefixes.size(), rollouts.advantages.size());
  SOMNUS_CHECK(cfg.kl_beta == 0.0 || (static_cast<bool>(teacher) && teacher_lm_head.defined()),
               "{}: kl_beta = {} needs the teacher forward and the teacher's lm-head weight", op, cfg.kl_beta);
  std::vector<std::vector<TokenId>> prompts(static_cast<size_t>(rows));
  for (int64_t k = 0; k < rows; ++k) prompts[static_cast<size_t>(k)] = rollouts.prefix_of(k);
  const PolicyBatch batch =
      make_policy_batch(prompts, rollouts.completions, rollouts.old_logprobs, student.lm_head_weight().device());

  LinearPPOOptions o;
  o.eps_low = cfg.eps_low;
  o.eps_high = cfg.eps_high;
  o.kl_beta = cfg.kl_beta;
  o.loss_type = cfg.loss_type;
  o.temperature = 1.0;  // old log-probs are the policy's at temperature 1 (nn/generate.h)
  Tensor ref_logp;
  if (cfg.kl_beta > 0.0) ref_logp = reference_logprobs(teacher, teacher_lm_head, batch);
  const PPOLossOutput p = policy_loss(student, batch, rollouts.advantages, o, ref_logp);

  ImitationLoss out;
  out.loss = p.loss;
  out.mean_reward = rollouts.mean_reward();
  out.clip_low_fraction = p.clip_low_fraction;
  out.clip_high_fraction = p.clip_high_fraction;
  out.mean_kl = p.mean_kl;
  out.entropy = p.entropy;
  out.tokens_generated = rollouts.tokens_generated;
  out.rollout_tokens_per_second = rollouts.tokens_per_second;
  out.num_valid = p.num_valid;
  return out;
}

}  // namespace somnus::sleep
