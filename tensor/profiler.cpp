// The profiler's recording, CUDA event resolution, table and Chrome trace (see profiler.h).
//
// Each thread keeps a stack of open frames (scopes and the outermost op) and its scope path;
// a frame becomes a Record when it closes and is appended, under one mutex, to the global
// list. reset() bumps a generation number so frames opened before it are dropped on close.
// Host clock: steady_clock in integer nanoseconds since the session's zero, converted to µs
// only on output, so a child's [ts, ts+dur] lies inside its parent's exactly.
#include "tensor/profiler.h"

#include <algorithm>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>

#include "tensor/allocator.h"
#include "tensor/cuda/profile.h"
#include "tensor/format.h"
#include "tensor/tensor.h"

namespace somnus::profiler {

namespace {

using Clock = std::chrono::steady_clock;

// A CUDA op whose device times are still events.
struct PendingEvents {
  size_t record = 0;  // index into Global::done
  int device = 0;
  int start = -1, end = -1;
};

// Per device: the event the device times are measured from, and the host time it was
// recorded at (so device times land on the host timeline, up to the launch latency).
struct DeviceBase {
  int event = -1;
  int64_t host_ns = 0;
};

struct Global {
  std::mutex mu;
  Options options;
  Clock::time_point zero = Clock::now();
  bool zero_set = false;
  uint64_t generation = 0;
  std::vector<Record> done;
  std::vector<PendingEvents> pending;
  std::map<int, DeviceBase> bases;
  std::atomic<int> next_tid{0};
};

Global& global() {
  static auto* g = new Global();  // leaked: guards may close during static destruction
  return *g;
}

struct Frame {
  Record rec;
  int64_t start_ns = 0;
  uint64_t generation = 0;
  bool memory = false;  // a peak window is open on rec.device's allocator
  int64_t alloc0 = 0;
  int64_t window_token = 0;
  int ev_start = -1;
  bool nvtx = false;
};

struct ThreadState {
  int tid = -1;
  std::vector<Frame> frames;
  std::string path;                 // the open scopes, "a/b/c"
  std::vector<size_t> path_length;  // path.size() before each open scope was appended
  int op_depth = 0;
};

ThreadState& thread_state() {
  thread_local ThreadState t;
  if (t.tid < 0) t.tid = global().next_tid.fetch_add(1);
  return t;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - global().zero).count();
}

Options current_options() {
  Global& g = global();
  std::lock_guard<std::mutex> lock(g.mu);
  return g.options;
}

// Opens a frame; the caller has filled f.rec's kind/name/device/shapes/flops.
void open_frame(ThreadState& t, Frame&& f, bool op) {
  const Options opts = current_options();
  Global& g = global();
  {
    std::lock_guard<std::mutex> lock(g.mu);
    f.generation = g.generation;
  }
  f.rec.scope = t.path;
  f.rec.tid = t.tid;
  f.rec.depth = static_cast<int>(t.frames.size());
  if (opts.nvtx && cuda_compiled()) {
    cuda::nvtx_push(f.rec.name.c_str());
    f.nvtx = true;
  }
  if (op) {
    Allocator& a = allocator_for(f.rec.device);
    f.alloc0 = a.stats().allocated_bytes;
    f.window_token = a.push_peak_window();
    f.memory = true;
    if (f.rec.device.is_cuda() && opts.cuda_events) {
      const int dev = f.rec.device.index;
      bool need_base = false;
      {
        std::lock_guard<std::mutex> lock(g.mu);
        need_base = g.bases.find(dev) == g.bases.end();
      }
      if (need_base) {
        const int ev = cuda::profile_event_record(dev);
        const int64_t host = now_ns();
        std::lock_guard<std::mutex> lock(g.mu);
        g.bases[dev] = DeviceBase{ev, host};
      }
      f.ev_start = cuda::profile_event_record(dev);
    }
  }
  t.frames.push_back(std::move(f));
  t.frames.back().start_ns = now_ns();  // last, so the guard's own work is outside the time
}

void close_frame(ThreadState& t) {
  const int64_t end_ns = now_ns();
  Frame f = std::move(t.frames.back());
  t.frames.pop_back();
  int ev_end = -1;
  if (f.ev_start >= 0) ev_end = cuda::profile_event_record(f.rec.device.index);
  if (f.nvtx) cuda::nvtx_pop();
  if (f.memory) {
    Allocator& a = allocator_for(f.rec.device);
    f.rec.peak_bytes = a.pop_peak_window(f.window_token);
    f.rec.alloc_bytes = a.stats().allocated_bytes - f.alloc0;
  }
  f.rec.start_us = static_cast<double>(f.start_ns) * 1e-3;
  f.rec.dur_us = static_cast<double>(end_ns - f.start_ns) * 1e-3;
  Global& g = global();
  std::lock_guard<std::mutex> lock(g.mu);
  if (f.generation != g.generation) return;  // a reset() happened while it was open
  if (f.ev_start >= 0) g.pending.push_back(PendingEvents{g.done.size(), f.rec.device.index, f.ev_start, ev_end});
  g.done.push_back(std::move(f.rec));
}

}  // namespace

