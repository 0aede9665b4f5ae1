// Few-shot grid puzzles (PARADIGM §5.3, the paper's Table 4): procedural 1-D ARC-like task
// families, and a loader of the real ARC-AGI JSON files for users with bigger models.
//
// A grid is a list of rows of colours 0–9 (0 = background); a 1-D task uses one row. A task
// is a few demonstration pairs and test pairs that all follow one rule. Serialised as text
// with one token per colour:
//   prompt  "in: 0 3 3 0 0\nout: 0 0 3 3 0\n" (per demonstration) + "in: 0 5 0 0 0\nout:"
//   answer  " 0 0 5 0 0"
// A grid of several rows puts rows on separate lines ("in: 1 2\n3 4\nout: ..."), so every
// grid reads back unambiguously (parse_grid_text).
//
// Families (each with parameters drawn per task, fixed across its pairs):
//   shift    move every cell k = 1..3 steps left or right (cells never fall off: inputs
//            keep the far end empty)
//   mirror   reverse the row
//   recolour colour a becomes colour b, others stay
//   fill     the gap between two equal-coloured end cells is filled with that colour
//   count    n cells of colour c anywhere  ->  a row of n cells of colour c
//   gravity  coloured cells slide to the left or right end, keeping their order
//   scale    every cell repeated f = 2 or 3 times
//   denoise  cells with no equal-coloured neighbour become background
// Held-out families: draw training tasks from some families and test on the others
// (split_arc1d_families).
//
// Real ARC (../shared/data/arc/data/{training,evaluation}/*.json):
//   {"train": [{"input": grid, "output": grid}, ...], "test": [...]}
// parse_arc_task checks every grid (a non-empty list of equal-length rows, 1..30 x 1..30,
// integers 0–9) and throws somnus::Error naming the source and the place of the problem;
// any byte string gives a task or that error (a fuzzer calls it).
#pragma once
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nn/data.h"

namespace somnus::sleep {

using ArcGrid = std::vector<std::vector<int>>;  // rows of colours 0–9

struct ArcPair {
  ArcGrid input, output;
};

enum class Arc1dFamily : int { shift = 0, mirror, recolour, fill, count, gravity, scale, denoise };
constexpr int kNumArc1dFamilies = 8;
const char* arc1d_family_name(Arc1dFamily f);
// Throws somnus::Error on an unknown name (listing the known ones).
Arc1dFamily arc1d_family_from_name(std::string_view name);
std::vector<Arc1dFamily> all_arc1d_families();

// A family with its parameters: shift (a = signed offset), recolour (a -> b), gravity
// (a = +1 right, -1 left), scale (a = factor); the others use none.
struct Arc1dRule {
  Arc1dFamily family = Arc1dFamily::mirror;
  int a = 0, b = 0;
};
// The rule applied to a row; throws when the input does not suit it (a shift would drop
// cells, a scaled row would pass 30 cells).
std::vector<int> apply_arc1d_rule(const Arc1dRule& rule, const std::vector<int>& row);

struct ArcTask {
  std::string name;  // family name, or the file stem of a real ARC task
  std::vector<ArcPair> train;
  std::vector<ArcPair> test;
  std::optional<Arc1dRule> rule;  // set for procedural tasks
};

struct Arc1dOptions {
  uint64_t seed = 0;
  int64_t min_length = 6, max_length = 12;  // row length, 5..30
  int64_t num_demonstrations = 3;
  int64_t num_tests = 1;
  std::vector<Arc1dFamily> families;  // drawn uniformly; empty = all
};

// `count` tasks, each from a family drawn from options.families.
std::vector<ArcTask> make_arc1d_tasks(int64_t count, const Arc1dOptions& options = {});
// One task of a given family (seeded by `seed`).
ArcTask make_arc1d_task(Arc1dFamily family, uint64_t seed, const Arc1dOptions& options = {});

// A seeded split of the families: `num_held_out` families for testing, the rest for
// training. Both lists are sorted by family id.
struct Arc1dFamilySplit {
  std::vector<Arc1dFamily> train, held_out;
};
Arc1dFamilySplit split_arc1d_families(int64_t num_held_out, uint64_t seed);

// ---- text form
std::string grid_to_text(const ArcGrid& grid);
// Inverse of grid_to_text (surrounding whitespace ignored); nullopt when the text is not a
// well-formed grid (ragged rows, a token that is not one digit, empty).
std::optional<ArcGrid> parse_grid_text(std::string_view text);
// Demonstrations and test input `test_index` as a prompt; the test output as the answer.
nn::PromptAnswer arc_prompt_answer(const ArcTask& task, int64_t test_index = 0);

// ---- real ARC JSON
ArcTask parse_arc_task(std::string_view json_text, const std::string& source = "<string>");
// Every *.json file of a folder, sorted by file name; task names are the file stems.
std::vector<ArcTask> load_arc_dir(const std::filesystem::path& dir);
// find_data_dir() / "arc/data" / split, split = "training" or "evaluation".
std::vector<ArcTask> load_arc_split(const std::string& split, const std::vector<std::string>& extra_data_dir_candidates = {});

}  // namespace somnus::sleep
