// fmt-based error helpers for host (.cpp) code.
//   SOMNUS_CHECK(cond, "matmul: inner dims differ: a {} vs b {}", shape_str(a), shape_str(b));
#pragma once
#include <fmt/format.h>
#include <fmt/ranges.h>

#include "tensor/error.h"

namespace somnus {

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw_error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace somnus

#define SOMNUS_CHECK(cond, ...)                     \
  do {                                              \
    if (!(cond)) [[unlikely]] ::somnus::fail(__VA_ARGS__); \
  } while (0)
