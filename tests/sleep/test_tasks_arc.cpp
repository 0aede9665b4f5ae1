// Procedural 1-D ARC families (rules checked by hand, every generated pair re-derived from
// its rule, seeds, held-out splits, the text form) and the real ARC JSON loader (inline
// grids, malformed input, and the 800 files when ../shared/data is found).
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "sleep/tasks/arc1d.h"
#include "sleep/tasks/data_dir.h"
#include "sleep/tasks/metrics.h"
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

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

using Row = std::vector<int>;
Row apply(Arc1dFamily f, Row r, int a = 0, int b = 0) { return apply_arc1d_rule({f, a, b}, r); }

}  // namespace

TEST(Arc1d, RulesByHand) {
  EXPECT_EQ(apply(Arc1dFamily::shift, {0, 3, 3, 0, 5, 0}, 1), (Row{0, 0, 3, 3, 0, 5}));
  EXPECT_EQ(apply(Arc1dFamily::shift, {0, 3, 3, 0, 5, 0}, -1), (Row{3, 3, 0, 5, 0, 0}));
  EXPECT_THROW(apply(Arc1dFamily::shift, {0, 3, 3, 0, 5, 0}, 2), Error);  // 5 would fall off
  EXPECT_EQ(apply(Arc1dFamily::mirror, {1, 2, 0, 0}), (Row{0, 0, 2, 1}));
  EXPECT_EQ(apply(Arc1dFamily::recolour, {4, 0, 4, 2}, 4, 7), (Row{7, 0, 7, 2}));
  EXPECT_EQ(apply(Arc1dFamily::fill, {0, 6, 0, 0, 6, 0, 2, 0, 2, 5, 0}), (Row{0, 6, 6, 6, 6, 0, 2, 2, 2, 5, 0}));
  EXPECT_EQ(apply(Arc1dFamily::fill, {3, 0, 4, 0, 4}), (Row{3, 0, 4, 4, 4}));
  EXPECT_EQ(apply(Arc1dFamily::count, {0, 8, 0, 8, 8, 0}), (Row{8, 8, 8}));
  EXPECT_THROW(apply(Arc1dFamily::count, {0, 8, 1}), Error);
  EXPECT_EQ(apply(Arc1dFamily::gravity, {0, 1, 0, 2, 0}, 1), (Row{0, 0, 0, 1, 2}));
  EXPECT_EQ(apply(Arc1dFamily::gravity, {0, 1, 0, 2, 0}, -1), (Row{1, 2, 0, 0, 0}));
  EXPECT_EQ(apply(Arc1dFamily::scale, {1, 0, 2}, 2), (Row{1, 1, 0, 0, 2, 2}));
  EXPECT_EQ(apply(Arc1dFamily::denoise, {0, 3, 0, 5, 5, 5, 0, 9}), (Row{0, 0, 0, 5, 5, 5, 0, 0}));
  EXPECT_THROW(apply(Arc1dFamily::mirror, {1, 12}), Error);
}

TEST(Arc1d, GeneratedPairsFollowTheirRule) {
  Arc1dOptions opt;
  opt.seed = 11;
  opt.num_demonstrations = 4;
  const auto tasks = make_arc1d_tasks(400, opt);
  std::set<std::string> families;
  for (const auto& t : tasks) {
    ASSERT_TRUE(t.rule.has_value());
    families.insert(t.name);
    EXPECT_EQ(t.name, arc1d_family_name(t.rule->family));
    ASSERT_EQ(t.train.size(), 4u);
    ASSERT_EQ(t.test.size(), 1u);
    for (const auto* pairs : {&t.train, &t.test})
      for (const auto& p : *pairs) {
        ASSERT_EQ(p.input.size(), 1u);
        ASSERT_EQ(p.output.size(), 1u);
        const Row& in = p.input[0];
        EXPECT_GE(in.size(), 3u);
        EXPECT_LE(in.size(), 12u);
        for (int c : in) EXPECT_TRUE(c >= 0 && c <= 9);
        EXPECT_EQ(apply_arc1d_rule(*t.rule, in), p.output[0]) << t.name;
        EXPECT_NE(in, p.output[0]) << t.name << ": a pair must show the rule";
      }
  }
  EXPECT_EQ(families.size(), static_cast<size_t>(kNumArc1dFamilies));
}

