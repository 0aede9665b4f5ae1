// CLINC150 as class-incremental text-to-intent tasks: the parse functions on small inline
// JSON (and their errors on malformed input), the data directory search, and the real file
// when ../shared/data is found (GTEST_SKIP with a message otherwise).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>

#include "sleep/tasks/clinc150.h"
#include "sleep/tasks/data_dir.h"
#include "tensor/error.h"

using namespace somnus;
using namespace somnus::sleep;

namespace {

std::vector<std::string> source_candidates() {
#ifdef SOMNUS_SOURCE_DIR
  return {std::string(SOMNUS_SOURCE_DIR) + "/../shared/data"};
#else
  return {};
#endif
}

// The message of the somnus::Error thrown by f ("" when none is thrown).
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const char* kTinyData = R"({
  "train": [["wake me at 7", "alarm"], ["set an alarm", "alarm"], ["play jazz", "play_music"],
            ["put on some music", "play_music"], ["what's 2 plus 2", "calculator"], ["add 3 and 4", "calculator"]],
  "val": [["alarm for noon", "alarm"], ["some music please", "play_music"], ["divide 8 by 2", "calculator"]],
  "test": [["alarm at 9 please", "alarm"], ["play rock", "play_music"], ["5 times 6", "calculator"]],
  "oos_train": [["what is love", "oos"]]
})";
const char* kTinyDomains = R"({"utility": ["alarm", "calculator"], "media": ["play_music"]})";

Clinc150 tiny() {
  return {parse_clinc150_data(kTinyData), parse_clinc150_domains(kTinyDomains)};
}

}  // namespace

TEST(Clinc150, ParsesInlineJson) {
  const Clinc150 c = tiny();
  ASSERT_EQ(c.splits.train.size(), 6u);
  EXPECT_EQ(c.splits.train[2].text, "play jazz");
  EXPECT_EQ(c.splits.train[2].intent, "play_music");
  EXPECT_EQ(c.splits.val.size(), 3u);
  EXPECT_EQ(c.splits.test.size(), 3u);
  ASSERT_EQ(c.domains.size(), 2u);
  EXPECT_EQ(c.domains[0].name, "media");  // sorted by name
  EXPECT_EQ(c.domains[1].intents, (std::vector<std::string>{"alarm", "calculator"}));
}

TEST(Clinc150, MalformedInputGivesClearErrors) {
  // Data file.
  EXPECT_NE(error_of([] { parse_clinc150_data("{\"train\": [", "f.json"); }).find("not valid JSON"), std::string::npos);
  EXPECT_NE(error_of([] { parse_clinc150_data("[1, 2]"); }).find("top level"), std::string::npos);
  EXPECT_NE(error_of([] { parse_clinc150_data(R"({"train": [], "val": []})"); }).find("missing split 'test'"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_clinc150_data(R"({"train": {}, "val": [], "test": []})"); }).find("'train' must be"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_clinc150_data(R"({"train": [["a"]], "val": [], "test": []})"); }).find("train[0]"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_clinc150_data(R"({"train": [["a", 3]], "val": [], "test": []})"); }).find("train[0]"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_clinc150_data(R"({"train": [], "val": [], "test": [["a", ""]]})"); })
                .find("empty intent"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_clinc150_data(R"({"train": [], "val": [], "test": [], "oos_val": 7})"); })
                .find("oos_val"),
            std::string::npos);
  EXPECT_THROW(parse_clinc150_data(""), Error);
  EXPECT_THROW(parse_clinc150_data(std::string("\0\xff{", 3)), Error);
  // Domains file.
  EXPECT_NE(error_of([] { parse_clinc150_domains("{}"); }).find("no domains"), std::string::npos);
  EXPECT_NE(error_of([] { parse_clinc150_domains(R"({"a": []})"); }).find("non-empty array"), std::string::npos);
  EXPECT_NE(error_of([] { parse_clinc150_domains(R"({"a": ["x", 1]})"); }).find("entry 1"), std::string::npos);
  EXPECT_NE(error_of([] { parse_clinc150_domains(R"({"a": ["x"], "b": ["x"]})"); }).find("again"), std::string::npos);
  EXPECT_THROW(parse_clinc150_domains("\"banking\""), Error);
  // A domain intent with no rows.
  Clinc150 c = tiny();
  c.domains[0].intents.push_back("transfer");
  EXPECT_NE(error_of([&] { make_clinc150_tasks(c); }).find("transfer"), std::string::npos);
}

