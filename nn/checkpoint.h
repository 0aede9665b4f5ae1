// Training checkpoints: everything a run needs to continue bit-exactly (DESIGN.md §5), in a
// directory per checkpoint under a run root:
//
//   <root>/ckpt-00000100/model.safetensors      model.state_dict(): parameters and persistent
//                                               buffers (slot masks included)
//                        model_config.json      the model config (e.g. a TransformerConfig)
//                        optimizer.safetensors  Optimizer::save_state: m, v, masters, pending
//                                               accumulators of slow groups; the JSON scalars
//                                               (steps, applications) in its metadata
//                        train_state.json       step, RNG states (data batcher, default
//                                               generator) and free-form extras
//                        train_config.json      the training config (optional)
//                        <extra files>          e.g. tokenizer.json
//                        MANIFEST.json          written last: format, version, step, and per
//                                               file its size and XXH64
//   <root>/latest                               "ckpt-00000100\n", replaced atomically
//
// Writing: the files go into a staging directory <root>/.ckpt-<step>.partial, each through
// atomic_write (temp, fsync, rename); MANIFEST.json last; then the staging directory is
// renamed to ckpt-<step> (fsync'd), and only then is `latest` replaced. A crash at any point
// leaves `latest` naming the previous complete checkpoint; a directory without a manifest is
// never treated as a checkpoint. Older checkpoints beyond keep_last are removed after
// `latest` moved. A failed save removes its staging directory and throws.
//
// Loading is strict: the manifest is read first (format, version, JSON shape), then every
// file it lists is checked against its size and XXH64 before anything is parsed; unexpected
// truncation, a flipped byte, a missing file or a corrupt manifest each give somnus::Error
// naming the checkpoint and the file. Weights load with load_into (missing/unexpected keys,
// wrong shapes or dtypes are errors naming the tensor; nothing is copied unless everything
// matches), the optimiser with Optimizer::load_state_dict (layout, periods, shapes).
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "nn/module.h"
#include "nn/optim.h"
#include "nn/transformer.h"
#include "tensor/random.h"

namespace somnus::nn {

constexpr const char* kCheckpointFormat = "somnus.checkpoint";
constexpr int kCheckpointVersion = 1;

struct TrainState {
  int64_t step = 0;              // optimiser steps taken
  Generator data_rng;            // the batcher's generator
  Generator default_rng;         // somnus::default_generator()
  nlohmann::json extra = nlohmann::json::object();  // e.g. tokens seen; saved verbatim
};

void to_json(nlohmann::json& j, const TrainState& s);
void from_json(const nlohmann::json& j, TrainState& s);  // strict; throws somnus::Error

struct CheckpointSave {
  const Module* model = nullptr;             // required
  nlohmann::json model_config;               // required (an object)
  const Optimizer* optimizer = nullptr;      // optional
  TrainState state;
  nlohmann::json train_config;               // optional (null: not written)
  std::map<std::string, std::string> extra_files;  // name -> bytes (plain names, no '/')
  // name -> tensors, each written as a safetensors file (e.g. a learner's anchor weights);
  // read back with read_checkpoint_tensors. Plain names, no '/', no collisions.
  std::map<std::string, NamedTensors> extra_tensors;
};

// Writes <root>/ckpt-<step>/ as described above and points <root>/latest at it. keep_last > 0
// removes the oldest complete checkpoints beyond that count. Returns the checkpoint directory.
std::string save_checkpoint(const std::string& root, const CheckpointSave& contents, int64_t keep_last = 0);

// "ckpt-00000042"
std::string checkpoint_dir_name(int64_t step);

// The directory `<root>/latest` names, or nullopt when there is no `latest` file. Throws when
// the pointer is malformed.
std::optional<std::string> latest_checkpoint(const std::string& root);

// A checkpoint directory itself (it has MANIFEST.json), or a run root with a `latest` pointer.
// Throws naming the path when it is neither.
std::string resolve_checkpoint(const std::string& path);

struct CheckpointManifest {
  int64_t step = 0;
  std::map<std::string, std::pair<uint64_t, uint64_t>> files;  // name -> (bytes, xxh64)
};

// Reads the manifest and verifies every file it lists (size and XXH64). Throws somnus::Error.
CheckpointManifest verify_checkpoint(const std::string& dir);

// A Generator as {"seed": uint, "offset": uint}, and back (strict; `what` names it in errors).
nlohmann::json generator_to_json(const Generator& g);
Generator generator_from_json(const nlohmann::json& j, const std::string& what);

// Parts of a verified checkpoint.
nlohmann::json read_checkpoint_json(const std::string& dir, const std::string& name);
std::string read_checkpoint_file(const std::string& dir, const std::string& name);
bool checkpoint_has_file(const std::string& dir, const std::string& name);
// The tensors of an extra_tensors file (CPU, sorted by name); that file is checked against the
// manifest (size, XXH64), the others are not re-read.
NamedTensors read_checkpoint_tensors(const std::string& dir, const std::string& name);

// Strict restore into existing objects (built from the same configs): verifies the checkpoint,
// loads the weights into model.state_dict(), the optimiser state when `optimizer` is given
// (an error when the checkpoint has none), and returns the train state. RNGs are not applied;
// the caller assigns them (TrainState::data_rng to its batcher, default_rng to
// default_generator()).
TrainState load_checkpoint(const std::string& dir, Module& model, Optimizer* optimizer = nullptr);

// A Transformer built from the checkpoint's model_config.json on `device`, weights loaded.
std::shared_ptr<Transformer> load_transformer(const std::string& dir, Device device = Device::cpu());

}  // namespace somnus::nn
