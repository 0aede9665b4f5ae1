// somnus — the command-line entry point.
//   somnus info                 build and device information
//   somnus demo [--steps N ...] the smallest end-to-end training run (char-level LM)
//   somnus train --config cfg.json [--key value ...] [--resume]   (tools/cmd_train.cpp)
//   somnus generate --ckpt DIR --prompt "..."                       (tools/cmd_generate.cpp)
//   somnus eval --ckpt DIR --data text.txt | --qa file.jsonl        (tools/cmd_eval.cpp)
//   somnus tokenizer train --input text.txt --vocab N --out tok.json (tools/cmd_tokenizer.cpp)
// Every command takes --device cpu|cuda. Errors print "somnus: error: ..." and exit 1.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "tensor/allocator.h"
#include "tensor/device.h"
#include "tensor/error.h"
#include "tools/cli_common.h"
#include "tools/demo_lm.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

std::string default_corpus() {
  if (const char* env = std::getenv("SOMNUS_DATA")) return std::string(env) + "/tinyshakespeare/input.txt";
  for (const char* p : {"../shared/data/tinyshakespeare/input.txt", "../../shared/data/tinyshakespeare/input.txt"}) {
    if (std::filesystem::exists(p)) return p;
  }
  return "../shared/data/tinyshakespeare/input.txt";
}

void print_info() {
  fmt::print("somnus 0.1.0\n");
  fmt::print("CUDA backend compiled: {}\n", somnus::cuda_compiled() ? "yes" : "no");
  fmt::print("CUDA devices visible: {}\n", somnus::cuda_device_count());
#ifdef _OPENMP
  fmt::print("OpenMP threads: {}\n", omp_get_max_threads());
#endif
  const auto s = somnus::cpu_allocator().stats();
  fmt::print("cpu allocator: {} bytes in use, peak {}\n", s.current, s.peak);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"somnus: a from-scratch C++20/CUDA engine for the Sleep paradigm"};
  app.require_subcommand(1);

  app.add_subcommand("info", "Print build and device information")->callback(print_info);

  somnus::tools::DemoConfig demo;
  demo.data_path = default_corpus();
  auto* d = app.add_subcommand("demo", "Train a tiny char-level LM end to end on CPU; prints a table, writes a plot");
  d->add_option("--data", demo.data_path, "Plain-text corpus")->capture_default_str();
  d->add_option("--out", demo.out_dir, "Output directory (loss.csv, loss.png)")->capture_default_str();
  d->add_option("--steps", demo.steps, "Training steps")->capture_default_str()->check(CLI::PositiveNumber);
  d->add_option("--batch", demo.batch, "Batch size")->capture_default_str()->check(CLI::PositiveNumber);
  d->add_option("--context", demo.context, "Characters of context")->capture_default_str()->check(CLI::PositiveNumber);
  d->add_option("--embed", demo.embed, "Per-character embedding width")->capture_default_str()->check(CLI::PositiveNumber);
  d->add_option("--hidden", demo.hidden, "Hidden width")->capture_default_str()->check(CLI::PositiveNumber);
  d->add_option("--lr", demo.lr, "Peak learning rate (AdamW)")->capture_default_str();
  d->add_option("--eval-every", demo.eval_every, "Steps between evaluations")->capture_default_str();
  d->add_option("--seed", demo.seed, "Random seed")->capture_default_str();
  d->callback([&] { somnus::tools::run_demo_lm(demo); });

  somnus::tools::add_train_command(app);
  somnus::tools::add_generate_command(app);
  somnus::tools::add_eval_command(app);
  somnus::tools::add_tokenizer_command(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const somnus::Error& e) {
    fmt::print(stderr, "somnus: error: {}\n", e.what());
    return 1;
  } catch (const nlohmann::json::exception& e) {
    fmt::print(stderr, "somnus: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "somnus: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