// ---------------------------------------------------------------- on/off

void enable(const Options& options) {
  Global& g = global();
  {
    std::lock_guard<std::mutex> lock(g.mu);
    g.options = options;
    if (!g.zero_set) {
      g.zero = Clock::now();
      g.zero_set = true;
    }
  }
  detail::g_enabled.store(true, std::memory_order_relaxed);
}

void disable() { detail::g_enabled.store(false, std::memory_order_relaxed); }

void reset() {
  Global& g = global();
  std::lock_guard<std::mutex> lock(g.mu);
  g.done.clear();
  g.pending.clear();
  g.bases.clear();
  ++g.generation;
  g.zero = Clock::now();
  g.zero_set = true;
  if (cuda_compiled()) cuda::profile_events_clear();
}

// ---------------------------------------------------------------- guards

void Scope::begin(std::string_view name) {
  ThreadState& t = thread_state();
  Frame f;
  f.rec.kind = Kind::scope;
  f.rec.name = std::string(name);
  f.rec.device = Device::cpu();
  open_frame(t, std::move(f), /*op=*/false);
  t.path_length.push_back(t.path.size());
  if (!t.path.empty()) t.path += '/';
  t.path += name;
  active_ = true;
}

void Scope::end() {
  ThreadState& t = thread_state();
  if (!t.path_length.empty()) {
    t.path.resize(t.path_length.back());
    t.path_length.pop_back();
  }
  try {
    close_frame(t);
  } catch (...) {
    // Called from a destructor (possibly while unwinding): a record is not worth terminate().
  }
}

void OpScope::begin(const char* op, std::initializer_list<const Tensor*> inputs, double flops) {
  ThreadState& t = thread_state();
  if (t.op_depth > 0) return;  // an op inside an op: its time belongs to the outer one
  Frame f;
  f.rec.kind = Kind::op;
  f.rec.name = op;
  f.rec.flops = flops;
  bool have_device = false;
  for (const Tensor* x : inputs) {
    if (x == nullptr || !x->defined()) continue;
    if (!have_device) {
      f.rec.device = x->device();
      have_device = true;
    }
    f.rec.input_shapes.emplace_back(x->shape().begin(), x->shape().end());
  }
  if (!have_device) f.rec.device = Device::cpu();
  ++t.op_depth;
  try {
    open_frame(t, std::move(f), /*op=*/true);
  } catch (...) {
    --t.op_depth;
    throw;
  }
  active_ = true;
}

void OpScope::end() {
  ThreadState& t = thread_state();
  --t.op_depth;
  try {
    close_frame(t);
  } catch (...) {
    // As in Scope::end.
  }
}

// ---------------------------------------------------------------- results

std::vector<Record> records() {
  Global& g = global();
  std::lock_guard<std::mutex> lock(g.mu);
  if (!g.pending.empty()) {
    // The pool's last events complete last, so the first elapsed() query waits for the work
    // recorded so far; the others find their events already done.
    for (const PendingEvents& p : g.pending) {
      const DeviceBase& base = g.bases.at(p.device);
      Record& r = g.done[p.record];
      const double from_base_ms = cuda::profile_event_elapsed_ms(p.device, base.event, p.start);
      const double dur_ms = cuda::profile_event_elapsed_ms(p.device, p.start, p.end);
      r.gpu_start_us = static_cast<double>(base.host_ns) * 1e-3 + from_base_ms * 1e3;
      r.gpu_dur_us = dur_ms * 1e3;
    }
    g.pending.clear();
  }
  std::vector<Record> out = g.done;
  std::stable_sort(out.begin(), out.end(), [](const Record& a, const Record& b) {
    if (a.start_us != b.start_us) return a.start_us < b.start_us;
    return a.depth < b.depth;  // a parent starting in the same ns comes first
  });
  return out;
}

std::vector<OpSummary> summarize(const std::vector<Record>& recs, double wall_ms) {
  std::map<std::string, OpSummary> by_op;
  double ops_ms = 0;
  for (const Record& r : recs) {
    if (r.kind != Kind::op) continue;
    OpSummary& s = by_op[r.name];
    s.op = r.name;
    ++s.calls;
    s.total_ms += r.time_us() * 1e-3;
    s.flops += r.flops;
    s.peak_mb = std::max(s.peak_mb, static_cast<double>(r.peak_bytes) / (1024.0 * 1024.0));
    ops_ms += r.time_us() * 1e-3;
  }
  const double denom = wall_ms > 0 ? wall_ms : ops_ms;
  std::vector<OpSummary> rows;
  rows.reserve(by_op.size());
  for (auto& [name, s] : by_op) {
    s.mean_us = s.total_ms * 1e3 / static_cast<double>(s.calls);
    s.percent = denom > 0 ? 100.0 * s.total_ms / denom : 0.0;
    s.gflops_per_s = s.total_ms > 0 && s.flops > 0 ? s.flops / (s.total_ms * 1e-3) * 1e-9 : 0.0;
    rows.push_back(s);
  }
  std::stable_sort(rows.begin(), rows.end(),
                   [](const OpSummary& a, const OpSummary& b) { return a.total_ms > b.total_ms; });
  return rows;
}

