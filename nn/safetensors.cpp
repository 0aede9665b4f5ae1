#include "nn/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "nn/file_io.h"
#include "tensor/format.h"

namespace somnus {

static_assert(std::endian::native == std::endian::little,
              "safetensors I/O copies raw little-endian bytes; a big-endian host needs byte swapping");

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit
constexpr const char* kMetadataKey = "__metadata__";
constexpr const char* kChecksumKey = "somnus.xxh64";
constexpr const char* kChecksumPlaceholder = "0000000000000000";  // 16 hex digits, overwritten

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }

bool parse_hex64(const std::string& s, uint64_t& out) {
  if (s.size() != 16) return false;
  out = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return false;
    out = (out << 4) | static_cast<uint64_t>(d);
  }
  return true;
}

bool dtype_from_name(const std::string& s, DType& out) {
  if (s == "F32") out = DType::f32;
  else if (s == "F64") out = DType::f64;
  else if (s == "BF16") out = DType::bf16;
  else if (s == "I32") out = DType::i32;
  else if (s == "I64") out = DType::i64;
  else return false;
  return true;
}

// A read-only file descriptor that closes itself.
class InputFile {
 public:
  explicit InputFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    SOMNUS_CHECK(fd_ >= 0, "safetensors: {}: cannot open: {}", path, std::strerror(errno));
    struct stat st {};
    const bool ok = ::fstat(fd_, &st) == 0;
    if (!ok || !S_ISREG(st.st_mode)) {
      ::close(fd_);  // the destructor does not run for a throwing constructor
      fail("safetensors: {}: not a readable regular file", path);
    }
    size_ = static_cast<uint64_t>(st.st_size);
  }
  ~InputFile() { ::close(fd_); }
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;

  uint64_t size() const { return size_; }
  // Reads exactly n bytes at `offset`; `what` names the piece for the error.
  void read_at(uint64_t offset, void* dst, uint64_t n, const std::string& what) const {
    char* p = static_cast<char*>(dst);
    uint64_t got = 0;
    while (got < n) {
      const ssize_t r = ::pread(fd_, p + got, static_cast<size_t>(std::min<uint64_t>(n - got, 1u << 30)),
                                static_cast<off_t>(offset + got));
      if (r < 0 && errno == EINTR) continue;
      SOMNUS_CHECK(r > 0, "safetensors: {}: {}: read {} of {} bytes at offset {}{}", path_, what, got, n, offset,
                   r < 0 ? std::string(": ") + std::strerror(errno) : std::string(" (file truncated)"));
      got += static_cast<uint64_t>(r);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

std::string json_type(const nlohmann::json& j) { return j.type_name(); }

SafetensorsEntry parse_entry(const std::string& path, const std::string& name, const nlohmann::json& j,
                             uint64_t buffer_size) {
  SafetensorsEntry e;
  e.name = name;
  SOMNUS_CHECK(j.is_object(), "safetensors: {}: tensor '{}': header entry must be an object, got {}", path, name,
               json_type(j));
  // dtype
  auto it = j.find("dtype");
  SOMNUS_CHECK(it != j.end() && it->is_string(), "safetensors: {}: tensor '{}': missing or non-string \"dtype\"",
               path, name);
  const std::string dt = it->get<std::string>();
  SOMNUS_CHECK(dtype_from_name(dt, e.dtype),
               "safetensors: {}: tensor '{}': unsupported dtype '{}' (expected F32, F64, BF16, I32 or I64)", path,
               name, dt);
  // shape, with an overflow-checked byte size
  it = j.find("shape");
  SOMNUS_CHECK(it != j.end() && it->is_array(), "safetensors: {}: tensor '{}': missing or non-array \"shape\"", path,
               name);
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& d : *it) {
    SOMNUS_CHECK(d.is_number_unsigned(), "safetensors: {}: tensor '{}': shape entries must be non-negative integers, got {}",
                 path, name, d.dump());
    const uint64_t v = d.get<uint64_t>();
    SOMNUS_CHECK(v <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
                 "safetensors: {}: tensor '{}': shape entry {} is too large", path, name, v);
    e.shape.push_back(static_cast<int64_t>(v));
    if (__builtin_mul_overflow(numel, v, &numel)) overflow = true;
  }
  // A zero dim makes the element count 0 however large the others are, but the strides of
  // the tensor (products of the other dims) must still fit in int64.
  if (std::find(e.shape.begin(), e.shape.end(), 0) != e.shape.end()) {
    numel = 0;
    int64_t span = 1;
    overflow = false;
    for (int64_t d : e.shape) overflow = overflow || __builtin_mul_overflow(span, std::max<int64_t>(d, 1), &span);
  }
  uint64_t nbytes = 0;
  if (!overflow && __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(e.dtype)), &nbytes)) {
    overflow = true;
  }
  SOMNUS_CHECK(!overflow && nbytes <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
               "safetensors: {}: tensor '{}': shape {} is too large", path, name, shape_str(e.shape));
  // offsets
  it = j.find("data_offsets");
  SOMNUS_CHECK(it != j.end() && it->is_array() && it->size() == 2 && (*it)[0].is_number_unsigned() &&
                   (*it)[1].is_number_unsigned(),
               "safetensors: {}: tensor '{}': \"data_offsets\" must be two non-negative integers, got {}", path, name,
               it == j.end() ? std::string("nothing") : it->dump());
  e.begin = (*it)[0].get<uint64_t>();
  e.end = (*it)[1].get<uint64_t>();
  SOMNUS_CHECK(e.begin <= e.end, "safetensors: {}: tensor '{}': data_offsets [{}, {}] end before they begin", path,
               name, e.begin, e.end);
  SOMNUS_CHECK(e.end <= buffer_size,
               "safetensors: {}: tensor '{}': data_offsets [{}, {}] lie outside the data buffer of {} bytes "
               "(file truncated?)",
               path, name, e.begin, e.end, buffer_size);
  SOMNUS_CHECK(e.end - e.begin == nbytes,
               "safetensors: {}: tensor '{}': dtype {} and shape {} need {} bytes but data_offsets [{}, {}] hold {}",
               path, name, dt, shape_str(e.shape), nbytes, e.begin, e.end, e.end - e.begin);
  return e;
}

