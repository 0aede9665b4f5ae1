#include "sleep/baselines/method.h"

#include <algorithm>
#include <map>
#include <mutex>

#include "sleep/baselines/baselines.h"
#include "tensor/format.h"

namespace somnus::sleep {

using nlohmann::json;

void LearningEpisode::validate() const {
  SOMNUS_CHECK(!context.empty() || !examples.empty(),
               "LearningEpisode '{}': missing field: needs a 'context' or 'examples' (both are empty)", name);
  for (size_t i = 0; i < examples.size(); ++i) {
    SOMNUS_CHECK(!examples[i].answer.empty(), "LearningEpisode '{}': examples[{}] has an empty 'answer'", name, i);
  }
}

std::vector<TrainSequence> LearningEpisode::sft_rows(int64_t block_size) const {
  validate();
  std::vector<TrainSequence> rows = text_rows(context, block_size);
  for (const Example& ex : examples) {
    TrainSequence row{ex.prompt, std::max<int64_t>(1, static_cast<int64_t>(ex.prompt.size()))};
    row.tokens.insert(row.tokens.end(), ex.answer.begin(), ex.answer.end());
    // Keep the answer when the pair is too long: cut the prompt from the left.
    const auto excess = static_cast<int64_t>(row.tokens.size()) - (block_size + 1);
    if (excess > 0) {
      SOMNUS_CHECK(excess < row.loss_start, "LearningEpisode '{}': an answer of {} tokens does not fit block_size {}",
                   name, ex.answer.size(), block_size);
      row.tokens.erase(row.tokens.begin(), row.tokens.begin() + excess);
      row.loss_start -= excess;
    }
    if (row.tokens.size() >= 2) rows.push_back(std::move(row));
  }
  return rows;
}

double answer_match_reward(const Example& ex, const std::vector<TokenId>& completion) {
  if (completion.size() < ex.answer.size()) return 0.0;
  return std::equal(ex.answer.begin(), ex.answer.end(), completion.begin()) ? 1.0 : 0.0;
}

namespace {

std::map<std::string, MethodFactory>& registry() {
  static std::map<std::string, MethodFactory> r = [] {
    std::map<std::string, MethodFactory> m;
    auto empty_config = [](const json& c, const char* name) {
      SOMNUS_CHECK(c.is_null() || (c.is_object() && c.empty()), "make_method: '{}' takes no config, got {}", name,
                   c.dump());
    };
    m["icl"] = [empty_config](const json& c) -> std::unique_ptr<Method> {
      empty_config(c, "icl");
      return std::make_unique<IclMethod>();
    };
    m["sft"] = [](const json& c) -> std::unique_ptr<Method> {
      return std::make_unique<SftMethod>(c.is_null() ? SftConfig{} : c.get<SftConfig>());
    };
    m["ewc"] = [](const json& c) -> std::unique_ptr<Method> {
      return std::make_unique<EwcMethod>(c.is_null() ? EwcConfig{} : c.get<EwcConfig>());
    };
    m["grpo"] = [](const json& c) -> std::unique_ptr<Method> {
      return std::make_unique<GrpoMethod>(c.is_null() ? GrpoConfig{} : c.get<GrpoConfig>());
    };
    m["opsd"] = [](const json& c) -> std::unique_ptr<Method> {
      return std::make_unique<OpsdMethod>(c.is_null() ? OpsdConfig{} : c.get<OpsdConfig>());
    };
    m["seal"] = [](const json& c) -> std::unique_ptr<Method> {
      if (c.is_null() || (c.is_object() && c.empty())) return std::make_unique<SealMethod>();
      // SEAL's defaults first, the given keys over them.
      json merged = seal_default_config();
      SOMNUS_CHECK(c.is_object(), "make_method: 'seal': expected a JSON object, got {}", c.type_name());
      for (const auto& [k, v] : c.items()) merged[k] = v;
      return std::make_unique<SealMethod>(merged.get<DreamConfig>());
    };
    return m;
  }();
  return r;
}

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}

}  // namespace

std::unique_ptr<Method> make_method(const std::string& name, const json& config) {
  MethodFactory f;
  {
    const std::lock_guard lock(registry_mutex());
    const auto it = registry().find(name);
    if (it != registry().end()) f = it->second;
  }
  SOMNUS_CHECK(static_cast<bool>(f), "make_method: unknown method '{}' (known: {})", name,
               fmt::join(method_names(), ", "));
  try {
    return f(config);
  } catch (const Error& e) {
    fail("make_method: '{}': {}", name, e.what());
  } catch (const json::exception& e) {
    fail("make_method: '{}': {}", name, e.what());
  }
}

std::vector<std::string> method_names() {
  const std::lock_guard lock(registry_mutex());
  std::vector<std::string> names;
  for (const auto& [n, f] : registry()) names.push_back(n);
  return names;
}

void register_method(const std::string& name, MethodFactory factory) {
  SOMNUS_CHECK(!name.empty() && factory, "register_method: needs a name and a factory");
  const std::lock_guard lock(registry_mutex());
  SOMNUS_CHECK(registry().count(name) == 0, "register_method: a method named '{}' exists already", name);
  registry()[name] = std::move(factory);
}

}  // namespace somnus::sleep
