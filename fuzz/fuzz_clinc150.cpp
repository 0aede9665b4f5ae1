// libFuzzer target: the CLINC150 parsers (sleep/tasks/clinc150.h), fed the bytes of either
// file: data_full.json (parse_clinc150_data) and domains.json (parse_clinc150_domains).
// Parsed domains must hold distinct, non-empty intent lists.
#include <set>

#include "fuzz/fuzz_common.h"
#include "sleep/tasks/clinc150.h"

using namespace somnus;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = fuzz::as_view(data, size);
  try {
    const sleep::ClincSplits s = sleep::parse_clinc150_data(text, "<fuzz>");
    (void)s;
  } catch (const Error&) {
  }
  try {
    const std::vector<sleep::ClincDomain> d = sleep::parse_clinc150_domains(text, "<fuzz>");
    std::set<std::string> seen;
    for (const sleep::ClincDomain& dom : d) {
      SOMNUS_FUZZ_ASSERT(!dom.intents.empty());
      for (const std::string& intent : dom.intents) SOMNUS_FUZZ_ASSERT(seen.insert(intent).second);
    }
  } catch (const Error&) {
  }
  return 0;
}