SafetensorsHeader parse_header(const std::string& path, const InputFile& file) {
  const uint64_t size = file.size();
  SOMNUS_CHECK(size >= 8, "safetensors: {}: file is {} bytes, too short for the 8-byte header length", path, size);
  unsigned char len_bytes[8];
  file.read_at(0, len_bytes, 8, "header length");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | len_bytes[i];
  SOMNUS_CHECK(n <= kMaxHeaderBytes, "safetensors: {}: header length {} exceeds the {} byte limit (corrupt file?)",
               path, n, kMaxHeaderBytes);
  SOMNUS_CHECK(n <= size - 8, "safetensors: {}: header length {} exceeds the {} bytes after the length field "
               "(file truncated?)", path, n, size - 8);
  SOMNUS_CHECK(n > 0, "safetensors: {}: empty header", path);
  std::string text(static_cast<size_t>(n), '\0');
  file.read_at(8, text.data(), n, "header");

  // Top-level keys are checked for duplicates while parsing: a JSON object would keep only one.
  std::set<std::string> seen;
  std::string duplicate;
  nlohmann::json::parser_callback_t on_event = [&](int depth, nlohmann::json::parse_event_t ev,
                                                   nlohmann::json& parsed) {
    if (ev == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      const auto& k = parsed.get_ref<const std::string&>();
      if (!seen.insert(k).second && duplicate.empty()) duplicate = k;
    }
    return true;
  };
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.begin(), text.end(), on_event, /*allow_exceptions=*/false);
  } catch (const nlohmann::json::exception& ex) {
    fail("safetensors: {}: header is not valid JSON: {}", path, ex.what());
  }
  SOMNUS_CHECK(!j.is_discarded(), "safetensors: {}: header ({} bytes) is not valid JSON", path, n);
  SOMNUS_CHECK(j.is_object(), "safetensors: {}: header must be a JSON object, got {}", path, json_type(j));
  SOMNUS_CHECK(duplicate.empty(), "safetensors: {}: tensor '{}' appears more than once in the header", path,
               duplicate);

  SafetensorsHeader h;
  h.data_start = 8 + n;
  const uint64_t buffer_size = size - h.data_start;
  for (const auto& [key, value] : j.items()) {
    if (key == kMetadataKey) {
      SOMNUS_CHECK(value.is_object(), "safetensors: {}: \"__metadata__\" must be an object of strings, got {}", path,
                   json_type(value));
      for (const auto& [mk, mv] : value.items()) {
        SOMNUS_CHECK(mv.is_string(), "safetensors: {}: \"__metadata__\" value for '{}' must be a string, got {}",
                     path, mk, json_type(mv));
        if (mk == kChecksumKey) {
          SOMNUS_CHECK(parse_hex64(mv.get<std::string>(), h.checksum),
                       "safetensors: {}: \"{}\" must be 16 lowercase hex digits, got '{}'", path, kChecksumKey,
                       mv.get<std::string>());
          h.has_checksum = true;
          continue;
        }
        h.metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    h.entries.push_back(parse_entry(path, key, value, buffer_size));
  }

  // The data buffer must be tiled exactly: sorted by begin, no gap, no overlap, nothing left over.
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : h.entries) by_offset.push_back(&e);
  std::stable_sort(by_offset.begin(), by_offset.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t expected = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const SafetensorsEntry* e : by_offset) {
    if (e->begin < expected) {
      fail("safetensors: {}: tensor '{}' data_offsets [{}, {}] overlap tensor '{}' [{}, {}]", path, e->name, e->begin,
           e->end, prev->name, prev->begin, prev->end);
    }
    if (e->begin > expected) {
      fail("safetensors: {}: tensor '{}' data_offsets [{}, {}] leave a gap after byte {}{}", path, e->name, e->begin,
           e->end, expected, prev ? " (end of tensor '" + prev->name + "')" : std::string());
    }
    expected = e->end;
    prev = e;
  }
  SOMNUS_CHECK(expected == buffer_size,
               "safetensors: {}: tensors cover {} bytes of the {} byte data buffer (trailing bytes or a truncated "
               "header?)",
               path, expected, buffer_size);
  return h;
}

