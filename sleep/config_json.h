// Strict JSON for the sleep layer's plain config structs: every struct writes its defaults
// with to_json, and from_json first checks the input against them, so that an unknown key or
// a value of the wrong kind is an error naming the key (a typo in an experiment config must
// not silently fall back to a default).
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nn/tokenizer.h"

namespace somnus::sleep {

// Throws somnus::Error "<where>: unknown key 'k'" / "<where>: 'k' must be <kind>, got <value>"
// unless `in` is an object whose keys all appear in `defaults` with values of the same kind
// (numbers interchange between integer and float only where the default is a float; nested
// objects are checked recursively).
void check_config_keys(const nlohmann::json& in, const nlohmann::json& defaults, const std::string& where);

// check_config_keys, then `defaults` updated by `in` (nested objects merged key by key).
nlohmann::json merge_config(const nlohmann::json& in, const nlohmann::json& defaults, const std::string& where);

// `--set a.b.c=value`: sets j["a"]["b"]["c"], creating objects on the way; the value is
// parsed as JSON when it is JSON (3, 0.5, true, [0,1], {"k": 1}) and taken as a string otherwise.
void set_config_key(nlohmann::json& j, const std::string& dotted_key, const std::string& value);

// A list of token ids (non-negative integers that fit a TokenId), e.g. stop tokens; throws
// "<where>: '<key>' must be a list of token ids, got <value>".
std::vector<nn::TokenId> token_ids_from_json(const nlohmann::json& v, const std::string& where, const std::string& key);

}  // namespace somnus::sleep
