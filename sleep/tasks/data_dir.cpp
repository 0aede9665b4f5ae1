#include "sleep/tasks/data_dir.h"

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <system_error>

#include "tensor/format.h"

namespace somnus::sleep {
namespace fs = std::filesystem;

namespace {

bool looks_like_data_dir(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return false;
  for (const char* sub : {"clinc150", "arc", "tinyshakespeare"})
    if (fs::is_directory(dir / sub, ec)) return true;
  return false;
}

std::string join(const std::vector<std::string>& items) {
  std::string s;
  for (const auto& item : items) s += fmt::format("\n  {}", item);
  return s;
}

}  // namespace

std::optional<fs::path> try_find_data_dir(const std::vector<std::string>& extra_candidates,
                                          std::vector<std::string>* tried) {
  std::vector<std::string> local;
  std::vector<std::string>& log = tried ? *tried : local;
  if (const char* env = std::getenv("SOMNUS_DATA_DIR"); env && *env) {
    log.push_back(fmt::format("$SOMNUS_DATA_DIR = {}", env));
    if (looks_like_data_dir(env)) return fs::path(env);
    return std::nullopt;
  }
  std::error_code ec;
  const fs::path cwd = fs::current_path(ec);
  std::vector<fs::path> candidates;
  candidates.push_back(ec ? fs::path("../shared/data") : cwd / "../shared/data");
  for (const auto& c : extra_candidates) candidates.emplace_back(c);
  for (const auto& c : candidates) {
    const fs::path p = c.lexically_normal();
    log.push_back(p.string());
    if (looks_like_data_dir(p)) return p;
  }
  return std::nullopt;
}

fs::path find_data_dir(const std::vector<std::string>& extra_candidates) {
  std::vector<std::string> tried;
  if (auto dir = try_find_data_dir(extra_candidates, &tried)) return *dir;
  fail("data directory not found (a folder holding clinc150/, arc/ or tinyshakespeare/); tried:{}\n"
       "Set SOMNUS_DATA_DIR to the shared data folder, or run from the repository root next to ../shared/data.",
       join(tried));
}

fs::path data_path(const std::string& relative, const std::vector<std::string>& extra_candidates) {
  const fs::path p = find_data_dir(extra_candidates) / relative;
  std::error_code ec;
  SOMNUS_CHECK(fs::exists(p, ec), "data file not found: {} (the data directory was found, but lacks '{}')",
               p.string(), relative);
  return p;
}

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  SOMNUS_CHECK(in.good(), "cannot open '{}' for reading", path.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  SOMNUS_CHECK(!in.bad(), "error while reading '{}'", path.string());
  return ss.str();
}

}  // namespace somnus::sleep
