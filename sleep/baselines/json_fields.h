// Strict JSON reading for the plain config structs of dreaming and the baselines: unknown
// keys and wrong types are somnus::Error naming the struct and the field.
#pragma once
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "tensor/format.h"

namespace somnus::sleep::detail {

inline void check_known_keys(const nlohmann::json& j, const std::set<std::string>& known, const char* where) {
  SOMNUS_CHECK(j.is_object(), "{}: expected a JSON object, got {}", where, j.type_name());
  for (const auto& [key, value] : j.items()) {
    SOMNUS_CHECK(known.count(key) != 0, "{}: unknown key '{}'", where, key);
  }
}

// Reads j[key] into out when present. Integers must be JSON integers (not 2.5), booleans
// JSON booleans, strings strings; numbers accept integers for doubles.
template <class T>
void read_field(const nlohmann::json& j, const char* key, T& out, const char* where) {
  const auto it = j.find(key);
  if (it == j.end()) return;
  const nlohmann::json& v = *it;
  bool ok = false;
  if constexpr (std::is_same_v<T, bool>) {
    ok = v.is_boolean();
  } else if constexpr (std::is_integral_v<T>) {
    ok = v.is_number_integer() && (std::is_signed_v<T> || !v.is_number_integer() || v.get<int64_t>() >= 0);
  } else if constexpr (std::is_floating_point_v<T>) {
    ok = v.is_number();
  } else if constexpr (std::is_same_v<T, std::string>) {
    ok = v.is_string();
  } else {
    ok = v.is_array();
  }
  SOMNUS_CHECK(ok, "{}: '{}' has the wrong type ({})", where, key, v.type_name());
  try {
    out = v.get<T>();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: '{}': {}", where, key, e.what());
  }
}

}  // namespace somnus::sleep::detail
