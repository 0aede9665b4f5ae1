// somnus::Error — the one exception type the library throws on bad input or a failed
// runtime call. Library code never calls exit/abort; it throws with the op name, the
// shapes/dtypes/devices involved, and what was expected.
//
// This header is fmt-free so that CUDA translation units (nvcc cannot compile fmt's
// consteval format strings) can include it; format.h adds the fmt-based helpers.
#pragma once
#include <stdexcept>
#include <string>

namespace somnus {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

[[noreturn]] void throw_error(const std::string& message);

}  // namespace somnus
