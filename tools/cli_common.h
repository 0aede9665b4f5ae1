// Helpers shared by the `somnus` subcommands (tools/cmd_*.cpp).
#pragma once
#include <CLI/CLI.hpp>

#include <filesystem>
#include <string>

#include "tensor/device.h"

namespace somnus::tools {

// "cpu", "cuda", "cuda:N" -> Device, with a clear somnus::Error when CUDA is not compiled
// in or no device is visible.
Device parse_device_option(const std::string& s);
// Adds `--device cpu|cuda` (default cpu) to a subcommand.
CLI::Option* add_device_option(CLI::App* cmd, std::string& device);

// Option checks with a readable message ("must be >= 0, got -1"). CLI11's NonNegativeNumber
// and PositiveNumber print their upper bound, DBL_MAX, in all its 309 digits, and
// PositiveNumber says "Value 0 not in range 0.000000 to ...".
CLI::Validator non_negative();
CLI::Validator positive();

// gnuplot scripts: `s` as a single-quoted gnuplot string (a ' inside is doubled, gnuplot's
// escape; a title or path holding one used to end the string and fail the script).
std::string gnuplot_quote(const std::string& s);
// Runs `gnuplot SCRIPT` (the path shell-quoted), its messages on stdout after what the command
// printed so far (stdout is flushed first: a piped run showed gnuplot's lines before the
// table). Returns gnuplot's exit code (127: no gnuplot; -1: no shell); a failure is the
// caller's warning.
int run_gnuplot(const std::filesystem::path& script);

// Subcommand registration (tools/cmd_*.cpp).
void add_train_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_tokenizer_command(CLI::App& app);
void add_report_command(CLI::App& app);
void add_profile_command(CLI::App& app);
void add_experiment_command(CLI::App& app);
void add_sleep_command(CLI::App& app);

}  // namespace somnus::tools