TEST(Clinc150, TasksFromInlineJson) {
  const Clinc150 c = tiny();
  ClincTaskOptions opt;
  opt.seed = 3;
  const auto tasks = make_clinc150_tasks(c, opt);
  ASSERT_EQ(tasks.size(), 2u);
  std::set<std::string> domains;
  for (const auto& t : tasks) {
    domains.insert(t.domain);
    const std::set<std::string> intents(t.intents.begin(), t.intents.end());
    for (const auto& ex : t.train) {
      ASSERT_EQ(ex.prompt.substr(ex.prompt.size() - 3), " =>");
      ASSERT_EQ(ex.answer[0], ' ');
      EXPECT_TRUE(intents.count(ex.answer.substr(1))) << ex.answer;
      // The example is a row of the file, with its own label.
      bool found = false;
      for (const auto& r : c.splits.train) found |= r.text + " =>" == ex.prompt && " " + r.intent == ex.answer;
      EXPECT_TRUE(found) << ex.prompt;
    }
  }
  EXPECT_EQ(domains, (std::set<std::string>{"media", "utility"}));
  EXPECT_EQ(tasks[0].train.size() + tasks[1].train.size(), 6u);  // the oos row is in no task
  EXPECT_EQ(tasks[0].test.size() + tasks[1].test.size(), 3u);
  opt.max_train_per_intent = 1;
  opt.eval_on_val = true;
  const auto capped = make_clinc150_tasks(c, opt);
  for (const auto& t : capped) {
    EXPECT_EQ(t.train.size(), t.intents.size());
    EXPECT_EQ(t.test.size(), t.intents.size());
    for (const auto& ex : t.test) {
      bool in_val = false;
      for (const auto& r : c.splits.val) in_val |= r.text + " =>" == ex.prompt && " " + r.intent == ex.answer;
      EXPECT_TRUE(in_val) << ex.prompt;
    }
  }
}

TEST(Clinc150, DomainOrderIsASeededPermutation) {
  const auto a = clinc150_domain_order(10, 7), b = clinc150_domain_order(10, 7), c = clinc150_domain_order(10, 8);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(sorted[static_cast<size_t>(i)], i);
}

TEST(DataDir, EnvironmentOverrideAndErrors) {
  const char* old = std::getenv("SOMNUS_DATA_DIR");
  const std::string saved = old ? old : "";
  setenv("SOMNUS_DATA_DIR", "/nonexistent/somnus-data", 1);
  const std::string msg = error_of([] { find_data_dir({"/also/not/here"}); });
  EXPECT_NE(msg.find("/nonexistent/somnus-data"), std::string::npos) << msg;
  EXPECT_NE(msg.find("SOMNUS_DATA_DIR"), std::string::npos) << msg;
  EXPECT_FALSE(try_find_data_dir().has_value());
  unsetenv("SOMNUS_DATA_DIR");
  std::vector<std::string> tried;
  if (!try_find_data_dir({"/also/not/here"}, &tried)) {
    const std::string m = error_of([] { find_data_dir({"/also/not/here"}); });
    EXPECT_NE(m.find("/also/not/here"), std::string::npos) << m;
    EXPECT_NE(m.find("shared/data"), std::string::npos) << m;
  }
  EXPECT_GE(tried.size(), 1u);
  if (old) setenv("SOMNUS_DATA_DIR", saved.c_str(), 1);
  EXPECT_THROW(read_text_file("/nonexistent/somnus-data/x.json"), Error);
}

TEST(Clinc150, RealData) {
  if (!try_find_data_dir(source_candidates()))
    GTEST_SKIP() << "CLINC150 data not found (set SOMNUS_DATA_DIR or run next to ../shared/data)";
  const Clinc150 c = load_clinc150_default(source_candidates());
  EXPECT_EQ(c.splits.train.size(), 15000u);
  EXPECT_EQ(c.splits.val.size(), 3000u);
  EXPECT_EQ(c.splits.test.size(), 4500u);
  ASSERT_EQ(c.domains.size(), 10u);
  std::set<std::string> all_intents;
  for (const auto& d : c.domains) {
    EXPECT_EQ(d.intents.size(), 15u) << d.name;
    all_intents.insert(d.intents.begin(), d.intents.end());
  }
  EXPECT_EQ(all_intents.size(), 150u);

  ClincTaskOptions opt;
  opt.seed = 1;
  const auto full = make_clinc150_tasks(c, opt);
  ASSERT_EQ(full.size(), 10u);
  std::set<std::string> seen_domains;
  for (const auto& t : full) {
    EXPECT_EQ(t.train.size(), 15u * 100u) << t.domain;
    EXPECT_EQ(t.test.size(), 15u * 30u) << t.domain;
    seen_domains.insert(t.domain);
    const std::set<std::string> intents(t.intents.begin(), t.intents.end());
    for (const auto& ex : t.test) EXPECT_TRUE(intents.count(ex.answer.substr(1))) << ex.answer;
  }
  EXPECT_EQ(seen_domains.size(), 10u);

  // Tiny config: caps; same seed -> identical tasks; another seed -> another order.
  opt.max_train_per_intent = 8;
  opt.max_test_per_intent = 4;
  const auto a = make_clinc150_tasks(c, opt), b = make_clinc150_tasks(c, opt);
  opt.seed = 2;
  const auto other = make_clinc150_tasks(c, opt);
  std::vector<std::string> order_a, order_other;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].domain, full[i].domain);  // the cap does not change the order
    EXPECT_EQ(a[i].train.size(), 15u * 8u);
    EXPECT_EQ(a[i].test.size(), 15u * 4u);
    ASSERT_EQ(a[i].train.size(), b[i].train.size());
    for (size_t k = 0; k < a[i].train.size(); ++k) {
      EXPECT_EQ(a[i].train[k].prompt, b[i].train[k].prompt);
      EXPECT_EQ(a[i].train[k].answer, b[i].train[k].answer);
    }
    std::map<std::string, int> per_intent;
    for (const auto& ex : a[i].train) ++per_intent[ex.answer];
    for (const auto& [intent, n] : per_intent) EXPECT_EQ(n, 8) << intent;
    order_a.push_back(a[i].domain);
    order_other.push_back(other[i].domain);
  }
  EXPECT_NE(order_a, order_other);
}
