// The engine's smallest real end-to-end run: a character-level MLP language model
// (Bengio et al. 2003 / makemore style) trained on tinyshakespeare with somnus's own tensor,
// kernels and autograd. It exists until the Sleep demo replaces it as README command (1).
#pragma once
#include <cstdint>
#include <string>

namespace somnus::tools {

struct DemoConfig {
  std::string data_path;            // a plain-text corpus
  std::string out_dir = "runs/demo";
  int64_t steps = 3000;
  int64_t batch = 128;
  int64_t context = 16;             // characters of context
  int64_t embed = 32;               // per-character embedding width
  int64_t hidden = 512;
  double lr = 3e-3;                 // AdamW
  double weight_decay = 0.01;
  int64_t eval_every = 250;
  int64_t eval_batches = 16;
  int64_t sample_chars = 240;
  uint64_t seed = 1337;
};

// Trains, prints a table of losses, writes <out_dir>/loss.csv and loss.png (gnuplot), prints a
// sample. Returns the final validation loss.
double run_demo_lm(const DemoConfig& cfg);

}  // namespace somnus::tools
