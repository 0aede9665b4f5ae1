// libFuzzer target: the tokenizer file loader (Tokenizer::from_json, what Tokenizer::load
// parses). A tokenizer that loads must encode and decode any bytes losslessly (here: the
// input itself, cut to 512 bytes), special-token-aware encoding must decode to the same
// text, and to_json must reload to an identical tokenizer.
#include "fuzz/fuzz_common.h"
#include "nn/tokenizer.h"

using namespace somnus;
using somnus::nn::Tokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = fuzz::as_view(data, size);
  std::optional<Tokenizer> tok;
  try {
    tok.emplace(Tokenizer::from_json(text, "<fuzz>"));
  } catch (const Error&) {
    return 0;
  }
  const std::string_view sample = text.substr(0, 512);
  const std::vector<nn::TokenId> ids = tok->encode(sample);
  for (nn::TokenId id : ids) SOMNUS_FUZZ_ASSERT(id >= 0 && id < tok->first_special_id());
  SOMNUS_FUZZ_ASSERT(tok->decode(ids) == sample);
  SOMNUS_FUZZ_ASSERT(tok->decode(tok->encode_with_special(sample)) == sample);
  const std::string json = tok->to_json();
  const Tokenizer again = Tokenizer::from_json(json, "<fuzz round trip>");
  SOMNUS_FUZZ_ASSERT(again.to_json() == json);
  SOMNUS_FUZZ_ASSERT(again.encode(sample) == ids);
  return 0;
}
