// CLINC150 (Larson et al., EMNLP 2019) as class-incremental text-to-intent generation: the
// 10 domains (15 intents each) become 10 tasks learned one after another, in an order drawn
// by a seeded shuffle (PARADIGM §5.1).
//
// Files (../shared/data/clinc150, found through data_dir.h; never copied):
//   data_full.json  {"train": [[text, intent], ...] (15000), "val": (3000), "test": (4500),
//                    "oos_train"/"oos_val"/"oos_test": out-of-scope rows}
//   domains.json    {"banking": ["freeze_account", ...15 intents], ... 10 domains}
// The parse functions take the file's bytes (a fuzzer calls them), check the structure
// before trusting anything, and throw somnus::Error naming the source and what is wrong;
// any byte string gives either a result or that error.
//
// Examples: prompt = query text + separator (" =>" by default), answer = " " + intent label
// (procedural.h's convention: the prompt ends in a cue, the answer starts with a space).
// Out-of-scope rows ("oos") and rows whose intent is in no domain are not part of any task.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "nn/data.h"

namespace somnus::sleep {

struct IntentRow {
  std::string text;
  std::string intent;
};

struct ClincSplits {
  std::vector<IntentRow> train, val, test;
};

struct ClincDomain {
  std::string name;
  std::vector<std::string> intents;
};

struct Clinc150 {
  ClincSplits splits;
  std::vector<ClincDomain> domains;  // sorted by name (the JSON object order of nlohmann::json)
};

// data_full.json: an object with arrays "train", "val" and "test" of [text, intent] string
// pairs (other keys, e.g. oos_*, are checked the same way when they are arrays of rows, and
// otherwise ignored). `source` names the origin in error messages.
ClincSplits parse_clinc150_data(std::string_view json_text, const std::string& source = "<string>");
// domains.json: an object mapping each domain to a non-empty array of distinct intent names;
// no intent may belong to two domains.
std::vector<ClincDomain> parse_clinc150_domains(std::string_view json_text, const std::string& source = "<string>");

// Both files from a clinc150 folder; every domain intent must have train and test rows.
Clinc150 load_clinc150(const std::filesystem::path& clinc_dir);
// From find_data_dir() / "clinc150".
Clinc150 load_clinc150_default(const std::vector<std::string>& extra_data_dir_candidates = {});

struct ClincTaskOptions {
  uint64_t seed = 0;
  // Per intent, keep at most this many training / test examples (a seeded choice; 0 = all:
  // 100 train and 30 test per intent in data_full.json). Small caps make tiny configs.
  int64_t max_train_per_intent = 0;
  int64_t max_test_per_intent = 0;
  // Evaluate on the val split (model selection) instead of test.
  bool eval_on_val = false;
  // Appended to the query text to form the prompt.
  std::string separator = " =>";
};

struct ClincTask {
  std::string domain;
  std::vector<std::string> intents;       // the domain's 15 labels
  std::vector<nn::PromptAnswer> train;    // seeded order
  std::vector<nn::PromptAnswer> test;     // seeded order
};

// The seeded domain order: a permutation of 0..domains-1 (derive_seed(seed, "clinc150/order")).
std::vector<int64_t> clinc150_domain_order(int64_t num_domains, uint64_t seed);
// One task per domain, in clinc150_domain_order(seed).
std::vector<ClincTask> make_clinc150_tasks(const Clinc150& data, const ClincTaskOptions& options = {});

}  // namespace somnus::sleep