// Reads the data of every entry (indexed as h.entries) into CPU tensors, in file order so
// that the checksum streams, and verifies the checksum when the file carries one.
std::vector<Tensor> read_all(const std::string& path, const InputFile& file, const SafetensorsHeader& h) {
  std::vector<size_t> order(h.entries.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return h.entries[a].begin < h.entries[b].begin; });
  std::vector<Tensor> out(h.entries.size());
  Xxh64 hash;
  for (size_t i : order) {
    const SafetensorsEntry& e = h.entries[i];
    Tensor t = Tensor::empty(e.shape, e.dtype, Device::cpu());
    if (e.end > e.begin) {
      file.read_at(h.data_start + e.begin, t.data_ptr(), e.end - e.begin, "tensor '" + e.name + "'");
      hash.update(t.data_ptr(), static_cast<size_t>(e.end - e.begin));
    }
    out[i] = std::move(t);
  }
  if (h.has_checksum) {
    const uint64_t got = hash.digest();
    SOMNUS_CHECK(got == h.checksum,
                 "safetensors: {}: data checksum mismatch (the header says xxh64 {}, the data hashes to {}): the file "
                 "is corrupt",
                 path, hex64(h.checksum), hex64(got));
  }
  return out;
}

void sort_by_name(SafetensorsHeader& h) {
  std::sort(h.entries.begin(), h.entries.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return a.name < b.name; });
}

}  // namespace

const char* safetensors_dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::bf16: return "BF16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
  }
  return "?";
}

const SafetensorsEntry* SafetensorsHeader::find(const std::string& name) const {
  auto it = std::lower_bound(entries.begin(), entries.end(), name,
                             [](const SafetensorsEntry& e, const std::string& n) { return e.name < n; });
  return it != entries.end() && it->name == name ? &*it : nullptr;
}

const Tensor* SafetensorsFile::find(const std::string& name) const {
  auto it = std::lower_bound(tensors.begin(), tensors.end(), name,
                             [](const std::pair<std::string, Tensor>& e, const std::string& n) { return e.first < n; });
  return it != tensors.end() && it->first == name ? &it->second : nullptr;
}

const Tensor& SafetensorsFile::at(const std::string& name) const {
  const Tensor* t = find(name);
  SOMNUS_CHECK(t != nullptr, "safetensors: no tensor named '{}' in the file", name);
  return *t;
}

