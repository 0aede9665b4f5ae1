// libFuzzer target: the model config parser (TransformerConfig from JSON, with presets and
// CMS levels; nn/transformer.h). Text that is not JSON is skipped: nlohmann-json's own parser
// is not under test. A config that parses must be valid and must survive to_json -> from_json
// unchanged.
#include <nlohmann/json.hpp>

#include "fuzz/fuzz_common.h"
#include "nn/transformer.h"

using namespace somnus;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(fuzz::as_view(data, size), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  nn::TransformerConfig c;
  try {
    c = j.get<nn::TransformerConfig>();
  } catch (const Error&) {
    return 0;
  }
  c.validate();  // from_json validated: this must not throw
  const nlohmann::json out = c;
  const nn::TransformerConfig again = out.get<nn::TransformerConfig>();
  SOMNUS_FUZZ_ASSERT(nlohmann::json(again) == out);
  return 0;
}
