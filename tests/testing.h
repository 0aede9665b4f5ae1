// Helpers shared by every test layer: error metrics, raw tensor bytes, and checks on the
// messages of somnus::Error. Layer headers (nn/nn_testing.h, kernels/reference.h) re-export
// what they use from here.
//
//   rel_error(a, b)         = ‖a − b‖ / ‖b‖ (‖b‖ floored at 1e-300, so an all-zero reference
//                             only passes an exact match); +inf when anything is NaN.
//   rel_or_abs_error(a, b)  = ‖a − b‖ / ‖b‖, or the absolute ‖a − b‖ when b is all zeros;
//                             +inf when sizes differ or anything is NaN/inf.
//
// The two metrics are kept apart on purpose: they agree wherever the reference is non-zero
// and finite, and differ only against an all-zero reference.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "tensor/error.h"
#include "tensor/tensor.h"

namespace somnus::testing {

// ‖a − b‖ / ‖b‖ over the values (DESIGN §5); NaN anywhere gives +inf.
inline double rel_error(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-300);
}
inline double rel_error(const Tensor& a, const Tensor& b) {
  EXPECT_EQ(shape_str(a.shape()), shape_str(b.shape()));
  return rel_error(a.to_vector(), b.to_vector());
}

// ‖a − b‖ / ‖b‖, falling back to the absolute ‖a − b‖ when b is all zeros; +inf when the
// sizes differ (also a test failure) or anything is NaN/inf, so NaN can never pass a bound.
inline double rel_or_abs_error(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  if (a.size() != b.size()) return std::numeric_limits<double>::infinity();
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i])) return std::numeric_limits<double>::infinity();
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  const double r = den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
  return std::isnan(r) ? std::numeric_limits<double>::infinity() : r;
}
inline double rel_or_abs_error(const Tensor& a, const std::vector<double>& b) {
  return rel_or_abs_error(a.to_vector(), b);
}

// SOMNUS_TEST_QUICK=1: tools/gpu_check.sh runs the CUDA tests so under compute-sanitizer, where
// every launch is far slower; tests that loop over kernel versions or very large sizes then
// check the default version on their smaller cases only.
inline bool quick_mode() {
  const char* q = std::getenv("SOMNUS_TEST_QUICK");
  return q != nullptr && std::string(q) == "1";
}

// Runs body(value) once per value of the environment variable `name` (nullptr: unset), then
// leaves it unset: the kernels' version switches (SOMNUS_LOSS_CUDA, SOMNUS_ATTN_BWD, ...).
template <class F>
void for_each_env(const char* name, std::initializer_list<const char*> values, F&& body) {
  for (const char* v : values) {
    SCOPED_TRACE(std::string(name) + "=" + (v != nullptr ? v : "(unset)"));
    if (v != nullptr) {
      setenv(name, v, 1);
    } else {
      unsetenv(name);
    }
    body(v);
  }
  unsetenv(name);
}

// The raw bytes of a tensor in its own dtype (copied to a contiguous CPU tensor first), for
// bitwise comparison.
inline std::string raw_bytes(const Tensor& t) {
  const Tensor c = t.cpu().contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.nbytes()));
}

// Runs f, expects somnus::Error, and returns its message. Anything else (another exception,
// or nothing thrown) is a test failure and returns "".
template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected somnus::Error, got another exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected somnus::Error, nothing was thrown";
  return "";
}

inline void expect_contains(const std::string& message, const std::string& part) {
  EXPECT_NE(message.find(part), std::string::npos) << "message: " << message << "\nexpected to contain: " << part;
}

// Runs `fn`, expecting a somnus::Error whose message contains every string in `parts`.
inline void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected somnus::Error containing '" << (parts.empty() ? "" : parts[0]) << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts)
      EXPECT_NE(msg.find(p), std::string::npos) << "message: " << msg << "\nmissing: " << p;
  }
}

}  // namespace somnus::testing
