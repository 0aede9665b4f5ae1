// Strict config JSON (see config_json.h).
#include "sleep/config_json.h"

#include <climits>
#include <cstdint>

#include "tensor/format.h"

namespace somnus::sleep {

namespace {

const char* kind_of(const nlohmann::json& v) {
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_unsigned()) return "a non-negative integer";
  if (v.is_number_integer()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

bool same_kind(const nlohmann::json& value, const nlohmann::json& def) {
  if (def.is_number_float()) return value.is_number();
  // An unsigned field (a seed): a negative value would wrap to 2^64 − n on reading.
  if (def.is_number_unsigned()) return value.is_number_unsigned() || (value.is_number_integer() && value.get<int64_t>() >= 0);
  if (def.is_number_integer()) return value.is_number_integer();
  if (def.is_null()) return true;  // optional field without a default
  return value.type() == def.type();
}

}  // namespace

void check_config_keys(const nlohmann::json& in, const nlohmann::json& defaults, const std::string& where) {
  SOMNUS_CHECK(in.is_object(), "{}: expected a JSON object, got {}", where, kind_of(in));
  for (auto it = in.begin(); it != in.end(); ++it) {
    auto d = defaults.find(it.key());
    SOMNUS_CHECK(d != defaults.end(), "{}: unknown key '{}'", where, it.key());
    SOMNUS_CHECK(same_kind(*it, *d), "{}: '{}' must be {}, got {}", where, it.key(), kind_of(*d), it->dump());
    // A list whose default has elements: every element must be of their kind (e.g. a list of
    // level indices), or reading it fails later with a message that names no key.
    if (d->is_array() && !d->empty() && !d->front().is_array() && !d->front().is_object()) {
      for (const nlohmann::json& e : *it)
        SOMNUS_CHECK(same_kind(e, d->front()), "{}: '{}' must be a list of elements each {}, got {}", where,
                     it.key(), kind_of(d->front()), it->dump());
    }
    if (d->is_object() && !d->empty()) check_config_keys(*it, *d, where + "." + it.key());
  }
}

nlohmann::json merge_config(const nlohmann::json& in, const nlohmann::json& defaults, const std::string& where) {
  check_config_keys(in, defaults, where);
  nlohmann::json out = defaults;
  for (auto it = in.begin(); it != in.end(); ++it) {
    const auto& d = defaults.at(it.key());
    out[it.key()] = (d.is_object() && !d.empty()) ? merge_config(*it, d, where + "." + it.key()) : *it;
  }
  return out;
}

std::vector<nn::TokenId> token_ids_from_json(const nlohmann::json& v, const std::string& where, const std::string& key) {
  SOMNUS_CHECK(v.is_array(), "{}: '{}' must be a list of token ids, got {}", where, key, v.dump());
  std::vector<nn::TokenId> out;
  for (const nlohmann::json& t : v) {
    SOMNUS_CHECK(t.is_number_integer() && t.get<int64_t>() >= 0 && t.get<int64_t>() <= INT32_MAX,
                 "{}: '{}' must be a list of token ids, got {}", where, key, v.dump());
    out.push_back(static_cast<nn::TokenId>(t.get<int64_t>()));
  }
  return out;
}

void set_config_key(nlohmann::json& j, const std::string& dotted_key, const std::string& value) {
  nlohmann::json* cur = &j;
  size_t start = 0;
  for (;;) {
    const size_t dot = dotted_key.find('.', start);
    const std::string part = dotted_key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    SOMNUS_CHECK(!part.empty(), "config: bad key '{}' (empty component)", dotted_key);
    if (dot == std::string::npos) {
      nlohmann::json v = nlohmann::json::parse(value, nullptr, /*allow_exceptions=*/false);
      (*cur)[part] = v.is_discarded() ? nlohmann::json(value) : v;
      return;
    }
    if (!cur->contains(part) || !(*cur)[part].is_object()) (*cur)[part] = nlohmann::json::object();
    cur = &(*cur)[part];
    start = dot + 1;
  }
}

}  // namespace somnus::sleep