void save_safetensors(const std::string& path, const NamedTensors& tensors, const SafetensorsMetadata& metadata) {
  // Data order: larger elements first (so every offset is aligned to its element size), then by name.
  std::vector<size_t> order(tensors.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::set<std::string> names;
  for (const auto& [name, t] : tensors) {
    SOMNUS_CHECK(name != kMetadataKey, "save_safetensors: {}: '{}' is reserved and cannot name a tensor", path, name);
    SOMNUS_CHECK(t.defined(), "save_safetensors: {}: tensor '{}' is undefined", path, name);
    SOMNUS_CHECK(names.insert(name).second, "save_safetensors: {}: tensor '{}' is given more than once", path, name);
  }
  SOMNUS_CHECK(metadata.count(kChecksumKey) == 0, "save_safetensors: {}: metadata key '{}' is reserved (the writer "
               "stores the data checksum there)", path, kChecksumKey);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const int64_t sa = dtype_size(tensors[a].second.dtype()), sb = dtype_size(tensors[b].second.dtype());
    return sa != sb ? sa > sb : tensors[a].first < tensors[b].first;
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  {
    SafetensorsMetadata all = metadata;
    all[kChecksumKey] = kChecksumPlaceholder;  // filled in once the data has streamed through
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : all) m[k] = v;  // std::map: sorted keys
    header[kMetadataKey] = std::move(m);
  }
  uint64_t offset = 0;
  for (size_t i : order) {
    const Tensor& t = tensors[i].second;
    nlohmann::ordered_json e = nlohmann::ordered_json::object();
    e["dtype"] = safetensors_dtype_name(t.dtype());
    e["shape"] = t.shape();
    const uint64_t nbytes = static_cast<uint64_t>(t.nbytes());
    e["data_offsets"] = {offset, offset + nbytes};
    offset += nbytes;
    header[tensors[i].first] = std::move(e);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char len_bytes[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(n >> (8 * i));

  // JSON escapes every quote inside keys and values, so the first `"somnus.xxh64":"` is the field.
  const std::string field = fmt::format("\"{}\":\"", kChecksumKey);
  const size_t checksum_at = text.find(field) + field.size();

  AtomicFile f(path);
  f.write(len_bytes, 8);
  f.write(text);
  Xxh64 hash;
  for (size_t i : order) {
    // One tensor at a time on the host: peak extra memory is the largest tensor, not the file.
    const Tensor host = tensors[i].second.detach().to(Device::cpu()).contiguous();
    if (host.nbytes() > 0) {
      f.write(host.data_ptr(), static_cast<size_t>(host.nbytes()));
      hash.update(host.data_ptr(), static_cast<size_t>(host.nbytes()));
    }
  }
  const std::string digest = hex64(hash.digest());
  f.overwrite(8 + checksum_at, digest.data(), digest.size());
  f.commit();
}

SafetensorsHeader read_safetensors_header(const std::string& path) {
  InputFile file(path);
  SafetensorsHeader h = parse_header(path, file);
  sort_by_name(h);
  return h;
}

SafetensorsFile load_safetensors(const std::string& path) {
  InputFile file(path);
  SafetensorsHeader h = parse_header(path, file);
  sort_by_name(h);
  std::vector<Tensor> data = read_all(path, file, h);
  SafetensorsFile out;
  out.metadata = std::move(h.metadata);
  out.tensors.reserve(h.entries.size());
  for (size_t i = 0; i < h.entries.size(); ++i) out.tensors.emplace_back(h.entries[i].name, std::move(data[i]));
  return out;
}

SafetensorsMetadata load_into(const std::string& path, const NamedTensors& targets) {
  InputFile file(path);
  SafetensorsHeader h = parse_header(path, file);
  sort_by_name(h);
  std::set<std::string> wanted;
  for (const auto& [name, t] : targets) {
    SOMNUS_CHECK(t.defined(), "load_into: {}: target tensor '{}' is undefined", path, name);
    SOMNUS_CHECK(wanted.insert(name).second, "load_into: {}: target '{}' is given more than once", path, name);
    const SafetensorsEntry* e = h.find(name);
    SOMNUS_CHECK(e != nullptr, "load_into: {}: missing tensor '{}' (expected {} {})", path, name,
                 safetensors_dtype_name(t.dtype()), shape_str(t.shape()));
    SOMNUS_CHECK(e->shape == t.shape(), "load_into: {}: tensor '{}' has shape {} in the file, expected {}", path, name,
                 shape_str(e->shape), shape_str(t.shape()));
    SOMNUS_CHECK(e->dtype == t.dtype(), "load_into: {}: tensor '{}' has dtype {} in the file, expected {}", path, name,
                 safetensors_dtype_name(e->dtype), safetensors_dtype_name(t.dtype()));
  }
  for (const auto& e : h.entries) {
    SOMNUS_CHECK(wanted.count(e.name) > 0, "load_into: {}: unexpected tensor '{}' ({} {}) in the file", path, e.name,
                 safetensors_dtype_name(e.dtype), shape_str(e.shape));
  }
  // Everything is read and verified before the first copy: a corrupt file changes nothing.
  const std::vector<Tensor> data = read_all(path, file, h);
  for (const auto& [name, t] : targets) {
    const size_t i = static_cast<size_t>(h.find(name) - h.entries.data());
    t.copy_(data[i]);
  }
  return h.metadata;
}

}  // namespace somnus
