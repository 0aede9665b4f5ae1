// The profiler (tensor/profiler.h): nothing recorded when off, scopes nest (paths and times),
// only outermost ops count, FLOPs and memory per op, nested allocator peak windows that leave
// peak/reset_peak alone, a Chrome trace that passes a schema check, and a CPU training step
// whose ops add up to at most, and at least 90% of, its wall time.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "kernels/ops.h"
#include "nn/optim.h"
#include "nn/train_config.h"
#include "nn/transformer.h"
#include "tensor/allocator.h"
#include "tensor/profiler.h"
#include "tensor/random.h"
#include "tensor/tensor.h"

namespace somnus {
namespace {

using nlohmann::json;
using profiler::Kind;
using profiler::Record;

Tensor rand_cpu(const Shape& shape, uint64_t seed) {
  Generator gen(seed);
  return randn(shape, gen);
}

std::vector<Record> of_kind(const std::vector<Record>& recs, Kind k) {
  std::vector<Record> out;
  for (const Record& r : recs)
    if (r.kind == k) out.push_back(r);
  return out;
}

const Record& find(const std::vector<Record>& recs, const std::string& name) {
  for (const Record& r : recs)
    if (r.name == name) return r;
  ADD_FAILURE() << "no record named " << name;
  static Record none;
  return none;
}

// [child.start, child.end] lies inside [parent.start, parent.end].
void expect_inside(const Record& child, const Record& parent) {
  EXPECT_GE(child.start_us, parent.start_us) << child.name << " starts before " << parent.name;
  EXPECT_LE(child.start_us + child.dur_us, parent.start_us + parent.dur_us)
      << child.name << " ends after " << parent.name;
}

// A trace schema check: the fields chrome://tracing and Perfetto need, with their types.
void expect_valid_trace(const json& doc) {
  ASSERT_TRUE(doc.is_object());
  ASSERT_TRUE(doc.contains("traceEvents") && doc["traceEvents"].is_array());
  for (const json& e : doc["traceEvents"]) {
    ASSERT_TRUE(e.is_object());
    ASSERT_TRUE(e.contains("name") && e["name"].is_string()) << e.dump();
    ASSERT_TRUE(e.contains("ph") && e["ph"].is_string()) << e.dump();
    ASSERT_TRUE(e.contains("pid") && e["pid"].is_number_integer()) << e.dump();
    ASSERT_TRUE(e.contains("tid") && e["tid"].is_number_integer()) << e.dump();
    const std::string ph = e["ph"];
    ASSERT_TRUE(ph == "X" || ph == "M") << e.dump();
    if (ph == "X") {
      ASSERT_TRUE(e.contains("ts") && e["ts"].is_number()) << e.dump();
      ASSERT_TRUE(e.contains("dur") && e["dur"].is_number()) << e.dump();
      EXPECT_GE(e["ts"].get<double>(), 0.0);
      EXPECT_GE(e["dur"].get<double>(), 0.0);
      ASSERT_TRUE(e.contains("cat") && e["cat"].is_string()) << e.dump();
      if (e.contains("args")) {
        ASSERT_TRUE(e["args"].is_object()) << e.dump();
      }
    } else {
      ASSERT_TRUE(e.contains("args") && e["args"].contains("name")) << e.dump();
    }
  }
}

class ProfilerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    profiler::disable();
    profiler::reset();
  }
  void TearDown() override {
    profiler::disable();
    profiler::reset();
  }
};

TEST_F(ProfilerTest, OffRecordsNothing) {
  const Tensor a = rand_cpu({8, 16}, 1), b = rand_cpu({16, 4}, 2);
  {
    SOMNUS_PROFILE_SCOPE("outer");
    const Tensor c = kernels::matmul(a, b);
    const Tensor d = kernels::softmax(c);
    EXPECT_EQ(d.shape(), Shape({8, 4}));
  }
  EXPECT_TRUE(profiler::records().empty());
  EXPECT_FALSE(profiler::enabled());
  // And a disable() mid-run stops recording.
  profiler::enable();
  { const Tensor c = kernels::matmul(a, b); }
  profiler::disable();
  { const Tensor c = kernels::matmul(a, b); }
  EXPECT_EQ(profiler::records().size(), 1u);
}

