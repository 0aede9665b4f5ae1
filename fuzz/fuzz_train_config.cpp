// libFuzzer target: the training config (nn/train_config.h), the way `somnus train` reads it:
// a JSON object merged over the defaults, then `--key value` overrides, then the strict
// parse. Input layout: the config text, then optional NUL-separated command-line arguments
// ("--model.n_layer\0" "4\0" ...). A config that parses must be valid and round-trip.
#include <nlohmann/json.hpp>

#include "fuzz/fuzz_common.h"
#include "nn/train_config.h"

using namespace somnus;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in = fuzz::as_view(data, size);
  const size_t nul = in.find('\0');
  const std::string_view config_text = in.substr(0, nul);
  std::vector<std::string> args;
  if (nul != std::string_view::npos) {
    std::string_view rest = in.substr(nul + 1);
    while (!rest.empty() && args.size() < 16) {
      const size_t cut = rest.find('\0');
      args.emplace_back(rest.substr(0, cut));
      rest = cut == std::string_view::npos ? std::string_view() : rest.substr(cut + 1);
    }
  }
  const nlohmann::json file = nlohmann::json::parse(config_text, nullptr, /*allow_exceptions=*/false);
  if (file.is_discarded() || !file.is_object()) return 0;
  nn::TrainConfig c;
  try {
    nlohmann::json merged = nn::TrainConfig{};
    for (const auto& [k, v] : file.items()) merged[k] = v;
    nn::apply_overrides(merged, nn::parse_override_args(args));
    c = merged.get<nn::TrainConfig>();
  } catch (const Error&) {
    return 0;
  }
  c.validate();
  (void)c.lr_schedule();
  const nlohmann::json out = c;
  SOMNUS_FUZZ_ASSERT(nlohmann::json(out.get<nn::TrainConfig>()) == out);
  return 0;
}
