// LoRA adapter sets (sleep/lora.h): several adapters on one set of shared base weights.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "nn/nn_testing.h"
#include "sleep/baselines/training.h"
#include "sleep/lora.h"

namespace somnus::sleep {
namespace {

using nlohmann::json;
using nn::Transformer;
using nn::TransformerConfig;
using nn::testing::bitwise_equal;
using nn::testing::expect_error;
using nn::testing::randomize;
using nn::testing::raw_bytes;
using nn::testing::rel_error;

TransformerConfig gpt2_tiny() {
  TransformerConfig c = TransformerConfig::gpt2_style(/*vocab=*/32, /*n_layer=*/2, /*n_embd=*/16, /*n_head=*/2,
                                                      /*block=*/24);
  c.levels[0].hidden = 32;
  return c;
}

TransformerConfig llama_tiny() {
  TransformerConfig c = TransformerConfig::llama_style(32, 2, 16, 4, 2, 24);
  c.levels[0].hidden = 24;
  return c;
}

Tensor ids_for(uint64_t seed) {
  Generator g(seed);
  return randint(0, 32, {2, 10}, g);
}

Tensor logits_of(Transformer& m, const Tensor& ids) {
  NoGradGuard no_grad;
  return m.forward(ids);
}

// Base (non-LoRA) parameters by name, with their data pointers.
std::map<std::string, const void*> base_pointers(const Transformer& m) {
  std::map<std::string, const void*> out;
  for (const auto& [n, p] : m.named_parameters()) {
    if (n.find("lora_") == std::string::npos) out[n] = p.data_ptr();
  }
  return out;
}

std::vector<std::string> bytes_of(const std::vector<Tensor>& ts) {
  std::vector<std::string> out;
  for (const Tensor& t : ts) out.push_back(raw_bytes(t));
  return out;
}

// LoRA enabled directly (no AdapterSet) on the model's first Linear whose name holds "attn".
nn::Linear& set_free_layer(Transformer& m, Generator& gen) {
  for (auto& [name, mod] : m.named_modules()) {
    auto* lin = dynamic_cast<nn::Linear*>(mod);
    if (lin != nullptr && name.find("attn") != std::string::npos) {
      lin->enable_lora(2, 4.0, gen);
      return *lin;
    }
  }
  throw std::runtime_error("no attn Linear");
}

TEST(Lora, BaseWeightsAreSharedAndUntouchedByAdapterTraining) {
  Generator gen(1);
  Transformer m(llama_tiny(), gen);
  const auto before = base_pointers(m);
  std::map<std::string, std::string> bytes;
  for (const auto& [n, p] : m.named_parameters()) bytes[n] = raw_bytes(p);

  AdapterSet set(m, LoraConfig{}, gen);
  set.add("dreamer", gen);
  set.add("trial", gen);
  EXPECT_EQ(base_pointers(m), before);  // no base tensor was replaced or copied
  // attn.wqkv, attn.wo and the SwiGLU gate/up/down of each of the 2 layers
  EXPECT_EQ(set.layer_names().size(), 10u);
  EXPECT_EQ(set.parameters("trial").size(), 20u);

  // Train "trial" on a sequence: only its tensors move.
  set.enable("trial");
  const std::vector<TrainSequence> rows = {{{1, 2, 3, 4, 5, 6, 7, 8}, 1}};
  const std::vector<Tensor> dreamer_before = set.parameters("dreamer");
  std::vector<std::string> dreamer_bytes;
  for (const Tensor& t : dreamer_before) dreamer_bytes.push_back(raw_bytes(t));
  const std::vector<double> losses =
      train_sft(m, set.parameters("trial"), rows, SftSteps{.steps = 5, .lr = 1e-2}, gen);
  ASSERT_EQ(losses.size(), 5u);
  EXPECT_LT(losses.back(), losses.front());
  set.disable();

  EXPECT_EQ(base_pointers(m), before);
  for (const auto& [n, p] : m.named_parameters()) {
    if (n.find("lora_") == std::string::npos) {
      EXPECT_EQ(raw_bytes(p), bytes[n]) << n;
    }
  }
  for (size_t i = 0; i < dreamer_bytes.size(); ++i) EXPECT_EQ(raw_bytes(set.parameters("dreamer")[i]), dreamer_bytes[i]);
  // The trained adapter's B moved away from 0.
  double b_norm = 0.0;
  for (size_t i = 1; i < set.parameters("trial").size(); i += 2)
    for (double v : set.parameters("trial")[i].to_vector()) b_norm += v * v;
  EXPECT_GT(b_norm, 0.0);
  // Every parameter's requires_grad flag is back: base trainable, the off adapter frozen.
  for (const auto& [n, p] : m.named_parameters()) EXPECT_EQ(p.requires_grad(), n.find("lora_") == std::string::npos) << n;
}

TEST(Lora, DisabledAndFreshAdaptersLeaveOutputsBitwiseUnchanged) {
  for (const TransformerConfig& cfg : {llama_tiny(), gpt2_tiny()}) {
    Generator gen(2);
    Transformer m(cfg, gen);
    const Tensor ids = ids_for(3);
    const Tensor base = logits_of(m, ids);
    LoraConfig lc;
    lc.targets = {"attn", "mlp"};
    AdapterSet set(m, lc, gen);
    EXPECT_TRUE(bitwise_equal(logits_of(m, ids), base)) << "disabled";
    set.add("a", gen);  // B = 0
    set.enable("a");
    EXPECT_TRUE(bitwise_equal(logits_of(m, ids), base)) << "fresh adapter";
    randomize(set.parameters("a")[1], 4);  // one B
    EXPECT_FALSE(bitwise_equal(logits_of(m, ids), base));
    set.disable();
    EXPECT_TRUE(bitwise_equal(logits_of(m, ids), base)) << "disabled again";
  }
}

TEST(Lora, SwappingAdaptersSwapsBehaviour) {
  Generator gen(5);
  Transformer m(llama_tiny(), gen);
  const Tensor ids = ids_for(6);
  AdapterSet set(m, LoraConfig{}, gen);
  set.add("a", gen);
  set.add("b", gen);
  const std::vector<Tensor> pa = set.parameters("a"), pb = set.parameters("b");
  for (size_t i = 1; i < pa.size(); i += 2) {
    randomize(pa[i], 10 + i, 0.3);
    randomize(pb[i], 100 + i, 0.3);
  }
  set.enable("a");
  EXPECT_EQ(set.active(), "a");
  const Tensor la = logits_of(m, ids);
  set.enable("b");
  const Tensor lb = logits_of(m, ids);
  EXPECT_FALSE(bitwise_equal(la, lb));
  set.enable("a");
  EXPECT_TRUE(bitwise_equal(logits_of(m, ids), la));
  // The layers compute with the adapter's own handles, not copies.
  EXPECT_TRUE(set.layer(0).lora_A.same(pa[0]));
  EXPECT_TRUE(set.layer(0).lora_B.same(pa[1]));
  set.disable();
  EXPECT_EQ(set.active(), "");
  EXPECT_FALSE(set.layer(0).lora_A.same(pa[0]));
}

TEST(Lora, MergeFoldsTheDeltaIntoTheBaseAndResets) {
  Generator gen(7);
  Transformer m(gpt2_tiny(), gen, DType::f64);
  const Tensor ids = ids_for(8);
  AdapterSet set(m, LoraConfig{}, gen);
  set.add("a", gen);
  const std::vector<Tensor> pa = set.parameters("a");
  for (size_t i = 1; i < pa.size(); i += 2) randomize(pa[i], 20 + i, 0.2);
  set.enable("a");
  const Tensor adapted = logits_of(m, ids);
  const void* w0 = set.layer(0).weight.data_ptr();
  set.merge("a", gen);
  EXPECT_EQ(set.layer(0).weight.data_ptr(), w0);  // in place
  for (size_t i = 1; i < pa.size(); i += 2)
    for (double v : pa[i].to_vector()) ASSERT_EQ(v, 0.0);  // B reset, so the delta is not counted twice
  EXPECT_LT(rel_error(logits_of(m, ids), adapted), 1e-12);
  set.disable();
  EXPECT_LT(rel_error(logits_of(m, ids), adapted), 1e-12);
}

// A model that has had adapters keeps lora_A/lora_B parameters, which a strict load into a
// plain model refuses; state_dict_without_lora gives the plain architecture's state: no LoRA
// entry, the merged base as it is (bitwise, with the off pair in), an active unmerged adapter
// folded into its weight, a Linear::merge_lora'd layer not counted twice; the model unchanged.
TEST(Lora, StateDictWithoutLoraLoadsIntoAPlainModelAndComputesTheSame) {
  Generator gen(11);
  Transformer m(gpt2_tiny(), gen, DType::f64);
  const Tensor ids = ids_for(12);
  auto plain_from = [&](const NamedTensors& state) {
    Generator g(0);
    auto p = std::make_unique<Transformer>(gpt2_tiny(), g, DType::f64);
    p->load_state_dict(state, /*strict=*/true);
    return p;
  };
  auto set = std::make_unique<AdapterSet>(m, LoraConfig{}, gen);
  set->add("a", gen);
  const std::vector<Tensor> pa = set->parameters("a");
  for (size_t i = 1; i < pa.size(); i += 2) randomize(pa[i], 30 + i, 0.2);
  // 1. An active, unmerged adapter: folded into the weights.
  set->enable("a");
  const Tensor adapted = logits_of(m, ids);
  const NamedTensors full = m.state_dict();
  expect_error([&] { plain_from(full); }, {"lora_A"});  // what a strict load says without the helper
  const NamedTensors folded = state_dict_without_lora(m);
  for (const auto& [name, t] : folded) EXPECT_EQ(name.find("lora_"), std::string::npos) << name;
  EXPECT_EQ(folded.size(), base_pointers(m).size());
  EXPECT_LT(rel_error(logits_of(*plain_from(folded), ids), adapted), 1e-12);
  EXPECT_LT(rel_error(logits_of(m, ids), adapted), 1e-12) << "the model itself is unchanged";
  EXPECT_TRUE(set->layer(0).lora_B.same(pa[1])) << "the adapter stays active";
  // 2. What a Dreamer leaves: the adapter merged into the base, the set gone (off pair in).
  set->merge("a", gen);
  set.reset();
  const Tensor merged = logits_of(m, ids);
  EXPECT_LT(rel_error(merged, adapted), 1e-12);
  const NamedTensors stripped = state_dict_without_lora(m);
  const auto plain = plain_from(stripped);
  EXPECT_TRUE(bitwise_equal(logits_of(*plain, ids), merged));
  for (const auto& [name, t] : plain->state_dict())
    EXPECT_TRUE(bitwise_equal(t, m.parameter(name))) << name << ": the merged base as it is";
  // 3. A layer whose LoRA is merged by Linear::merge_lora: W holds the delta already.
  Generator g2(13);
  Transformer m2(gpt2_tiny(), g2, DType::f64);
  nn::Linear& lin = set_free_layer(m2, g2);
  randomize(lin.lora_B, 40, 0.2);
  lin.merge_lora();
  const Tensor merged2 = logits_of(m2, ids);
  EXPECT_LT(rel_error(logits_of(*plain_from(state_dict_without_lora(m2)), ids), merged2), 1e-12);
  // Without any LoRA the state dict is the model's own.
  Generator g3(14);
  Transformer m3(gpt2_tiny(), g3, DType::f64);
  EXPECT_EQ(state_dict_without_lora(m3).size(), m3.state_dict().size());
}

TEST(Lora, ResetRedrawsAAndZeroesB) {
  Generator gen(9);
  Transformer m(llama_tiny(), gen);
  AdapterSet set(m, LoraConfig{.rank = 2, .alpha = 4.0, .targets = {"attn.wo"}}, gen);
  ASSERT_EQ(set.layer_names().size(), 2u);
  EXPECT_EQ(set.layer_names()[0], "blocks.0.attn.wo");
  set.add("a", gen);
  const std::vector<Tensor> p = set.parameters("a");
  EXPECT_EQ(shape_str(p[0].shape()), "(2, 16)");
  EXPECT_EQ(shape_str(p[1].shape()), "(16, 2)");
  randomize(p[1], 1);
  const std::string a_before = raw_bytes(p[0]);
  set.reset("a", gen);
  EXPECT_NE(raw_bytes(p[0]), a_before);
  for (double v : p[1].to_vector()) EXPECT_EQ(v, 0.0);
  // A ~ N(0, 1/in): the sample std is near 1/4 for in = 16.
  double sq = 0.0;
  const std::vector<double> a = p[0].to_vector();
  for (double v : a) sq += v * v;
  EXPECT_NEAR(std::sqrt(sq / static_cast<double>(a.size())), 0.25, 0.1);
  // A second set on the same model reuses the layers' LoRA (same rank and alpha) ...
  AdapterSet again(m, LoraConfig{.rank = 2, .alpha = 4.0, .targets = {"attn.wo"}}, gen);
  // ... and a different rank is refused.
  expect_error([&] { AdapterSet bad(m, LoraConfig{.rank = 3, .alpha = 4.0, .targets = {"attn.wo"}}, gen); },
               {"blocks.0.attn.wo", "rank 2"});
}

// adapter_state / load_adapter_state: a copy that outlives the set and loads back into the
// adapter of another set on the same model (what a Dreamer carries between episodes).
TEST(Lora, AdapterStateRoundTripsIntoAnotherSetAndRefusesAMismatch) {
  Generator gen(9);
  Transformer m(llama_tiny(), gen);
  const LoraConfig cfg{.rank = 2, .alpha = 4.0, .targets = {"attn"}};
  NamedTensors saved;
  Tensor logits_with;
  const Tensor ids = ids_for(3);
  {
    AdapterSet set(m, cfg, gen);
    set.add("a", gen);
    for (const Tensor& p : set.parameters("a")) randomize(p, 4, 0.1);
    saved = set.adapter_state("a");
    ASSERT_EQ(saved.size(), 2 * set.layer_names().size());
    EXPECT_EQ(saved[0].first, set.layer_names()[0] + ".lora_A");
    EXPECT_EQ(saved[1].first, set.layer_names()[0] + ".lora_B");
    EXPECT_TRUE(bytes_of(set.parameters("a"))[1] == raw_bytes(saved[1].second));
    // A copy: later changes to the adapter do not reach it.
    EXPECT_NE(saved[1].second.data_ptr(), set.parameters("a")[1].data_ptr());
    set.enable("a");
    logits_with = logits_of(m, ids);
    set.disable();
  }
  AdapterSet other(m, cfg, gen);
  other.add("b", gen);
  EXPECT_TRUE(raw_bytes(other.parameters("b")[1]) != raw_bytes(saved[1].second));
  other.load_adapter_state("b", saved);
  std::vector<std::string> want;
  for (const auto& [k, t] : saved) want.push_back(raw_bytes(t));
  EXPECT_TRUE(bytes_of(other.parameters("b")) == want);
  other.enable("b");
  EXPECT_TRUE(bitwise_equal(logits_of(m, ids), logits_with));
  other.disable();

  // Refused, naming the difference, with the adapter left as it was.
  NamedTensors renamed = saved;
  const std::string missing = renamed[2].first;
  renamed[2].first = "blocks.9.attn.wqkv.lora_A";
  expect_error([&] { other.load_adapter_state("b", renamed); }, {"the state has no '" + missing + "'"});
  NamedTensors extra = saved;
  extra.emplace_back("blocks.9.attn.wqkv.lora_A", saved[0].second);
  expect_error([&] { other.load_adapter_state("b", extra); }, {"blocks.9.attn.wqkv.lora_A", "no targeted layer"});
  NamedTensors twice = saved;
  twice.push_back(saved[0]);
  expect_error([&] { other.load_adapter_state("b", twice); }, {"twice"});
  NamedTensors reshaped = saved;
  reshaped.back().second = Tensor::zeros({3, 2});
  expect_error([&] { other.load_adapter_state("b", reshaped); }, {"shape 3x2"});
  expect_error([&] { other.load_adapter_state("b", NamedTensors(saved.begin(), saved.begin() + 2)); },
               {"the state has no"});
  EXPECT_TRUE(bytes_of(other.parameters("b")) == want) << "a refused state changed the adapter";
  // Any order (a checkpoint gives its tensors back sorted by name).
  NamedTensors reversed(saved.rbegin(), saved.rend());
  {
    NoGradGuard no_grad;
    for (const Tensor& p : other.parameters("b")) p.fill_(0.0);
  }
  other.load_adapter_state("b", reversed);
  EXPECT_TRUE(bytes_of(other.parameters("b")) == want);
  AdapterSet narrow(m, LoraConfig{.rank = 2, .alpha = 4.0, .targets = {"attn.wo"}}, gen);
  narrow.add("c", gen);
  expect_error([&] { narrow.load_adapter_state("c", saved); }, {"adapter 'c'"});
}

TEST(Lora, TrainableScopeRestoresFlags) {
  Generator gen(11);
  Transformer m(llama_tiny(), gen);
  Tensor emb = m.wte->weight;
  emb.set_requires_grad(false);  // a frozen parameter stays frozen afterwards
  const Tensor wo = m.blocks->operator[](0).attn->wo->weight;
  {
    const TrainableScope scope(m, {wo});
    for (const auto& [n, p] : m.named_parameters()) EXPECT_EQ(p.requires_grad(), p.same(wo)) << n;
  }
  for (const auto& [n, p] : m.named_parameters()) EXPECT_EQ(p.requires_grad(), !p.same(emb)) << n;
}

TEST(Lora, BadConfigsAndNamesGiveClearErrors) {
  expect_error([] { LoraConfig{.rank = 0}.validate(); }, {"LoraConfig", "'rank'"});
  expect_error([] { LoraConfig{.rank = 2, .alpha = 0.0}.validate(); }, {"'alpha'"});
  expect_error([] { LoraConfig{.rank = 2, .alpha = 1.0, .targets = {}}.validate(); }, {"'targets'"});
  expect_error([] { json{{"rank", 2}, {"ranks", 3}}.get<LoraConfig>(); }, {"unknown key 'ranks'"});
  expect_error([] { json{{"rank", 2.5}}.get<LoraConfig>(); }, {"'rank'", "wrong type"});
  const LoraConfig back = json(LoraConfig{.rank = 3, .alpha = 6.0, .targets = {"mlp"}}).get<LoraConfig>();
  EXPECT_EQ(back.rank, 3);
  EXPECT_EQ(back.targets, std::vector<std::string>{"mlp"});

  Generator gen(12);
  Transformer m(llama_tiny(), gen);
  expect_error([&] { AdapterSet s(m, LoraConfig{.rank = 2, .alpha = 2.0, .targets = {"nothing"}}, gen); },
               {"no Linear layer", "nothing"});
  AdapterSet set(m, LoraConfig{}, gen);
  set.add("a", gen);
  expect_error([&] { set.add("a", gen); }, {"'a' exists"});
  expect_error([&] { set.enable("zzz"); }, {"no adapter named 'zzz'"});
}

// check_adapter_state_fits answers what load_adapter_state would, without building an
// AdapterSet: the model gets no LoRA parameters (somnus sleep asks it before its wake).
TEST(Lora, CheckAdapterStateFitsWithoutTouchingTheModel) {
  Generator gen(10);
  const LoraConfig cfg{.rank = 2, .alpha = 4.0, .targets = {"attn"}};
  NamedTensors saved;
  {
    Transformer donor(llama_tiny(), gen);
    AdapterSet set(donor, cfg, gen);
    set.add("a", gen);
    saved = set.adapter_state("a");
  }
  Transformer m(llama_tiny(), gen);
  const size_t n_params = m.named_parameters().size();
  check_adapter_state_fits(m, cfg, saved);
  check_adapter_state_fits(m, cfg, NamedTensors(saved.rbegin(), saved.rend()));  // any order
  EXPECT_EQ(m.named_parameters().size(), n_params) << "the check attached LoRA to the model";
  for (const auto& [name, p] : m.named_parameters()) EXPECT_EQ(name.find("lora_"), std::string::npos) << name;

  LoraConfig rank3 = cfg;
  rank3.rank = 3;
  expect_error([&] { check_adapter_state_fits(m, rank3, saved); }, {"has shape 2x", "at rank 3"});
  LoraConfig narrow = cfg;
  narrow.targets = {"attn.wo"};
  expect_error([&] { check_adapter_state_fits(m, narrow, saved); }, {"is no layer the config targets"});
  expect_error([&] { check_adapter_state_fits(m, cfg, NamedTensors(saved.begin(), saved.begin() + 2)); }, {"no '"});
  NamedTensors twice = saved;
  twice.push_back(saved[0]);
  expect_error([&] { check_adapter_state_fits(m, cfg, twice); }, {"twice"});
  // Every verdict agrees with load_adapter_state's on a built set.
  AdapterSet built(m, rank3, gen);
  built.add("b", gen);
  expect_error([&] { built.load_adapter_state("b", saved); }, {"has shape 2x"});
}

}  // namespace
}  // namespace somnus::sleep