TEST_F(ProfilerTest, ScopesNestInPathAndTime) {
  const Tensor a = rand_cpu({32, 64}, 1), b = rand_cpu({64, 48}, 2);
  {
    profiler::Session session;
    SOMNUS_PROFILE_SCOPE("step");
    {
      SOMNUS_PROFILE_SCOPE("fwd");
      {
        const int layer_index = 3;
        SOMNUS_PROFILE_SCOPE([&] { return "layer" + std::to_string(layer_index); });
        const Tensor c = kernels::matmul(a, b);
        const Tensor d = kernels::unary(kernels::Unary::gelu, c);
      }
      const Tensor e = kernels::matmul(a, b);
    }
  }
  EXPECT_FALSE(profiler::enabled());
  const std::vector<Record> recs = profiler::records();
  const std::vector<Record> scopes = of_kind(recs, Kind::scope), ops = of_kind(recs, Kind::op);
  ASSERT_EQ(scopes.size(), 3u);
  ASSERT_EQ(ops.size(), 3u);
  const Record& step = find(recs, "step");
  const Record& fwd = find(recs, "fwd");
  const Record& layer = find(recs, "layer3");
  EXPECT_EQ(step.scope, "");
  EXPECT_EQ(fwd.scope, "step");
  EXPECT_EQ(layer.scope, "step/fwd");
  EXPECT_EQ(layer.path(), "step/fwd/layer3");
  EXPECT_EQ(step.depth, 0);
  EXPECT_EQ(layer.depth, 2);
  // Sorted by start: step, fwd, layer3, matmul, gelu, matmul.
  EXPECT_EQ(recs[0].name, "step");
  EXPECT_EQ(recs[3].name, "matmul");
  EXPECT_EQ(recs[3].scope, "step/fwd/layer3");
  EXPECT_EQ(recs[4].name, "gelu");
  EXPECT_EQ(recs[5].name, "matmul");
  EXPECT_EQ(recs[5].scope, "step/fwd");
  expect_inside(fwd, step);
  expect_inside(layer, fwd);
  expect_inside(recs[3], layer);
  expect_inside(recs[4], layer);
  expect_inside(recs[5], fwd);
  EXPECT_LE(recs[3].start_us + recs[3].dur_us, recs[4].start_us);  // siblings do not overlap
  // Op details: device, input shapes (an undefined bias is skipped), FLOPs = 2·M·N·K.
  EXPECT_EQ(recs[3].device, Device::cpu());
  ASSERT_EQ(recs[3].input_shapes.size(), 2u);
  EXPECT_EQ(recs[3].input_shapes[0], std::vector<int64_t>({32, 64}));
  EXPECT_EQ(recs[3].input_shapes[1], std::vector<int64_t>({64, 48}));
  EXPECT_DOUBLE_EQ(recs[3].flops, 2.0 * 32 * 48 * 64);
  EXPECT_EQ(recs[4].flops, 0.0);
  EXPECT_EQ(recs[3].gpu_dur_us, -1.0);
}

TEST_F(ProfilerTest, OnlyOutermostOpIsRecorded) {
  // sum_to reduces through kernels::reduce: one record, named sum_to.
  const Tensor x = rand_cpu({4, 5, 6}, 3);
  profiler::Session session;
  const Tensor y = kernels::sum_to(x, {5, 1});
  EXPECT_EQ(y.shape(), Shape({5, 1}));
  const std::vector<Record> recs = profiler::records();
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].name, "sum_to");
}

TEST_F(ProfilerTest, MemoryPerOp) {
  Allocator& alloc = cpu_allocator();
  const Tensor a = rand_cpu({64, 32}, 1), b = rand_cpu({32, 128}, 2);
  const int64_t out_bytes = 64 * 128 * 4;
  const int64_t before = alloc.stats().current;
  profiler::Session session;
  const Tensor c = kernels::matmul(a, b);
  const std::vector<Record> recs = profiler::records();
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_GE(recs[0].alloc_bytes, out_bytes);
  EXPECT_GE(recs[0].peak_bytes, before + out_bytes);
  EXPECT_LE(recs[0].peak_bytes, alloc.stats().peak);
}

