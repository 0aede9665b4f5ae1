// One interface for every way of learning a new episode (PARADIGM §4): the baselines ICL,
// SFT, EWC, GRPO, OPSD and SEAL, and the lead's Sleep method, so an experiment runner can
// swap any of them in by name (make_method).
//
// An episode carries the new data in whichever forms a method can use: a context (a
// passage, demonstrations), supervised (prompt, answer) token examples, an optional task
// reward on generated answers (GRPO), and an optional scorer τ plus dream template (SEAL).
// Evaluation prompts are eval_prefix(ep) ++ question: ICL puts the context there, every
// other method leaves it empty (the knowledge must be in the weights).
#pragma once
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "nn/tokenizer.h"
#include "nn/transformer.h"
#include "sleep/baselines/training.h"

namespace somnus::sleep {

struct Example {
  std::vector<TokenId> prompt;
  std::vector<TokenId> answer;
};

struct LearningEpisode {
  std::string name = "episode";
  std::vector<TokenId> context;   // new text; may be empty when examples are given
  std::vector<Example> examples;  // supervised pairs; may be empty when a context is given
  // Task reward of a generated completion for an example (GRPO). Unset: 1 when the
  // completion starts with the example's answer, else 0.
  std::function<double(const Example&, const std::vector<TokenId>& completion)> reward;
  // SEAL (dreaming): the task scorer τ and the dream prompt template around the context.
  std::function<double(nn::Transformer&)> score;
  std::vector<TokenId> dream_prefix, dream_suffix, train_prefix;
  std::vector<TokenId> stop_tokens;  // end generated answers / dreams
  // The task's answer field (PARADIGM §2): the answer of a whole sequence, prompt included
  // (a teacher sample or a student's completion of one, during Knowledge Seeding), nullopt
  // when it holds none. Unset: the task has no answer field, and Knowledge Seeding's r_sem is
  // the hidden-state cosine (sleep::ImitationConfig::semantic_reward).
  std::function<std::optional<std::string>(const std::vector<TokenId>& ids)> answer_of;

  // Throws somnus::Error when the episode has neither a context nor examples, or an
  // example has an empty answer.
  void validate() const;
  // The SFT rows of the episode: the context cut into plain-text rows, then each example as
  // prompt ++ answer with the loss on the answer.
  std::vector<TrainSequence> sft_rows(int64_t block_size) const;
};

// 1 when the completion starts with the answer tokens, else 0.
double answer_match_reward(const Example& ex, const std::vector<TokenId>& completion);

class Method {
 public:
  virtual ~Method() = default;
  virtual std::string name() const = 0;
  // Learns the episode (changes the model's weights, or not).
  virtual void learn(nn::Transformer& model, const LearningEpisode& ep) = 0;
  // Tokens to put before every evaluation prompt of this episode.
  virtual std::vector<TokenId> eval_prefix(const LearningEpisode& ep) const {
    (void)ep;
    return {};
  }
  // What the last learn() measured (losses, rewards, ...), for logs.
  const nlohmann::json& last_metrics() const { return metrics_; }

 protected:
  nlohmann::json metrics_ = nlohmann::json::object();
};

// "icl", "sft", "ewc", "grpo", "opsd", "seal"; config: the method's config as JSON (null or
// {} for defaults; strict keys). Unknown names are a somnus::Error listing the known ones.
std::unique_ptr<Method> make_method(const std::string& name, const nlohmann::json& config = nlohmann::json::object());
std::vector<std::string> method_names();

// Adds a method to make_method (e.g. the lead's "sleep"). Throws if the name is taken.
using MethodFactory = std::function<std::unique_ptr<Method>(const nlohmann::json& config)>;
void register_method(const std::string& name, MethodFactory factory);

}  // namespace somnus::sleep
