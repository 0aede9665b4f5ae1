#include "sleep/tasks/arc1d.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "sleep/tasks/data_dir.h"
#include "sleep/tasks/procedural.h"
#include "tensor/format.h"

namespace somnus::sleep {

using json = nlohmann::json;
using Row = std::vector<int>;

namespace {

constexpr int kMaxArcSide = 30;

bool is_family(int f) { return f >= 0 && f < kNumArc1dFamilies; }

// A row of `len` cells, each coloured (from `palette`) with probability p; at least one.
Row sparse_row(TaskRng& rng, int64_t len, double p, const std::vector<int>& palette) {
  Row r(static_cast<size_t>(len), 0);
  for (auto& c : r)
    if (rng.bernoulli(p)) c = rng.pick(palette);
  if (std::all_of(r.begin(), r.end(), [](int c) { return c == 0; }))
    r[static_cast<size_t>(rng.below(static_cast<uint64_t>(len)))] = rng.pick(palette);
  return r;
}

const std::vector<int>& all_colours() {
  static const std::vector<int> v = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  return v;
}

Arc1dRule draw_rule(Arc1dFamily f, TaskRng& rng) {
  Arc1dRule r{f, 0, 0};
  switch (f) {
    case Arc1dFamily::shift:
      r.a = static_cast<int>(rng.range(1, 3)) * (rng.bernoulli(0.5) ? 1 : -1);
      break;
    case Arc1dFamily::recolour:
      r.a = static_cast<int>(rng.range(1, 9));
      do r.b = static_cast<int>(rng.range(1, 9));
      while (r.b == r.a);
      break;
    case Arc1dFamily::gravity:
      r.a = rng.bernoulli(0.5) ? 1 : -1;
      break;
    case Arc1dFamily::scale:
      r.a = static_cast<int>(rng.range(2, 3));
      break;
    default:
      break;
  }
  return r;
}

// An input suited to the rule, whose output differs from it.
Row draw_input(const Arc1dRule& rule, TaskRng& rng, int64_t len) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    Row r;
    switch (rule.family) {
      case Arc1dFamily::shift: {
        const int k = std::abs(rule.a);
        r = sparse_row(rng, len - k, 0.35, all_colours());
        // The cells that would fall off stay empty.
        r.insert(rule.a > 0 ? r.end() : r.begin(), static_cast<size_t>(k), 0);
        break;
      }
      case Arc1dFamily::mirror:
      case Arc1dFamily::gravity:
        r = sparse_row(rng, len, 0.35, all_colours());
        break;
      case Arc1dFamily::recolour: {
        std::vector<int> palette = {rule.a, rule.a};
        for (int c = 1; c <= 9; ++c)
          if (c != rule.a && c != rule.b) palette.push_back(c);
        r = sparse_row(rng, len, 0.5, palette);
        if (std::find(r.begin(), r.end(), rule.a) == r.end())
          r[static_cast<size_t>(rng.below(static_cast<uint64_t>(len)))] = rule.a;
        break;
      }
      case Arc1dFamily::fill: {
        // One or two segments of >= 3 cells (end cells coloured, inside empty), apart by >= 1.
        r.assign(static_cast<size_t>(len), 0);
        std::vector<int64_t> lengths;
        if (len >= 9 && rng.bernoulli(0.5)) {
          const int64_t s1 = rng.range(3, len - 4);
          lengths = {s1, rng.range(3, len - 1 - s1)};
        } else {
          lengths = {rng.range(3, len)};
        }
        int64_t slack = len - (static_cast<int64_t>(lengths.size()) - 1);
        for (int64_t l : lengths) slack -= l;
        int64_t pos = 0;
        for (int64_t l : lengths) {
          const int64_t skip = rng.range(0, slack);
          slack -= skip;
          pos += skip;
          const int c = static_cast<int>(rng.range(1, 9));
          r[static_cast<size_t>(pos)] = c;
          r[static_cast<size_t>(pos + l - 1)] = c;
          pos += l + 1;
        }
        break;
      }
      case Arc1dFamily::count: {
        r.assign(static_cast<size_t>(len), 0);
        const int64_t n = rng.range(1, std::min<int64_t>(len, 9));
        const int c = static_cast<int>(rng.range(1, 9));
        for (int64_t i : rng.sample_indices(len, n)) r[static_cast<size_t>(i)] = c;
        break;
      }
      case Arc1dFamily::scale:
        r = sparse_row(rng, std::min<int64_t>(len, kMaxArcSide / rule.a), 0.5, all_colours());
        break;
      case Arc1dFamily::denoise: {
        r.assign(static_cast<size_t>(len), 0);
        const int64_t seg = rng.range(2, std::max<int64_t>(2, len / 3));
        const int64_t p = rng.range(0, len - seg);
        const int c = static_cast<int>(rng.range(1, 9));
        for (int64_t i = p; i < p + seg; ++i) r[static_cast<size_t>(i)] = c;
        // Noise: single cells with empty neighbours.
        const int64_t noise = rng.range(1, 3);
        for (int64_t k = 0; k < noise; ++k) {
          const int64_t i = rng.range(0, len - 1);
          const bool left_free = i == 0 || r[static_cast<size_t>(i - 1)] == 0;
          const bool right_free = i == len - 1 || r[static_cast<size_t>(i + 1)] == 0;
          if (r[static_cast<size_t>(i)] == 0 && left_free && right_free)
            r[static_cast<size_t>(i)] = static_cast<int>(rng.range(1, 9));
        }
        break;
      }
    }
    if (apply_arc1d_rule(rule, r) != r) return r;
  }
  fail("arc1d: could not draw a non-trivial input for family {} at length {}", arc1d_family_name(rule.family), len);
}