TEST_F(ProfilerTest, PeakWindowsNestAndLeavePeakAlone) {
  Allocator& alloc = cpu_allocator();
  alloc.reset_peak();
  const int64_t base = alloc.stats().current;
  const int64_t outer = alloc.push_peak_window();
  void* p1 = alloc.allocate(100000);
  const int64_t inner = alloc.push_peak_window();
  void* p2 = alloc.allocate(300000);
  alloc.deallocate(p2, 300000);
  const int64_t inner_peak = alloc.pop_peak_window(inner);
  void* p3 = alloc.allocate(50000);
  alloc.deallocate(p3, 50000);
  alloc.deallocate(p1, 100000);
  const int64_t outer_peak = alloc.pop_peak_window(outer);
  EXPECT_EQ(inner_peak, base + 400000);
  EXPECT_EQ(outer_peak, base + 400000);  // the inner window's high-water mark folds outward
  EXPECT_EQ(alloc.stats().peak, base + 400000);
  // A window opened later starts at the current usage, not at the old high-water mark.
  const int64_t w = alloc.push_peak_window();
  void* p4 = alloc.allocate(1000);
  alloc.deallocate(p4, 1000);
  EXPECT_EQ(alloc.pop_peak_window(w), base + 1000);
  EXPECT_EQ(alloc.stats().peak, base + 400000);  // the allocator's own peak is untouched
}

TEST_F(ProfilerTest, ChromeTracePassesSchemaAndNests) {
  const Tensor a = rand_cpu({16, 16}, 1);
  {
    profiler::Session session;
    SOMNUS_PROFILE_SCOPE("outer");
    SOMNUS_PROFILE_SCOPE("inner");
    const Tensor b = kernels::matmul(a, a);
    const Tensor c = kernels::softmax(b);
  }
  const std::vector<Record> recs = profiler::records();
  const json doc = json::parse(profiler::chrome_trace_json(recs));
  expect_valid_trace(doc);
  std::map<std::string, json> by_name;
  for (const json& e : doc["traceEvents"])
    if (e["ph"] == "X") by_name[e["name"].get<std::string>()] = e;
  ASSERT_EQ(by_name.size(), 4u);
  auto inside = [](const json& c, const json& p) {
    return c["ts"].get<double>() >= p["ts"].get<double>() &&
           c["ts"].get<double>() + c["dur"].get<double>() <= p["ts"].get<double>() + p["dur"].get<double>() &&
           c["tid"] == p["tid"] && c["pid"] == p["pid"];
  };
  EXPECT_TRUE(inside(by_name["inner"], by_name["outer"]));
  EXPECT_TRUE(inside(by_name["matmul"], by_name["inner"]));
  EXPECT_TRUE(inside(by_name["softmax"], by_name["inner"]));
  EXPECT_EQ(by_name["matmul"]["cat"], "op");
  EXPECT_EQ(by_name["matmul"]["args"]["scope"], "outer/inner");
  EXPECT_EQ(by_name["matmul"]["args"]["input_shapes"], json::parse("[[16,16],[16,16]]"));
  EXPECT_DOUBLE_EQ(by_name["matmul"]["args"]["flops"].get<double>(), 2.0 * 16 * 16 * 16);

  // The file written is the same document.
  const std::string path = ::testing::TempDir() + "somnus_profiler_trace.json";
  profiler::write_chrome_trace(path, recs);
  std::ifstream in(path);
  const json from_file = json::parse(in);
  EXPECT_EQ(from_file, doc);
  std::remove(path.c_str());
}

TEST_F(ProfilerTest, TableSumsAndSorts) {
  const Tensor a = rand_cpu({64, 64}, 1);
  profiler::Session session;
  for (int i = 0; i < 3; ++i) {
    const Tensor b = kernels::matmul(a, a);
    const Tensor c = kernels::unary(kernels::Unary::exp, b);
  }
  const std::vector<Record> recs = profiler::records();
  double ops_ms = 0;
  for (const Record& r : recs) ops_ms += r.time_us() * 1e-3;
  const std::vector<profiler::OpSummary> rows = profiler::summarize(recs, 2.0 * ops_ms);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_GE(rows[0].total_ms, rows[1].total_ms);
  double total = 0, pct = 0;
  for (const auto& s : rows) {
    EXPECT_EQ(s.calls, 3);
    total += s.total_ms;
    pct += s.percent;
  }
  EXPECT_NEAR(total, ops_ms, 1e-9);
  EXPECT_NEAR(pct, 50.0, 1e-6);
  const auto& mm = rows[0].op == "matmul" ? rows[0] : rows[1];
  EXPECT_DOUBLE_EQ(mm.flops, 3 * 2.0 * 64 * 64 * 64);
  EXPECT_GT(mm.gflops_per_s, 0.0);
  const std::string table = profiler::format_table(recs, 2.0 * ops_ms);
  EXPECT_NE(table.find("matmul"), std::string::npos);
  EXPECT_NE(table.find("ops total"), std::string::npos);
  EXPECT_NE(table.find("GFLOP/s"), std::string::npos);
}

