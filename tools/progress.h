// A one-line progress bar for stderr: "[#####.....] 120/1000 loss 3.214 | 5.1k tok/s | eta 2m03s".
// Redrawn in place with '\r' at most ~10 times a second; disabled (prints nothing) when
// stderr is not a terminal or when the caller turns it off (--quiet), so logs and pipes stay
// clean. log() prints a full line above the bar.
#pragma once
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace somnus::tools {

class ProgressBar {
 public:
  using Clock = std::chrono::steady_clock;

  // Steps run from `start` (a resumed run) to `total`.
  ProgressBar(int64_t start, int64_t total, bool enabled)
      : start_(start), total_(total), enabled_(enabled && ::isatty(::fileno(stderr)) != 0), t0_(Clock::now()) {}
  ~ProgressBar() { finish(); }
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  bool enabled() const { return enabled_; }

  // `done` steps are complete; `status` follows the counter.
  void update(int64_t done, const std::string& status, bool force = false) {
    if (!enabled_) return;
    const auto now = Clock::now();
    if (!force && done < total_ && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    constexpr int kWidth = 24;
    const double frac = total_ > 0 ? static_cast<double>(done) / static_cast<double>(total_) : 1.0;
    const int filled = static_cast<int>(frac * kWidth);
    std::string bar(static_cast<size_t>(filled), '#');
    bar.append(static_cast<size_t>(kWidth - filled), '.');
    const double secs = std::chrono::duration<double>(now - t0_).count();
    std::string eta;
    if (done > start_ && done < total_) {
      const auto left = static_cast<int64_t>(secs / static_cast<double>(done - start_) * static_cast<double>(total_ - done));
      eta = fmt::format(" | eta {}m{:02d}s", left / 60, left % 60);
    }
    fmt::print(stderr, "\r\033[K[{}] {}/{} {}{}", bar, done, total_, status, eta);
    std::fflush(stderr);
    drawn_ = true;
  }

  // A line above the bar (also printed when the bar is disabled, unless `quiet`).
  void log(const std::string& line) {
    if (drawn_) fmt::print(stderr, "\r\033[K");
    fmt::print(stderr, "{}\n", line);
    std::fflush(stderr);
  }

  void finish() {
    if (enabled_ && drawn_) {
      fmt::print(stderr, "\n");
      std::fflush(stderr);
      drawn_ = false;
    }
  }

 private:
  int64_t start_, total_;
  bool enabled_;
  bool drawn_ = false;
  Clock::time_point t0_;
  Clock::time_point last_{};
};

// "5.1k" style counts.
inline std::string human_count(double v) {
  if (v >= 1e9) return fmt::format("{:.1f}G", v / 1e9);
  if (v >= 1e6) return fmt::format("{:.1f}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f}k", v / 1e3);
  return fmt::format("{:.0f}", v);
}

}  // namespace somnus::tools