TEST(Arc1d, EveryFamilyAtTheLengthLimits) {
  for (const auto& [lo, hi] : {std::pair<int64_t, int64_t>{5, 5}, {30, 30}}) {
    Arc1dOptions opt;
    opt.min_length = lo;
    opt.max_length = hi;
    for (Arc1dFamily f : all_arc1d_families())
      for (uint64_t seed = 0; seed < 20; ++seed) {
        const ArcTask t = make_arc1d_task(f, seed, opt);
        for (const auto& p : t.train) {
          EXPECT_EQ(apply_arc1d_rule(*t.rule, p.input[0]), p.output[0]);
          EXPECT_LE(p.output[0].size(), 30u);
        }
      }
  }
  Arc1dOptions bad;
  bad.min_length = 4;
  EXPECT_THROW(make_arc1d_task(Arc1dFamily::mirror, 0, bad), Error);
}

TEST(Arc1d, SeededAndHeldOut) {
  Arc1dOptions opt;
  opt.seed = 5;
  const auto a = make_arc1d_tasks(20, opt), b = make_arc1d_tasks(20, opt);
  opt.seed = 6;
  const auto c = make_arc1d_tasks(20, opt);
  std::string ta, tb, tc;
  for (size_t i = 0; i < a.size(); ++i) {
    ta += arc_prompt_answer(a[i]).prompt + arc_prompt_answer(a[i]).answer;
    tb += arc_prompt_answer(b[i]).prompt + arc_prompt_answer(b[i]).answer;
    tc += arc_prompt_answer(c[i]).prompt + arc_prompt_answer(c[i]).answer;
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);

  const Arc1dFamilySplit s = split_arc1d_families(3, 1);
  EXPECT_EQ(s.held_out.size(), 3u);
  EXPECT_EQ(s.train.size(), static_cast<size_t>(kNumArc1dFamilies - 3));
  for (auto f : s.held_out) EXPECT_EQ(std::count(s.train.begin(), s.train.end(), f), 0);
  EXPECT_EQ(split_arc1d_families(3, 1).held_out, s.held_out);
  opt.families = s.train;
  for (const auto& t : make_arc1d_tasks(50, opt))
    EXPECT_EQ(std::count(s.held_out.begin(), s.held_out.end(), t.rule->family), 0) << t.name;
  EXPECT_EQ(arc1d_family_from_name("gravity"), Arc1dFamily::gravity);
  EXPECT_NE(error_of([] { arc1d_family_from_name("rotate"); }).find("known: shift"), std::string::npos);
}

TEST(Arc1d, TextForm) {
  ArcTask t;
  t.name = "mirror";
  t.train = {{{{1, 2, 0}}, {{0, 2, 1}}}};
  t.test = {{{{3, 0, 0}}, {{0, 0, 3}}}};
  const auto pa = arc_prompt_answer(t);
  EXPECT_EQ(pa.prompt, "in: 1 2 0\nout: 0 2 1\nin: 3 0 0\nout:");
  EXPECT_EQ(pa.answer, " 0 0 3");
  const ArcGrid g = {{1, 2}, {3, 4}};
  EXPECT_EQ(grid_to_text(g), "1 2\n3 4");
  EXPECT_EQ(parse_grid_text(" 1 2\n3 4\n"), g);
  EXPECT_EQ(parse_grid_text(pa.answer), (ArcGrid{{0, 0, 3}}));
  EXPECT_FALSE(parse_grid_text("1 2\n3").has_value());
  EXPECT_FALSE(parse_grid_text("1 12").has_value());
  EXPECT_FALSE(parse_grid_text("1 x").has_value());
  EXPECT_FALSE(parse_grid_text("  ").has_value());
  EXPECT_THROW(arc_prompt_answer(t, 1), Error);
  EXPECT_TRUE(exact_match(grid_to_text(t.test[0].output), pa.answer));
}