TEST_F(ProfilerTest, ScopeTableGroupsByPath) {
  {
    profiler::Session session;
    for (int i = 0; i < 2; ++i) {
      SOMNUS_PROFILE_SCOPE("step");
      SOMNUS_PROFILE_SCOPE("fwd");
    }
  }
  const std::string table = profiler::format_scope_table(profiler::records(), 0.0);
  const size_t step = table.find("step "), fwd = table.find("step/fwd ");
  ASSERT_NE(step, std::string::npos) << table;
  ASSERT_NE(fwd, std::string::npos) << table;
  EXPECT_LT(step, fwd);  // the child follows its parent
  EXPECT_NE(table.find("      2  "), std::string::npos) << table;  // two calls each
}

TEST_F(ProfilerTest, ResetDropsRecordsAndOpenScopes) {
  profiler::enable();
  {
    SOMNUS_PROFILE_SCOPE("before_reset");
    profiler::reset();
  }
  { SOMNUS_PROFILE_SCOPE("after_reset"); }
  profiler::disable();
  const std::vector<Record> recs = profiler::records();
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].name, "after_reset");
  EXPECT_EQ(recs[0].scope, "");
}

// A training step of a small Transformer on CPU: the ops it records add up to at most the
// step's wall time (they never overlap) and to at least 90% of it (the step is dominated by
// its ops; what is left is autograd bookkeeping and tensor-level copies).
TEST_F(ProfilerTest, TrainStepOpsAddUpToTheWallTime) {
  Generator gen(0);
  nn::TransformerConfig cfg = nn::TransformerConfig::llama_style(512, 2, 128, 4, 2, 64);
  nn::Transformer model(cfg, gen);
  AdamW opt(nn::transformer_param_groups(model, 1e-3, 0.1));
  const Tensor ids = randint(0, 512, {8, 65}, gen);
  const Tensor x = ids.slice(1, 0, 64).contiguous(), y = ids.slice(1, 1, 65).contiguous();
  auto step = [&] {
    opt.zero_grad();
    const nn::LMLoss loss = model.loss(x, y);
    backward(loss.total(0.0));
    opt.step();
  };
  step();  // warm-up: the caching allocator's blocks, OpenBLAS's buffers
  double best_ratio = 0;
  // Up to 10 steps, stopping at the first that reaches the bound (~0.35 s each): the ctest run
  // that failed with 3 (0.890, 2026-11-27) had the long emulation tests on the other core.
  for (int attempt = 0; attempt < 10 && best_ratio < 0.9; ++attempt) {
    profiler::reset();
    {
      profiler::Session session;
      SOMNUS_PROFILE_SCOPE("train_step");
      step();
    }
    const std::vector<Record> recs = profiler::records();
    const Record& wall = find(recs, "train_step");
    double ops_us = 0;
    std::set<std::string> names;
    for (const Record& r : recs) {
      if (r.kind != Kind::op) continue;
      ops_us += r.time_us();
      names.insert(r.name);
      EXPECT_EQ(r.scope, "train_step");
      expect_inside(r, wall);
    }
    EXPECT_LE(ops_us, wall.dur_us);
    std::string all;
    for (const std::string& n : names) all += n + " ";
    EXPECT_TRUE(names.count("matmul") && names.count("attention_fwd") && names.count("adamw_step")) << all;
    best_ratio = std::max(best_ratio, ops_us / wall.dur_us);
  }
  // The best of up to ten steps: preempted steps on a busy 2-core CI machine must not fail it.
  EXPECT_GE(best_ratio, 0.9);
  std::printf("ops / wall time of a profiled step: %.3f\n", best_ratio);
}

}  // namespace
}  // namespace somnus
