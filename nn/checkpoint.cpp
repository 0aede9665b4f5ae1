#include "nn/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2 (glibc, _GNU_SOURCE)
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <vector>

#include "nn/file_io.h"
#include "nn/safetensors.h"
#include "tensor/format.h"

namespace somnus::nn {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr const char* kManifest = "MANIFEST.json";
constexpr const char* kLatest = "latest";
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kModelConfigFile = "model_config.json";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kTrainStateFile = "train_state.json";
constexpr const char* kTrainConfigFile = "train_config.json";

std::string join(const std::string& dir, const std::string& name) { return (fs::path(dir) / name).string(); }

// Makes a rename inside `dir` durable (as nn/file_io does for files).
void fsync_dir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  SOMNUS_CHECK(fd >= 0, "checkpoint: cannot open directory '{}' to fsync it: {}", dir, std::strerror(errno));
  int rc;
  do rc = ::fsync(fd);
  while (rc != 0 && errno == EINTR);
  const int err = errno;
  ::close(fd);
  SOMNUS_CHECK(rc == 0 || err == EINVAL || err == ENOTSUP, "checkpoint: fsync of directory '{}' failed: {}", dir,
               std::strerror(err));
}

void rename_or_throw(const std::string& from, const std::string& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  SOMNUS_CHECK(!ec, "checkpoint: cannot rename '{}' to '{}': {}", from, to, ec.message());
}

std::string hex64(uint64_t v) { return fmt::format("{:016x}", v); }

// Step of a "ckpt-<digits>" name, or -1.
int64_t step_of_name(const std::string& name) {
  if (name.rfind("ckpt-", 0) != 0 || name.size() <= 5) return -1;
  int64_t step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || step > (int64_t{1} << 58)) return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

void check_plain_name(const std::string& name) {
  SOMNUS_CHECK(!name.empty() && name.find('/') == std::string::npos && name != "." && name != ".." &&
                   name != kManifest,
               "checkpoint: bad file name '{}' (plain names only; '{}' is reserved)", name, kManifest);
}

json parse_json(const std::string& text, const std::string& what) {
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  SOMNUS_CHECK(!j.is_discarded(), "checkpoint: {} is not valid JSON", what);
  return j;
}

uint64_t parse_hex64(const json& v, const std::string& what) {
  SOMNUS_CHECK(v.is_string() && v.get<std::string>().size() == 16, "checkpoint: {}: xxh64 must be 16 hex digits",
               what);
  uint64_t out = 0;
  for (char c : v.get<std::string>()) {
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else fail("checkpoint: {}: xxh64 must be 16 lowercase hex digits", what);
    out = out << 4 | static_cast<uint64_t>(d);
  }
  return out;
}

}  // namespace

json generator_to_json(const Generator& g) { return json{{"seed", g.seed}, {"offset", g.offset}}; }

Generator generator_from_json(const json& j, const std::string& what) {
  SOMNUS_CHECK(j.is_object() && j.size() == 2 && j.contains("seed") && j.contains("offset") &&
                   j.at("seed").is_number_unsigned() && j.at("offset").is_number_unsigned(),
               "checkpoint: '{}' must be {{\"seed\": uint, \"offset\": uint}}, got {}", what, j.dump());
  Generator g(j.at("seed").get<uint64_t>());
  g.offset = j.at("offset").get<uint64_t>();
  return g;
}

// ---------------------------------------------------------------- train state

void to_json(json& j, const TrainState& s) {
  j = json{{"step", s.step},
           {"rng",
            {{"data", generator_to_json(s.data_rng)}, {"default", generator_to_json(s.default_rng)}}},
           {"extra", s.extra}};
}

void from_json(const json& j, TrainState& s) {
  SOMNUS_CHECK(j.is_object(), "checkpoint: train state must be a JSON object, got {}", j.type_name());
  for (const auto& [key, value] : j.items()) {
    SOMNUS_CHECK(key == "step" || key == "rng" || key == "extra", "checkpoint: train state: unknown key '{}'", key);
  }
  SOMNUS_CHECK(j.contains("step") && j.at("step").is_number_integer() && j.at("step").get<int64_t>() >= 0,
               "checkpoint: train state: 'step' must be a non-negative integer");
  SOMNUS_CHECK(j.contains("rng") && j.at("rng").is_object() && j.at("rng").size() == 2,
               "checkpoint: train state: 'rng' must be {{\"data\": ..., \"default\": ...}}");
  TrainState out;
  out.step = j.at("step").get<int64_t>();
  SOMNUS_CHECK(j.at("rng").contains("data") && j.at("rng").contains("default"),
               "checkpoint: train state: 'rng' must hold 'data' and 'default'");
  out.data_rng = generator_from_json(j.at("rng").at("data"), "train state: rng.data");
  out.default_rng = generator_from_json(j.at("rng").at("default"), "train state: rng.default");
  if (j.contains("extra")) {
    SOMNUS_CHECK(j.at("extra").is_object(), "checkpoint: train state: 'extra' must be an object");
    out.extra = j.at("extra");
  }
  s = out;
}