TEST(ArcJson, ParsesAndValidates) {
  const ArcTask t = parse_arc_task(
      R"({"train": [{"input": [[1, 0], [0, 1]], "output": [[2]]}], "test": [{"input": [[5]], "output": [[0, 0, 9]]}]})",
      "inline");
  ASSERT_EQ(t.train.size(), 1u);
  EXPECT_EQ(t.train[0].input, (ArcGrid{{1, 0}, {0, 1}}));
  EXPECT_EQ(t.test[0].output, (ArcGrid{{0, 0, 9}}));
  EXPECT_EQ(arc_prompt_answer(t).prompt, "in: 1 0\n0 1\nout: 2\nin: 5\nout:");

  auto err = [](const std::string& json) { return error_of([&] { parse_arc_task(json, "bad.json"); }); };
  const std::string ok_pair = R"({"input": [[1]], "output": [[1]]})";
  EXPECT_NE(err("{\"train\": [").find("not valid JSON"), std::string::npos);
  EXPECT_NE(err("[]").find("top level"), std::string::npos);
  EXPECT_NE(err("{\"train\": [" + ok_pair + "]}").find("missing field 'test'"), std::string::npos);
  EXPECT_NE(err("{\"train\": [], \"test\": [" + ok_pair + "]}").find("non-empty"), std::string::npos);
  EXPECT_NE(err(R"({"train": [{"input": [[1]]}], "test": [)" + ok_pair + "]}").find("train[0]"), std::string::npos);
  EXPECT_NE(err(R"({"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [)" + ok_pair + "]}")
                .find("rectangular"),
            std::string::npos);
  EXPECT_NE(err(R"({"train": [{"input": [[10]], "output": [[1]]}], "test": [)" + ok_pair + "]}").find("0-9"),
            std::string::npos);
  EXPECT_NE(err(R"({"train": [{"input": [[-1]], "output": [[1]]}], "test": [)" + ok_pair + "]}").find("0-9"),
            std::string::npos);
  EXPECT_NE(err(R"({"train": [{"input": [[1.5]], "output": [[1]]}], "test": [)" + ok_pair + "]}").find("0-9"),
            std::string::npos);
  EXPECT_NE(err(R"({"train": [{"input": [], "output": [[1]]}], "test": [)" + ok_pair + "]}").find("1..30 rows"),
            std::string::npos);
  EXPECT_NE(err(R"({"train": [{"input": [[]], "output": [[1]]}], "test": [)" + ok_pair + "]}").find("row 0"),
            std::string::npos);
  std::string wide = "[[";
  for (int i = 0; i < 31; ++i) wide += i ? ",0" : "0";
  wide += "]]";
  EXPECT_NE(err(R"({"train": [{"input": )" + wide + R"(, "output": [[1]]}], "test": [)" + ok_pair + "]}")
                .find("1..30 colours"),
            std::string::npos);
  EXPECT_THROW(parse_arc_task(std::string("\x00\x01", 2)), Error);
}

TEST(ArcJson, RealFiles) {
  if (!try_find_data_dir(source_candidates()))
    GTEST_SKIP() << "ARC data not found (set SOMNUS_DATA_DIR or run next to ../shared/data)";
  const auto training = load_arc_split("training", source_candidates());
  const auto evaluation = load_arc_split("evaluation", source_candidates());
  EXPECT_EQ(training.size(), 400u);
  EXPECT_EQ(evaluation.size(), 400u);
  EXPECT_EQ(training[0].name, "007bbfb7");  // sorted by file name
  // 007bbfb7: a 3x3 input becomes a 9x9 output.
  EXPECT_EQ(training[0].train[0].input.size(), 3u);
  EXPECT_EQ(training[0].train[0].output.size(), 9u);
  EXPECT_EQ(training[0].train[0].output[0].size(), 9u);
  for (const auto* split : {&training, &evaluation})
    for (const auto& t : *split) {
      EXPECT_FALSE(t.train.empty()) << t.name;
      EXPECT_FALSE(t.test.empty()) << t.name;
    }
  EXPECT_THROW(load_arc_split("validation", source_candidates()), Error);
}
