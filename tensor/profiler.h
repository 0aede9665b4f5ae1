// The built-in profiler: per-op wall time, memory and FLOPs inside nested named scopes, so a
// user sees where a training, generation or sleep step spends its time and memory without an
// outside tool, and opens the same view in chrome://tracing, Perfetto or Nsight Systems.
//
//   SOMNUS_PROFILE_SCOPE("student_fwd");          // RAII; nests: "sleep/seeding/student_fwd"
//   profiler::Session session;                    // enable() now, disable() at scope exit
//   ... run steps ...
//   auto recs = profiler::records();              // resolves CUDA events (one sync, here)
//   fmt::print("{}", profiler::format_table(recs, step_wall_ms));
//   profiler::write_chrome_trace("trace.json", recs);
//
// Why it is shaped like this:
//  - Off by default and cheap when off: every guard's constructor does one relaxed atomic
//    load and nothing else (no string, no clock read), so the hooks stay in the hot paths.
//  - Ops are timed where they enter kernels/ops.cpp (OpScope). Only the outermost op on a
//    thread is recorded: an op built from other ops counts once, and op times never overlap,
//    so the ops of a step add up to at most its wall time.
//  - CPU ops: steady_clock around the call. CUDA ops: a pair of events from a pool recorded on
//    the stream, resolved by records() with a single synchronize; no host sync per op.
//  - Memory: bytes handed out by the op's device allocator during the record, and the
//    allocator's high-water mark during the record, through nested peak windows
//    (Allocator::push_peak_window) that never touch the allocator's own peak/reset_peak.
//  - NVTX ranges (CUDA builds) on every scope and op while the profiler is on.
//  - Records from several threads are kept apart by a per-thread id (the trace's tid); the
//    scope path is per thread.
#pragma once
#include <atomic>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "tensor/device.h"

namespace somnus {
class Tensor;
}

namespace somnus::profiler {

namespace detail {
inline std::atomic<bool> g_enabled{false};
}

// The whole cost of a disabled guard.
inline bool enabled() { return detail::g_enabled.load(std::memory_order_relaxed); }

struct Options {
  bool cuda_events = true;  // time CUDA ops with event pairs (else host time around the launch)
  bool nvtx = true;         // NVTX ranges on scopes and ops (CUDA builds only)
};

// enable() starts recording (the clock's zero is the first enable() after a reset());
// disable() stops it, keeping the records; reset() drops every record (scopes still open
// finish normally and are dropped too if they began before it).
void enable(const Options& options = {});
void disable();
void reset();

enum class Kind : uint8_t { scope, op };

struct Record {
  Kind kind = Kind::op;
  std::string name;   // the op ("matmul") or the scope's own name ("student_fwd")
  std::string scope;  // the enclosing scope path ("sleep/seeding/student_fwd"); "" at top level
  Device device;      // op: the device of its first defined input; scope: cpu
  std::vector<std::vector<int64_t>> input_shapes;  // op: one shape per defined input
  int tid = 0;        // small per-thread id, 0 for the first thread that recorded
  int depth = 0;      // number of enclosing scopes/ops on its thread
  double start_us = 0;  // host time since the session's zero
  double dur_us = 0;    // host wall time
  double gpu_start_us = -1;  // CUDA op timed by events: device start since the session's zero
  double gpu_dur_us = -1;    //   and duration; -1 otherwise
  int64_t alloc_bytes = 0;   // bytes allocated on `device` during the record (cumulative, not net)
  int64_t peak_bytes = 0;    // the allocator's high-water mark on `device` during the record
  double flops = 0;          // 0 where the op defines no count