// ---------------------------------------------------------------- save

std::string checkpoint_dir_name(int64_t step) { return fmt::format("ckpt-{:08d}", step); }

std::string save_checkpoint(const std::string& root, const CheckpointSave& c, int64_t keep_last) {
  SOMNUS_CHECK(c.model != nullptr, "save_checkpoint: no model given");
  SOMNUS_CHECK(c.model_config.is_object(), "save_checkpoint: the model config must be a JSON object");
  SOMNUS_CHECK(c.state.step >= 0, "save_checkpoint: negative step {}", c.state.step);
  std::vector<std::string> extra_names;
  for (const auto& [name, bytes] : c.extra_files) extra_names.push_back(name);
  for (const auto& [name, tensors] : c.extra_tensors) {
    SOMNUS_CHECK(c.extra_files.count(name) == 0, "save_checkpoint: '{}' is both an extra file and extra tensors", name);
    extra_names.push_back(name);
  }
  for (const std::string& name : extra_names) {
    check_plain_name(name);
    for (const char* reserved :
         {kModelFile, kModelConfigFile, kOptimizerFile, kTrainStateFile, kTrainConfigFile, kManifest, kLatest}) {
      SOMNUS_CHECK(name != reserved, "save_checkpoint: extra file '{}' collides with a checkpoint file", name);
    }
  }
  std::error_code ec;
  fs::create_directories(root, ec);
  SOMNUS_CHECK(!ec, "save_checkpoint: cannot create '{}': {}", root, ec.message());

  // Staging, trash and moved-aside directories left by a process killed mid-save or mid-prune
  // (hidden names, never read as checkpoints) are removed, so repeated crashes do not fill the
  // disk.
  for (const auto& entry : fs::directory_iterator(root, ec)) {
    const std::string n = entry.path().filename().string();
    if (n.rfind(".ckpt-", 0) == 0 && (n.find(".partial-") != std::string::npos ||
                                      n.find(".deleting-") != std::string::npos || n.find(".old-") != std::string::npos)) {
      std::error_code ignored;
      fs::remove_all(entry.path(), ignored);
    }
  }
  const std::string name = checkpoint_dir_name(c.state.step);
  const std::string final_dir = join(root, name);
  const std::string staging = join(root, fmt::format(".{}.partial-{}", name, ::getpid()));
  fs::remove_all(staging, ec);
  fs::create_directory(staging, ec);
  SOMNUS_CHECK(!ec, "save_checkpoint: cannot create '{}': {}", staging, ec.message());

  try {
    std::vector<std::string> files;
    save_safetensors(join(staging, kModelFile), c.model->state_dict(),
                     {{"somnus.checkpoint_step", std::to_string(c.state.step)}});
    files.push_back(kModelFile);
    atomic_write(join(staging, kModelConfigFile), c.model_config.dump(2) + "\n");
    files.push_back(kModelConfigFile);
    if (c.optimizer != nullptr) {
      c.optimizer->save_state(join(staging, kOptimizerFile));
      files.push_back(kOptimizerFile);
    }
    atomic_write(join(staging, kTrainStateFile), json(c.state).dump(2) + "\n");
    files.push_back(kTrainStateFile);
    if (!c.train_config.is_null()) {
      atomic_write(join(staging, kTrainConfigFile), c.train_config.dump(2) + "\n");
      files.push_back(kTrainConfigFile);
    }
    for (const auto& [fname, bytes] : c.extra_files) {
      atomic_write(join(staging, fname), bytes);
      files.push_back(fname);
    }
    for (const auto& [fname, tensors] : c.extra_tensors) {
      save_safetensors(join(staging, fname), tensors);
      files.push_back(fname);
    }
    // The manifest covers the bytes as they landed on disk.
    json manifest{{"format", kCheckpointFormat}, {"version", kCheckpointVersion}, {"step", c.state.step}};
    json listed = json::object();
    for (const std::string& f : files) {
      const std::string bytes = read_file(join(staging, f));
      listed[f] = {{"bytes", bytes.size()}, {"xxh64", hex64(xxh64(bytes.data(), bytes.size()))}};
    }
    manifest["files"] = listed;
    atomic_write(join(staging, kManifest), manifest.dump(2) + "\n");

    // Swap the complete directory in. A re-save of the same step exchanges the two
    // directories atomically (renameat2 RENAME_EXCHANGE), so ckpt-<step> is complete at every
    // instant, old or new; the old one, now under the staging name, is removed after.
    // Where the filesystem cannot exchange, the old one is moved aside first (a directory
    // cannot be renamed over a non-empty one): a crash between the two renames then leaves
    // no ckpt-<step>, and `latest` names the missing directory.
    std::string aside;
    if (fs::exists(final_dir)) {
      if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, final_dir.c_str(), RENAME_EXCHANGE) == 0) {
        aside = staging;
      } else {
        aside = join(root, fmt::format(".{}.old-{}", name, ::getpid()));
        fs::remove_all(aside, ec);
        rename_or_throw(final_dir, aside);
        rename_or_throw(staging, final_dir);
      }
    } else {
      rename_or_throw(staging, final_dir);
    }
    fsync_dir(root);
    atomic_write(join(root, kLatest), name + "\n");
    if (!aside.empty()) fs::remove_all(aside, ec);
  } catch (...) {
    fs::remove_all(staging, ec);
    throw;
  }

  if (keep_last > 0) {
    std::vector<std::pair<int64_t, std::string>> others;
    for (const auto& entry : fs::directory_iterator(root, ec)) {
      const std::string n = entry.path().filename().string();
      const int64_t s = step_of_name(n);
      if (s >= 0 && n != name && entry.is_directory()) others.emplace_back(s, n);
    }
    std::sort(others.rbegin(), others.rend());
    for (size_t i = static_cast<size_t>(keep_last - 1); i < others.size(); ++i) {
      // Renamed out of the ckpt-<step> namespace first: a crash during remove_all must not
      // leave a half-deleted directory under a checkpoint's name.
      const std::string trash = join(root, fmt::format(".{}.deleting-{}", others[i].second, ::getpid()));
      fs::remove_all(trash, ec);
      fs::rename(join(root, others[i].second), trash, ec);
      if (!ec) fs::remove_all(trash, ec);
    }
  }
  return final_dir;
}