// ---- JSON grids

ArcGrid parse_grid(const json& g, const std::string& where, const std::string& source) {
  if (!g.is_array() || g.empty() || g.size() > kMaxArcSide)
    fail("ARC task '{}': {} must be a list of 1..{} rows, got {}", source, where, kMaxArcSide,
         g.is_array() ? fmt::format("{} rows", g.size()) : std::string(g.type_name()));
  ArcGrid grid;
  grid.reserve(g.size());
  size_t width = 0;
  for (size_t r = 0; r < g.size(); ++r) {
    const json& row = g[r];
    if (!row.is_array() || row.empty() || row.size() > kMaxArcSide)
      fail("ARC task '{}': {} row {} must be a list of 1..{} colours, got {}", source, where, r, kMaxArcSide,
           row.is_array() ? fmt::format("{} cells", row.size()) : std::string(row.type_name()));
    if (r == 0) width = row.size();
    if (row.size() != width)
      fail("ARC task '{}': {} row {} has {} cells but row 0 has {} (grids are rectangular)", source, where, r,
           row.size(), width);
    Row out(row.size());
    for (size_t c = 0; c < row.size(); ++c) {
      const json& v = row[c];
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 9)
        fail("ARC task '{}': {} cell ({}, {}) must be an integer colour 0-9, got {}", source, where, r, c, v.dump());
      out[c] = static_cast<int>(v.get<int64_t>());
    }
    grid.push_back(std::move(out));
  }
  return grid;
}

std::vector<ArcPair> parse_pairs(const json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end()) fail("ARC task '{}': missing field '{}'", source, key);
  if (!it->is_array() || it->empty())
    fail("ARC task '{}': field '{}' must be a non-empty list of {{\"input\", \"output\"}} pairs", source, key);
  std::vector<ArcPair> pairs;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& p = (*it)[i];
    if (!p.is_object() || !p.contains("input") || !p.contains("output"))
      fail("ARC task '{}': {}[{}] must be an object with 'input' and 'output' grids", source, key, i);
    pairs.push_back({parse_grid(p["input"], fmt::format("{}[{}].input", key, i), source),
                     parse_grid(p["output"], fmt::format("{}[{}].output", key, i), source)});
  }
  return pairs;
}

}  // namespace