std::string format_table(const std::vector<Record>& recs, double wall_ms) {
  const std::vector<OpSummary> rows = summarize(recs, wall_ms);
  size_t width = 2;
  for (const OpSummary& s : rows) width = std::max(width, s.op.size());
  width = std::max<size_t>(width, 9);
  std::string out = fmt::format("{:<{}}  {:>7}  {:>10}  {:>7}  {:>10}  {:>9}  {:>9}\n", "op", width, "calls",
                                "total ms", "% step", "mean µs", "GFLOP/s", "peak MB");
  int64_t calls = 0;
  double total = 0, flops = 0;
  for (const OpSummary& s : rows) {
    const std::string gf = s.gflops_per_s > 0 ? fmt::format("{:.2f}", s.gflops_per_s) : std::string("-");
    out += fmt::format("{:<{}}  {:>7}  {:>10.3f}  {:>7.1f}  {:>10.1f}  {:>9}  {:>9.2f}\n", s.op, width, s.calls,
                       s.total_ms, s.percent, s.mean_us, gf, s.peak_mb);
    calls += s.calls;
    total += s.total_ms;
    flops += s.flops;
  }
  const double denom = wall_ms > 0 ? wall_ms : total;
  const std::string gf = total > 0 && flops > 0 ? fmt::format("{:.2f}", flops / (total * 1e-3) * 1e-9) : "-";
  out += fmt::format("{:<{}}  {:>7}  {:>10.3f}  {:>7.1f}  {:>10}  {:>9}  {:>9}\n", "ops total", width, calls, total,
                     denom > 0 ? 100.0 * total / denom : 0.0, "", gf, "");
  if (wall_ms > 0) out += fmt::format("{:<{}}  {:>7}  {:>10.3f}\n", "wall", width, "", wall_ms);
  return out;
}

std::string format_scope_table(const std::vector<Record>& recs, double wall_ms) {
  struct Row {
    int64_t calls = 0;
    double total_ms = 0;
  };
  std::map<std::string, Row> by_path;
  for (const Record& r : recs) {
    if (r.kind != Kind::scope) continue;
    Row& row = by_path[r.path()];
    ++row.calls;
    row.total_ms += r.dur_us * 1e-3;
  }
  size_t width = 5;
  for (const auto& [path, row] : by_path) width = std::max(width, path.size());
  std::string out = fmt::format("{:<{}}  {:>7}  {:>10}  {:>7}  {:>10}\n", "scope", width, "calls", "total ms", "% step",
                                "mean ms");
  for (const auto& [path, row] : by_path) {
    out += fmt::format("{:<{}}  {:>7}  {:>10.3f}  {:>7.1f}  {:>10.3f}\n", path, width, row.calls, row.total_ms,
                       wall_ms > 0 ? 100.0 * row.total_ms / wall_ms : 0.0,
                       row.total_ms / static_cast<double>(row.calls));
  }
  return out;
}

std::string chrome_trace_json(const std::vector<Record>& recs) {
  using nlohmann::json;
  json events = json::array();
  events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", 0}, {"tid", 0}, {"args", {{"name", "somnus host"}}}});
  bool any_gpu = false;
  for (const Record& r : recs) {
    json args = {{"scope", r.scope}, {"device", r.device.str()}};
    if (r.kind == Kind::op) {
      args["input_shapes"] = r.input_shapes;
      args["alloc_bytes"] = r.alloc_bytes;
      args["peak_bytes"] = r.peak_bytes;
      if (r.flops > 0) args["flops"] = r.flops;
      if (r.gpu_dur_us >= 0) args["gpu_dur_us"] = r.gpu_dur_us;
    }
    const char* cat = r.kind == Kind::op ? "op" : "scope";
    events.push_back({{"name", r.name}, {"cat", cat}, {"ph", "X"}, {"ts", r.start_us}, {"dur", r.dur_us},
                      {"pid", 0}, {"tid", r.tid}, {"args", args}});
    if (r.gpu_dur_us >= 0) {
      any_gpu = true;
      events.push_back({{"name", r.name}, {"cat", "gpu_op"}, {"ph", "X"}, {"ts", r.gpu_start_us},
                        {"dur", r.gpu_dur_us}, {"pid", 1}, {"tid", r.device.index}, {"args", args}});
    }
  }
  if (any_gpu) {
    events.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", 1}, {"tid", 0}, {"args", {{"name", "somnus gpu"}}}});
  }
  json doc = {{"traceEvents", events}, {"displayTimeUnit", "ms"}};
  return doc.dump();
}

void write_chrome_trace(const std::string& path, const std::vector<Record>& recs) {
  const std::string text = chrome_trace_json(recs);
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  SOMNUS_CHECK(f != nullptr, "profiler: cannot open {} for writing", tmp);
  const bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0 &&
                  ::fsync(::fileno(f)) == 0;
  std::fclose(f);
  SOMNUS_CHECK(ok, "profiler: writing {} failed", tmp);
  SOMNUS_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "profiler: cannot rename {} to {}", tmp, path);
}

}  // namespace somnus::profiler