// ---------------------------------------------------------------- find

std::optional<std::string> latest_checkpoint(const std::string& root) {
  const std::string pointer = join(root, kLatest);
  if (!fs::exists(pointer)) return std::nullopt;
  std::string text = read_file(pointer);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  SOMNUS_CHECK(step_of_name(text) >= 0, "checkpoint: '{}' must name a ckpt-<step> directory, got '{}'", pointer,
               text.substr(0, 64));
  return join(root, text);
}

std::string resolve_checkpoint(const std::string& path) {
  if (fs::exists(join(path, kManifest))) return path;
  if (auto latest = latest_checkpoint(path)) return *latest;
  SOMNUS_CHECK(fs::exists(path), "checkpoint: '{}' does not exist", path);
  if (fs::is_directory(path) && step_of_name(fs::path(path).filename().string()) >= 0) {
    fail("checkpoint: '{}' is incomplete: it has no {} (an interrupted save?)", path, kManifest);
  }
  fail("checkpoint: '{}' is neither a checkpoint directory (with {}) nor a run directory (with '{}')", path,
       kManifest, kLatest);
}

// ---------------------------------------------------------------- load

namespace {

// The manifest of `dir`, validated (format, version, step, entry shapes); with `verify`, every
// listed file is also checked against its size and XXH64; otherwise only `only` (when given).
CheckpointManifest read_manifest(const std::string& dir, bool verify, const std::string& only = "") {
  const std::string mpath = join(dir, kManifest);
  SOMNUS_CHECK(fs::exists(mpath), "checkpoint: '{}' is incomplete or not a checkpoint: {} is missing", dir,
               kManifest);
  const json m = parse_json(read_file(mpath), mpath);
  SOMNUS_CHECK(m.is_object() && m.contains("format") && m.at("format") == kCheckpointFormat,
               "checkpoint: {}: not a somnus checkpoint manifest (format must be \"{}\")", mpath, kCheckpointFormat);
  SOMNUS_CHECK(m.contains("version") && m.at("version").is_number_integer() &&
                   m.at("version").get<int64_t>() == kCheckpointVersion,
               "checkpoint: {}: unsupported version {} (this build reads version {})", mpath,
               m.contains("version") ? m.at("version").dump() : "(missing)", kCheckpointVersion);
  SOMNUS_CHECK(m.contains("step") && m.at("step").is_number_integer() && m.at("step").get<int64_t>() >= 0,
               "checkpoint: {}: 'step' must be a non-negative integer", mpath);
  SOMNUS_CHECK(m.contains("files") && m.at("files").is_object(), "checkpoint: {}: 'files' must be an object", mpath);
  CheckpointManifest out;
  out.step = m.at("step").get<int64_t>();
  for (const auto& [name, entry] : m.at("files").items()) {
    check_plain_name(name);
    const std::string what = fmt::format("{}: file '{}'", mpath, name);
    SOMNUS_CHECK(entry.is_object() && entry.contains("bytes") && entry.at("bytes").is_number_unsigned() &&
                     entry.contains("xxh64"),
                 "checkpoint: {}: entry must be {{\"bytes\": uint, \"xxh64\": hex}}", what);
    const uint64_t bytes = entry.at("bytes").get<uint64_t>();
    const uint64_t hash = parse_hex64(entry.at("xxh64"), what);
    if (verify || name == only) {
      const std::string path = join(dir, name);
      SOMNUS_CHECK(fs::exists(path), "checkpoint: '{}': {} is missing", dir, name);
      const std::string data = read_file(path);
      SOMNUS_CHECK(data.size() == bytes, "checkpoint: '{}': {} has {} bytes, the manifest says {} (truncated?)", dir,
                   name, data.size(), bytes);
      SOMNUS_CHECK(xxh64(data.data(), data.size()) == hash,
                   "checkpoint: '{}': {} does not match its checksum (corrupt)", dir, name);
    }
    out.files[name] = {bytes, hash};
  }
  for (const char* required : {kModelFile, kModelConfigFile, kTrainStateFile}) {
    SOMNUS_CHECK(out.files.count(required) != 0, "checkpoint: {}: does not list {}", mpath, required);
  }
  return out;
}

}  // namespace