  // The op's time: device time for event-timed CUDA ops, host wall time otherwise.
  double time_us() const { return gpu_dur_us >= 0 ? gpu_dur_us : dur_us; }
  std::string path() const { return scope.empty() ? name : scope + "/" + name; }
};

// Every finished record since the last reset(), ordered by start time. Resolves pending CUDA
// events first (the only synchronize the profiler does).
std::vector<Record> records();

// One row of the table: the op records grouped by op name.
struct OpSummary {
  std::string op;
  int64_t calls = 0;
  double total_ms = 0;
  double mean_us = 0;
  double percent = 0;       // of the wall time given to summarize()
  double flops = 0;         // summed over calls
  double gflops_per_s = 0;  // flops / total time; 0 without a FLOP count
  double peak_mb = 0;       // the highest peak_bytes over the calls, in MiB
};

// Op rows sorted by total time (descending). wall_ms: the time that "% of step" refers to
// (e.g. the measured wall time of the profiled steps); <= 0 uses the sum of the ops.
std::vector<OpSummary> summarize(const std::vector<Record>& recs, double wall_ms);
// The summary as an aligned text table (fmt), with a total line.
std::string format_table(const std::vector<Record>& recs, double wall_ms);
// The scopes grouped by path ("train_step/forward"), in path order so children follow their
// parent: calls, total ms, % of wall_ms, mean ms.
std::string format_scope_table(const std::vector<Record>& recs, double wall_ms);
// Chrome trace event format: complete events ("ph":"X", ts/dur in µs, pid/tid), scopes and
// ops nested by time on the host thread's tid; CUDA ops are also drawn on a "gpu" track
// (pid 1) at their event times. Loads in chrome://tracing and ui.perfetto.dev.
std::string chrome_trace_json(const std::vector<Record>& recs);
void write_chrome_trace(const std::string& path, const std::vector<Record>& recs);

// A named scope: pushes `name` on the thread's scope path for its lifetime.
class Scope {
 public:
  explicit Scope(std::string_view name) {
    if (enabled()) [[unlikely]] begin(name);
  }
  // A name built only while the profiler is on: Scope([&] { return fmt::format("layer{}", i); }).
  template <class MakeName>
    requires std::is_invocable_r_v<std::string, MakeName>
  explicit Scope(MakeName&& make_name) {
    if (enabled()) [[unlikely]] begin(make_name());
  }
  ~Scope() {
    if (active_) [[unlikely]] end();
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  void begin(std::string_view name);
  void end();
  bool active_ = false;
};

// The hook at an op's entry point. `inputs` may hold undefined tensors (skipped); `flops` is
// a number or a callable returning one, called only while the profiler is on.
class OpScope {
 public:
  template <class Flops = double>
  OpScope(const char* op, std::initializer_list<const Tensor*> inputs, Flops&& flops = 0.0) {
    if (enabled()) [[unlikely]] {
      if constexpr (std::is_invocable_v<Flops>) {
        begin(op, inputs, static_cast<double>(flops()));
      } else {
        begin(op, inputs, static_cast<double>(flops));
      }
    }
  }
  ~OpScope() {
    if (active_) [[unlikely]] end();
  }
  OpScope(const OpScope&) = delete;
  OpScope& operator=(const OpScope&) = delete;

 private:
  void begin(const char* op, std::initializer_list<const Tensor*> inputs, double flops);
  void end();
  bool active_ = false;
};

// enable() for its lifetime, after a reset(); records stay readable after it ends.
class Session {
 public:
  explicit Session(const Options& options = {}) {
    reset();
    enable(options);
  }
  ~Session() { disable(); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
};

}  // namespace somnus::profiler

#define SOMNUS_PROFILE_CONCAT_INNER(a, b) a##b
#define SOMNUS_PROFILE_CONCAT(a, b) SOMNUS_PROFILE_CONCAT_INNER(a, b)
// A scope named `name` until the end of the block: a string literal or std::string_view, or a
// callable returning the name (built only while the profiler is on).
#define SOMNUS_PROFILE_SCOPE(name) \
  ::somnus::profiler::Scope SOMNUS_PROFILE_CONCAT(somnus_profile_scope_, __LINE__)(name)
