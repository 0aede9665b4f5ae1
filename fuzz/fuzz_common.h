// Shared pieces of the libFuzzer targets (fuzz/fuzz_*.cpp).
//
// A target feeds its bytes to a loader and accepts exactly one outcome besides success:
// somnus::Error (DESIGN.md §4: bad input gives a clear error). Anything else — another
// exception type escaping, a crash, a sanitizer report, a leak, a hang — is a finding, so
// other exceptions are left to std::terminate, which libFuzzer reports as a crash.
// Loaders that only read from a path get the bytes through a per-process temporary file.
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "tensor/format.h"

namespace somnus::fuzz {

inline std::string_view as_view(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// A file under $TMPDIR (default /tmp) that holds the current input; rewritten per input,
// removed at exit (with a ".again" sibling a target may write).
inline char scratch_at_exit[1024];
inline void remove_scratch() {
  std::remove(scratch_at_exit);
  std::remove((std::string(scratch_at_exit) + ".again").c_str());
}
inline const std::string& scratch_path(const char* suffix) {
  static const std::string path = [suffix] {
    const char* tmp = std::getenv("TMPDIR");
    std::string p = std::string(tmp && *tmp ? tmp : "/tmp") + "/somnus_fuzz_" + std::to_string(::getpid()) + suffix;
    if (p.size() >= sizeof scratch_at_exit) std::abort();
    std::snprintf(scratch_at_exit, sizeof scratch_at_exit, "%s", p.c_str());
    std::atexit(remove_scratch);
    return p;
  }();
  return path;
}

inline void write_scratch(const std::string& path, std::string_view bytes) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) std::abort();  // the harness itself is broken
  if (!bytes.empty() && std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size()) std::abort();
  std::fclose(f);
}

// A property the target checks on input that loaded: its failure is a finding.
#define SOMNUS_FUZZ_ASSERT(cond)                                                        \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "fuzz property failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

}  // namespace somnus::fuzz