CheckpointManifest verify_checkpoint(const std::string& dir) { return read_manifest(dir, /*verify=*/true); }

bool checkpoint_has_file(const std::string& dir, const std::string& name) {
  return fs::exists(join(dir, name)) && fs::exists(join(dir, kManifest));
}

std::string read_checkpoint_file(const std::string& dir, const std::string& name) {
  SOMNUS_CHECK(fs::exists(join(dir, name)), "checkpoint: '{}' has no {}", dir, name);
  return read_file(join(dir, name));
}

NamedTensors read_checkpoint_tensors(const std::string& dir, const std::string& name) {
  // This file against the manifest; the rest was verified when the checkpoint was loaded.
  const CheckpointManifest manifest = read_manifest(dir, /*verify=*/false, name);
  SOMNUS_CHECK(manifest.files.count(name) != 0, "checkpoint: '{}' lists no {}", dir, name);
  try {
    return load_safetensors(join(dir, name)).tensors;
  } catch (const Error& e) {
    fail("checkpoint: '{}': {}", dir, e.what());
  }
}

json read_checkpoint_json(const std::string& dir, const std::string& name) {
  return parse_json(read_checkpoint_file(dir, name), join(dir, name));
}

TrainState load_checkpoint(const std::string& dir, Module& model, Optimizer* optimizer) {
  const CheckpointManifest manifest = verify_checkpoint(dir);
  TrainState state;
  try {
    state = read_checkpoint_json(dir, kTrainStateFile).get<TrainState>();
  } catch (const json::exception& e) {
    fail("checkpoint: '{}': bad {}: {}", dir, kTrainStateFile, e.what());
  }
  SOMNUS_CHECK(state.step == manifest.step, "checkpoint: '{}': {} says step {}, the manifest {}", dir,
               kTrainStateFile, state.step, manifest.step);
  if (optimizer != nullptr) {
    SOMNUS_CHECK(manifest.files.count(kOptimizerFile) != 0, "checkpoint: '{}' holds no optimiser state", dir);
  }
  try {
    // Module::load_state_dict is strict (names, shapes, dtypes, all checked before anything
    // is copied) and runs on_load, so host state derived from buffers (slot masks) follows.
    model.load_state_dict(load_safetensors(join(dir, kModelFile)).tensors, /*strict=*/true);
    if (optimizer != nullptr) optimizer->load_state(join(dir, kOptimizerFile));
  } catch (const Error& e) {
    fail("checkpoint: '{}': {}", dir, e.what());
  }
  return state;
}

std::shared_ptr<Transformer> load_transformer(const std::string& dir, Device device) {
  verify_checkpoint(dir);
  TransformerConfig cfg;
  try {
    cfg = read_checkpoint_json(dir, kModelConfigFile).get<TransformerConfig>();
  } catch (const json::exception& e) {
    fail("checkpoint: '{}': bad {}: {}", dir, kModelConfigFile, e.what());
  } catch (const Error& e) {
    fail("checkpoint: '{}': bad {}: {}", dir, kModelConfigFile, e.what());
  }
  Generator gen(0);
  auto model = std::make_shared<Transformer>(cfg, gen, DType::f32, device);
  try {
    model->load_state_dict(load_safetensors(join(dir, kModelFile)).tensors, /*strict=*/true);
  } catch (const Error& e) {
    fail("checkpoint: '{}': {}", dir, e.what());
  }
  return model;
}

}  // namespace somnus::nn
