#include "tools/cli_common.h"

#include <fmt/format.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "tensor/format.h"

namespace somnus::tools {

std::string gnuplot_quote(const std::string& s) {
  std::string out = "'";
  for (const char c : s) {
    out += c;
    if (c == '\'') out += '\'';
  }
  return out + "'";
}

int run_gnuplot(const std::filesystem::path& script) {
  std::string sh = "'";  // POSIX shell single quotes: ' becomes '\''
  for (const char c : script.string()) sh += c == '\'' ? std::string("'\\''") : std::string(1, c);
  sh += "'";
  std::fflush(stdout);
  const int status = std::system(("gnuplot " + sh + " 2>&1").c_str());
  std::fflush(stdout);
  if (status == -1) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

Device parse_device_option(const std::string& s) {
  Device d;
  try {
    d = Device::parse(s);
  } catch (const Error&) {
    fail("--device: expected cpu, cuda or cuda:N, got '{}'", s);
  }
  if (d.is_cuda()) {
    SOMNUS_CHECK(cuda_compiled(),
                 "--device {}: this somnus was built without the CUDA backend (rebuild with -DSOMNUS_CUDA=ON on a "
                 "machine with nvcc), use --device cpu",
                 s);
    const int n = cuda_device_count();
    SOMNUS_CHECK(n > 0, "--device {}: the CUDA backend is compiled in but no CUDA device is visible", s);
    SOMNUS_CHECK(d.index < n, "--device {}: only {} CUDA device(s) visible", s, n);
  }
  return d;
}

namespace {

CLI::Validator at_least(double min, bool strict) {
  return CLI::Validator(
      [min, strict](std::string& s) -> std::string {
        double v = 0.0;
        if (!CLI::detail::lexical_cast(s, v)) return "expected a number, got '" + s + "'";
        if (std::isnan(v) || (strict ? !(v > min) : !(v >= min)))
          return fmt::format("must be {} {}, got {}", strict ? ">" : ">=", min, s);
        return std::string();
      },
      strict ? "POSITIVE" : "NONNEGATIVE");
}

}  // namespace

CLI::Validator non_negative() { return at_least(0.0, false); }
CLI::Validator positive() { return at_least(0.0, true); }

CLI::Option* add_device_option(CLI::App* cmd, std::string& device) {
  return cmd->add_option("--device", device, "cpu, cuda or cuda:N")->capture_default_str();
}

}  // namespace somnus::tools