const char* arc1d_family_name(Arc1dFamily f) {
  static const char* const names[] = {"shift", "mirror", "recolour", "fill", "count", "gravity", "scale", "denoise"};
  SOMNUS_CHECK(is_family(static_cast<int>(f)), "arc1d: bad family id {}", static_cast<int>(f));
  return names[static_cast<int>(f)];
}

Arc1dFamily arc1d_family_from_name(std::string_view name) {
  std::string known;
  for (int f = 0; f < kNumArc1dFamilies; ++f) {
    if (name == arc1d_family_name(static_cast<Arc1dFamily>(f))) return static_cast<Arc1dFamily>(f);
    known += (f ? ", " : "") + std::string(arc1d_family_name(static_cast<Arc1dFamily>(f)));
  }
  fail("arc1d: unknown task family '{}' (known: {})", name, known);
}

std::vector<Arc1dFamily> all_arc1d_families() {
  std::vector<Arc1dFamily> v;
  for (int f = 0; f < kNumArc1dFamilies; ++f) v.push_back(static_cast<Arc1dFamily>(f));
  return v;
}

std::vector<int> apply_arc1d_rule(const Arc1dRule& rule, const std::vector<int>& row) {
  const int64_t n = static_cast<int64_t>(row.size());
  for (int c : row) SOMNUS_CHECK(c >= 0 && c <= 9, "apply_arc1d_rule: colour {} is not in 0-9", c);
  Row out(row.size(), 0);
  switch (rule.family) {
    case Arc1dFamily::shift:
      for (int64_t i = 0; i < n; ++i) {
        if (row[static_cast<size_t>(i)] == 0) continue;
        const int64_t j = i + rule.a;
        SOMNUS_CHECK(j >= 0 && j < n, "apply_arc1d_rule: shift by {} drops cell {} of a row of {}", rule.a, i, n);
        out[static_cast<size_t>(j)] = row[static_cast<size_t>(i)];
      }
      return out;
    case Arc1dFamily::mirror:
      return Row(row.rbegin(), row.rend());
    case Arc1dFamily::recolour:
      for (int64_t i = 0; i < n; ++i)
        out[static_cast<size_t>(i)] = row[static_cast<size_t>(i)] == rule.a ? rule.b : row[static_cast<size_t>(i)];
      return out;
    case Arc1dFamily::fill: {
      out = row;
      // Pair each coloured cell with the next coloured cell; equal colours fill the gap.
      int64_t i = 0;
      while (i < n) {
        if (row[static_cast<size_t>(i)] == 0) {
          ++i;
          continue;
        }
        int64_t j = i + 1;
        while (j < n && row[static_cast<size_t>(j)] == 0) ++j;
        if (j < n && row[static_cast<size_t>(j)] == row[static_cast<size_t>(i)]) {
          for (int64_t k = i; k <= j; ++k) out[static_cast<size_t>(k)] = row[static_cast<size_t>(i)];
          i = j + 1;
        } else {
          i = j;
        }
      }
      return out;
    }
    case Arc1dFamily::count: {
      int colour = 0;
      int64_t count = 0;
      for (int c : row)
        if (c != 0) {
          SOMNUS_CHECK(colour == 0 || c == colour, "apply_arc1d_rule: count expects one colour, got {} and {}",
                       colour, c);
          colour = c;
          ++count;
        }
      SOMNUS_CHECK(count > 0, "apply_arc1d_rule: count needs at least one coloured cell");
      return Row(static_cast<size_t>(count), colour);
    }
    case Arc1dFamily::gravity: {
      Row cells;
      for (int c : row)
        if (c != 0) cells.push_back(c);
      const size_t start = rule.a > 0 ? row.size() - cells.size() : 0;
      std::copy(cells.begin(), cells.end(), out.begin() + static_cast<int64_t>(start));
      return out;
    }
    case Arc1dFamily::scale: {
      SOMNUS_CHECK(rule.a >= 1 && n * rule.a <= kMaxArcSide,
                   "apply_arc1d_rule: scaling a row of {} by {} passes {} cells", n, rule.a, kMaxArcSide);
      out.clear();
      for (int c : row) out.insert(out.end(), static_cast<size_t>(rule.a), c);
      return out;
    }
    case Arc1dFamily::denoise:
      for (int64_t i = 0; i < n; ++i) {
        const int c = row[static_cast<size_t>(i)];
        const bool left = i > 0 && row[static_cast<size_t>(i - 1)] == c;
        const bool right = i + 1 < n && row[static_cast<size_t>(i + 1)] == c;
        out[static_cast<size_t>(i)] = (left || right) ? c : 0;
      }
      return out;
  }
  fail("apply_arc1d_rule: bad family id {}", static_cast<int>(rule.family));
}

