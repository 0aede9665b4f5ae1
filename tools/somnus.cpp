// somnus — the command-line entry point.
//   somnus info                 build and device information
//   somnus train --config cfg.json [--key value ...] [--resume]   (tools/cmd_train.cpp)
//   somnus generate --ckpt DIR --prompt "..."                       (tools/cmd_generate.cpp)
//   somnus eval --ckpt DIR --data text.txt | --qa file.jsonl        (tools/cmd_eval.cpp)
//   somnus tokenizer train --input text.txt --vocab N --out tok.json (tools/cmd_tokenizer.cpp)
//   somnus report --metrics run/metrics.jsonl [--plot loss.png]      (tools/cmd_report.cpp)
//   somnus profile --config cfg.json --what train --steps N          (tools/cmd_profile.cpp)
//   somnus sleep --ckpt RUN --data new.txt [--config sleep.json]    (tools/cmd_sleep.cpp)
//   somnus experiment clinc150 --config tiny                       (tools/cmd_experiment.cpp)
// Every command takes --device cpu|cuda. Errors print "somnus: error: ..." and exit 1.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cstdlib>

#include "kernels/ops.h"
#include "tensor/allocator.h"
#include "tensor/device.h"
#include "tensor/error.h"
#include "tools/cli_common.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

void print_info() {
  fmt::print("somnus 0.1.0\n");
  fmt::print("CUDA backend compiled: {}\n", somnus::cuda_compiled() ? "yes" : "no");
  fmt::print("CUDA devices visible: {}\n", somnus::cuda_device_count());
#ifdef _OPENMP
  fmt::print("OpenMP threads: {}\n", omp_get_max_threads());
#endif
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  fmt::print("OpenBLAS kernels: {}{}\n", somnus::kernels::blas_core(),
             coretype == nullptr             ? " (chosen by OpenBLAS)"
             : std::getenv("SOMNUS_BLAS_REEXEC") ? fmt::format(" (OPENBLAS_CORETYPE={}, set by somnus: OpenBLAS did not "
                                                            "recognise this CPU)", coretype)
                                             : fmt::format(" (OPENBLAS_CORETYPE={})", coretype));
  const auto s = somnus::cpu_allocator().stats();
  fmt::print("cpu allocator: {} bytes in use, peak {}\n", s.current, s.peak);
}

// OpenBLAS picks its kernels as it is loaded, before main(); on a CPU it does not recognise it
// falls back to SSE3 ones ("Prescott"), 4-5x slower here on a virtualised AVX-512 Xeon. Then the
// CLI runs itself again, once, with OPENBLAS_CORETYPE naming the kernels the CPU can run
// (kernels::blas_core_advice). A user's own OPENBLAS_CORETYPE is left as it is; if exec fails,
// the run goes on with the slow kernels.
void rerun_with_matching_blas_kernels(char** argv) {
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
  const std::string core = somnus::kernels::blas_core_advice();
  if (core.empty()) return;
  setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
  setenv("SOMNUS_BLAS_REEXEC", "1", 1);
  execv("/proc/self/exe", argv);
  unsetenv("OPENBLAS_CORETYPE");
  unsetenv("SOMNUS_BLAS_REEXEC");
}

}  // namespace

int main(int argc, char** argv) {
  rerun_with_matching_blas_kernels(argv);
  CLI::App app{"somnus: a from-scratch C++20/CUDA engine for the Sleep paradigm"};
  app.require_subcommand(1);

  app.add_subcommand("info", "Print build and device information")->callback(print_info);

  somnus::tools::add_train_command(app);
  somnus::tools::add_generate_command(app);
  somnus::tools::add_eval_command(app);
  somnus::tools::add_tokenizer_command(app);
  somnus::tools::add_report_command(app);
  somnus::tools::add_experiment_command(app);
  somnus::tools::add_sleep_command(app);
  somnus::tools::add_profile_command(app);

  // An unknown command is an error that names it (CLI11 alone says "A subcommand is required").
  if (argc > 1 && argv[1][0] != '-') {
    std::string known;
    bool found = false;
    for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
      found = found || sub->get_name() == argv[1];
      known += (known.empty() ? "" : ", ") + sub->get_name();
    }
    if (!found) {
      fmt::print(stderr, "somnus: error: unknown command '{}' (commands: {}; somnus --help)\n", argv[1], known);
      return 1;
    }
  }
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
