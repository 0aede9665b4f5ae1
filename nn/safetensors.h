// The safetensors file format (https://github.com/huggingface/safetensors), read and written
// by somnus for weights, optimiser state and checkpoints.
//
// Layout:  [u64 little-endian N] [N bytes of JSON header] [data buffer]
//   header: {"__metadata__": {string: string},            (optional)
//            "<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
//   Offsets are relative to the data buffer; each tensor is row-major, contiguous, little
//   endian. dtypes: F32, F64, BF16, I32, I64 (the somnus dtypes; others are rejected).
//
// Writing (deterministic, so equal inputs give byte-identical files):
//   - tensors from any device and layout are copied to CPU and made contiguous, one at a time;
//   - data order: by element size (largest first), then by name, so every tensor's offset is
//     a multiple of its element size; the header lists "__metadata__" first (when non-empty),
//     then the tensors in data order, each as {"dtype", "shape", "data_offsets"};
//   - the header is padded with spaces to a multiple of 8 bytes, as the reference writer does;
//   - "__metadata__" always holds "somnus.xxh64": the XXH64 of the data buffer as 16 hex digits
//     (a reserved key; other readers see an ordinary metadata string);
//   - the file is written atomically (nn/file_io.h).
//
// Reading validates everything before trusting it and throws somnus::Error naming the file
// (and the tensor, where there is one): file shorter than 8 bytes, header length beyond the
// file or above 100 MB, header not a JSON object, duplicate names, an entry without a known
// dtype / a non-negative integer shape / two offsets, a shape whose byte size differs from
// end - begin, offsets outside the data buffer, and offsets that do not tile the data buffer
// exactly (sorted by begin, each starting where the previous ended, from 0 to its end — the
// reference implementation's rule, which also rules out overlap), and, when the file has a
// "somnus.xxh64" checksum, data that does not hash to it (a corrupt byte inside a tensor).
// Files from other writers have no checksum and get every other check. Truncated or corrupt
// input gives an error, never a crash or garbage. The checksum entry is not returned among
// the metadata.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "tensor/tensor.h"

namespace somnus {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
using SafetensorsMetadata = std::map<std::string, std::string>;

// One validated header entry.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::f32;
  Shape shape;
  uint64_t begin = 0;  // byte offsets into the data buffer
  uint64_t end = 0;
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // sorted by name
  SafetensorsMetadata metadata;           // without the checksum entry
  uint64_t data_start = 0;                // file offset of the data buffer (8 + N)
  bool has_checksum = false;
  uint64_t checksum = 0;                  // XXH64 of the data buffer
  const SafetensorsEntry* find(const std::string& name) const;
};

struct SafetensorsFile {
  NamedTensors tensors;  // CPU, contiguous, sorted by name
  SafetensorsMetadata metadata;
  const Tensor* find(const std::string& name) const;  // nullptr when absent
  const Tensor& at(const std::string& name) const;    // throws naming the tensor when absent
};

// "F32" etc.; dtype_from_safetensors throws on anything else.
const char* safetensors_dtype_name(DType d);

// Throws on undefined tensors, duplicate or reserved ("__metadata__") names, and on the
// reserved metadata key "somnus.xxh64".
void save_safetensors(const std::string& path, const NamedTensors& tensors, const SafetensorsMetadata& metadata = {});

// Reads and validates only the header.
SafetensorsHeader read_safetensors_header(const std::string& path);

SafetensorsFile load_safetensors(const std::string& path);

// Strict load into existing tensors (any device, any layout; values are copied into them):
// throws naming the tensor on a missing key, an unexpected key, a wrong shape or a wrong
// dtype. The whole file is read (onto the host) and verified before anything is copied, so
// a failed load leaves the targets untouched; peak host memory is the size of the file.
// Returns the file's metadata.
SafetensorsMetadata load_into(const std::string& path, const NamedTensors& targets);

}  // namespace somnus