ArcTask make_arc1d_task(Arc1dFamily family, uint64_t seed, const Arc1dOptions& opt) {
  // 5 cells leave every family room for a non-trivial pair (denoise needs a run of 2 and an
  // isolated cell; shift by 3 keeps 2 cells).
  SOMNUS_CHECK(opt.min_length >= 5 && opt.min_length <= opt.max_length && opt.max_length <= kMaxArcSide,
               "arc1d: lengths must satisfy 5 <= min_length <= max_length <= 30, got {}..{}", opt.min_length,
               opt.max_length);
  SOMNUS_CHECK(opt.num_demonstrations >= 1 && opt.num_tests >= 1,
               "arc1d: need at least one demonstration and one test, got {} and {}", opt.num_demonstrations,
               opt.num_tests);
  TaskRng rng(seed, "arc1d/task");
  ArcTask t;
  t.name = arc1d_family_name(family);
  t.rule = draw_rule(family, rng);
  for (int64_t i = 0; i < opt.num_demonstrations + opt.num_tests; ++i) {
    const Row in = draw_input(*t.rule, rng, rng.range(opt.min_length, opt.max_length));
    ArcPair p{{in}, {apply_arc1d_rule(*t.rule, in)}};
    (i < opt.num_demonstrations ? t.train : t.test).push_back(std::move(p));
  }
  return t;
}

std::vector<ArcTask> make_arc1d_tasks(int64_t count, const Arc1dOptions& opt) {
  SOMNUS_CHECK(count >= 0, "make_arc1d_tasks: negative count {}", count);
  const std::vector<Arc1dFamily> families = opt.families.empty() ? all_arc1d_families() : opt.families;
  TaskRng rng(opt.seed, "arc1d/tasks");
  std::vector<ArcTask> tasks;
  for (int64_t i = 0; i < count; ++i) {
    const Arc1dFamily f = rng.pick(families);
    tasks.push_back(make_arc1d_task(f, rng.next_u64(), opt));
  }
  return tasks;
}

Arc1dFamilySplit split_arc1d_families(int64_t num_held_out, uint64_t seed) {
  SOMNUS_CHECK(num_held_out >= 0 && num_held_out < kNumArc1dFamilies,
               "split_arc1d_families: hold out 0..{} families, got {}", kNumArc1dFamilies - 1, num_held_out);
  std::vector<Arc1dFamily> all = all_arc1d_families();
  TaskRng rng(seed, "arc1d/split");
  rng.shuffle(all);
  Arc1dFamilySplit s;
  s.held_out.assign(all.begin(), all.begin() + num_held_out);
  s.train.assign(all.begin() + num_held_out, all.end());
  std::sort(s.held_out.begin(), s.held_out.end());
  std::sort(s.train.begin(), s.train.end());
  return s;
}

