// libFuzzer target: the ARC task loader (parse_arc_task, sleep/tasks/arc1d.h) and the grid
// text parser. A parsed task's grids are within 1..30 x 1..30 with colours 0-9, print as
// text and read back unchanged; parse_grid_text on the raw bytes never throws.
#include "fuzz/fuzz_common.h"
#include "sleep/tasks/arc1d.h"

using namespace somnus;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = fuzz::as_view(data, size);
  if (const auto g = sleep::parse_grid_text(text)) {
    SOMNUS_FUZZ_ASSERT(sleep::parse_grid_text(sleep::grid_to_text(*g)) == g);
  }
  sleep::ArcTask task;
  try {
    task = sleep::parse_arc_task(text, "<fuzz>");
  } catch (const Error&) {
    return 0;
  }
  auto check = [](const sleep::ArcGrid& g) {
    SOMNUS_FUZZ_ASSERT(!g.empty() && g.size() <= 30);
    for (const auto& row : g) {
      SOMNUS_FUZZ_ASSERT(row.size() == g[0].size() && !row.empty() && row.size() <= 30);
      for (int c : row) SOMNUS_FUZZ_ASSERT(c >= 0 && c <= 9);
    }
    SOMNUS_FUZZ_ASSERT(sleep::parse_grid_text(sleep::grid_to_text(g)) == g);
  };
  for (const auto& p : task.train) {
    check(p.input);
    check(p.output);
  }
  for (const auto& p : task.test) {
    check(p.input);
    check(p.output);
  }
  if (!task.test.empty()) (void)sleep::arc_prompt_answer(task, 0);
  return 0;
}
