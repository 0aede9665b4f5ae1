// libFuzzer target: the safetensors loader (nn/safetensors.h). The input is a whole file.
// Loaded files must round-trip: saving the loaded tensors and metadata and loading them
// again gives the same names, dtypes, shapes and bytes.
#include <cstring>

#include "fuzz/fuzz_common.h"
#include "nn/safetensors.h"

using namespace somnus;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = fuzz::scratch_path(".safetensors");
  fuzz::write_scratch(path, fuzz::as_view(data, size));
  SafetensorsFile f;
  try {
    const SafetensorsHeader h = read_safetensors_header(path);
    f = load_safetensors(path);
    SOMNUS_FUZZ_ASSERT(f.tensors.size() == h.entries.size());
  } catch (const Error&) {
    return 0;
  }
  const std::string again = path + ".again";
  save_safetensors(again, f.tensors, f.metadata);
  const SafetensorsFile g = load_safetensors(again);
  SOMNUS_FUZZ_ASSERT(g.tensors.size() == f.tensors.size() && g.metadata == f.metadata);
  for (size_t i = 0; i < f.tensors.size(); ++i) {
    const Tensor& a = f.tensors[i].second;
    const Tensor& b = g.tensors[i].second;
    SOMNUS_FUZZ_ASSERT(f.tensors[i].first == g.tensors[i].first);
    SOMNUS_FUZZ_ASSERT(a.dtype() == b.dtype() && a.shape() == b.shape());
    SOMNUS_FUZZ_ASSERT(a.nbytes() == 0 || std::memcmp(a.data_ptr(), b.data_ptr(), static_cast<size_t>(a.nbytes())) == 0);
  }
  return 0;
}