std::string grid_to_text(const ArcGrid& grid) {
  std::string s;
  for (size_t r = 0; r < grid.size(); ++r) {
    if (r) s += '\n';
    for (size_t c = 0; c < grid[r].size(); ++c) {
      if (c) s += ' ';
      s += static_cast<char>('0' + grid[r][c]);
    }
  }
  return s;
}

std::optional<ArcGrid> parse_grid_text(std::string_view text) {
  ArcGrid g;
  Row row;
  auto end_row = [&]() -> bool {
    if (row.empty()) return false;
    if (!g.empty() && row.size() != g[0].size()) return false;
    g.push_back(std::move(row));
    row.clear();
    return true;
  };
  // Trim surrounding whitespace; inside, ' ' separates cells and '\n' rows.
  size_t b = 0, e = text.size();
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (b < e && ws(text[b])) ++b;
  while (e > b && ws(text[e - 1])) --e;
  if (b == e) return std::nullopt;
  for (size_t i = b; i < e; ++i) {
    const char c = text[i];
    if (c >= '0' && c <= '9') {
      if (i > b && text[i - 1] >= '0' && text[i - 1] <= '9') return std::nullopt;  // "12" is not a colour
      row.push_back(c - '0');
    } else if (c == '\n') {
      if (!end_row()) return std::nullopt;
    } else if (c != ' ' && c != '\r') {
      return std::nullopt;
    }
  }
  if (!end_row()) return std::nullopt;
  return g;
}

nn::PromptAnswer arc_prompt_answer(const ArcTask& task, int64_t test_index) {
  SOMNUS_CHECK(test_index >= 0 && test_index < static_cast<int64_t>(task.test.size()),
               "arc_prompt_answer: test index {} out of range (task '{}' has {} tests)", test_index, task.name,
               task.test.size());
  std::string prompt;
  for (const auto& p : task.train)
    prompt += "in: " + grid_to_text(p.input) + "\nout: " + grid_to_text(p.output) + "\n";
  const ArcPair& t = task.test[static_cast<size_t>(test_index)];
  prompt += "in: " + grid_to_text(t.input) + "\nout:";
  return {prompt, " " + grid_to_text(t.output)};
}

ArcTask parse_arc_task(std::string_view json_text, const std::string& source) {
  json j;
  try {
    j = json::parse(json_text.begin(), json_text.end());
  } catch (const json::exception& e) {
    fail("ARC task '{}': not valid JSON (truncated or corrupt file?): {}", source, e.what());
  }
  if (!j.is_object()) fail("ARC task '{}': the top level must be an object with 'train' and 'test'", source);
  ArcTask t;
  t.name = source;
  t.train = parse_pairs(j, "train", source);
  t.test = parse_pairs(j, "test", source);
  return t;
}

std::vector<ArcTask> load_arc_dir(const std::filesystem::path& dir) {
  std::error_code ec;
  SOMNUS_CHECK(std::filesystem::is_directory(dir, ec), "ARC: '{}' is not a directory", dir.string());
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir))
    if (entry.is_regular_file() && entry.path().extension() == ".json") files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  SOMNUS_CHECK(!files.empty(), "ARC: no .json files in '{}'", dir.string());
  std::vector<ArcTask> tasks;
  tasks.reserve(files.size());
  for (const auto& f : files) {
    ArcTask t = parse_arc_task(read_text_file(f), f.string());
    t.name = f.stem().string();
    tasks.push_back(std::move(t));
  }
  return tasks;
}

std::vector<ArcTask> load_arc_split(const std::string& split, const std::vector<std::string>& extra) {
  SOMNUS_CHECK(split == "training" || split == "evaluation", "ARC: split must be 'training' or 'evaluation', got '{}'",
               split);
  return load_arc_dir(data_path("arc/data/" + split, extra));
}

}  // namespace somnus::sleep
