// Where the real data sets live (../shared/data: CLINC150, ARC, tinyshakespeare). They are
// never copied into the repository nor downloaded; they are found at run time.
//
// Search order (the first directory that exists and holds clinc150/, arc/ or
// tinyshakespeare/ wins):
//   1. $SOMNUS_DATA_DIR, when set (and then only it: a wrong setting is an error, not a
//      silent fallback to another copy);
//   2. ../shared/data relative to the current directory (the repository root, where the CLI
//      and the demo run);
//   3. the caller's extra candidates, e.g. SOMNUS_SOURCE_DIR "/../shared/data" which the task
//      tests get as a compile definition (tests/CMakeLists.txt), since ctest runs them from
//      the build directory.
// When none qualifies, find_data_dir throws somnus::Error naming every place it tried.
#pragma once
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace somnus::sleep {

// The directory, or nullopt; `tried` (optional) receives the places looked at.
std::optional<std::filesystem::path> try_find_data_dir(const std::vector<std::string>& extra_candidates = {},
                                                       std::vector<std::string>* tried = nullptr);
// The directory; throws somnus::Error listing the places tried when it is not found.
std::filesystem::path find_data_dir(const std::vector<std::string>& extra_candidates = {});
// find_data_dir() / relative, which must exist (a file or a directory); throws otherwise.
std::filesystem::path data_path(const std::string& relative, const std::vector<std::string>& extra_candidates = {});

// The whole file as bytes; throws somnus::Error naming the path when it cannot be read.
std::string read_text_file(const std::filesystem::path& path);

}  // namespace somnus::sleep
