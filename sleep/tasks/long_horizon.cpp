#include "sleep/tasks/long_horizon.h"

#include <algorithm>
#include <map>
#include <unordered_set>

#include "sleep/tasks/data_dir.h"
#include "sleep/tasks/procedural.h"
#include "tensor/format.h"

namespace somnus::sleep {

const std::vector<std::string>& fact_chain_people() {
  static const std::vector<std::string> v = {"Mary", "John", "Sandra", "Daniel", "Fred", "Julie", "Bill", "Emma"};
  return v;
}
const std::vector<std::string>& fact_chain_locations() {
  static const std::vector<std::string> v = {"kitchen", "garden",  "hallway", "bathroom",
                                             "bedroom", "office",  "cellar",  "garage"};
  return v;
}
const std::vector<std::string>& fact_chain_objects() {
  static const std::vector<std::string> v = {"apple", "football", "milk", "key", "book", "lamp", "hat", "box"};
  return v;
}

FillerText::FillerText(std::string corpus) : corpus_(std::move(corpus)) {
  int64_t start = 0;
  const int64_t n = static_cast<int64_t>(corpus_.size());
  for (int64_t i = 0; i <= n; ++i) {
    if (i == n || corpus_[static_cast<size_t>(i)] == '\n') {
      if (i > start) line_starts_.push_back(start);
      start = i + 1;
    }
  }
  SOMNUS_CHECK(!line_starts_.empty(), "FillerText: the corpus ({} bytes) has no non-empty lines", corpus_.size());
}

std::vector<std::string> FillerText::take_lines(uint64_t seed, int64_t chars) const {
  std::vector<std::string> lines;
  if (chars <= 0) return lines;
  TaskRng rng(seed, "filler/start");
  size_t li = static_cast<size_t>(rng.below(line_starts_.size()));
  int64_t total = 0;
  for (size_t taken = 0; taken < line_starts_.size() * 4; ++taken) {
    const int64_t s = line_starts_[li];
    const size_t e = corpus_.find('\n', static_cast<size_t>(s));
    std::string line = corpus_.substr(static_cast<size_t>(s), (e == std::string::npos ? corpus_.size() : e) -
                                                                  static_cast<size_t>(s));
    line += '\n';
    if (!lines.empty() && total + static_cast<int64_t>(line.size()) > chars) break;
    total += static_cast<int64_t>(line.size());
    lines.push_back(std::move(line));
    if (total >= chars) break;
    li = (li + 1) % line_starts_.size();
  }
  return lines;
}

std::string load_tinyshakespeare(const std::vector<std::string>& extra) {
  return read_text_file(data_path("tinyshakespeare/input.txt", extra));
}

namespace {

// Filler of (context_chars - facts) bytes with the facts (in order) at random line
// boundaries.
void weave(LongHorizonExample& ex, const FillerText& filler, TaskRng& rng, uint64_t filler_seed, int64_t context_chars,
           const std::vector<std::string>& facts) {
  int64_t fact_bytes = 0;
  for (const auto& f : facts) fact_bytes += static_cast<int64_t>(f.size()) + 1;
  const std::vector<std::string> lines = filler.take_lines(filler_seed, std::max<int64_t>(0, context_chars - fact_bytes));
  // Slot of each fact among the lines.size() + 1 gaps, sorted so that facts keep their order.
  std::vector<int64_t> slots;
  for (size_t i = 0; i < facts.size(); ++i) slots.push_back(static_cast<int64_t>(rng.below(lines.size() + 1)));
  std::sort(slots.begin(), slots.end());
  size_t next_fact = 0;
  for (size_t gap = 0; gap <= lines.size(); ++gap) {
    while (next_fact < facts.size() && slots[next_fact] == static_cast<int64_t>(gap)) {
      ex.fact_offsets.push_back(static_cast<int64_t>(ex.context.size()));
      ex.context += facts[next_fact] + "\n";
      ex.facts.push_back(facts[next_fact]);
      ++next_fact;
    }
    if (gap < lines.size()) ex.context += lines[gap];
  }
}

}  // namespace

LongHorizonExample make_needle_example(const FillerText& filler, const NeedleOptions& opt) {
  SOMNUS_CHECK(opt.num_needles >= 1 && opt.num_needles <= 1000 && opt.num_questions >= 1 &&
                   opt.num_questions <= opt.num_needles && opt.context_chars >= 0,
               "make_needle_example: need 1 <= num_questions ({}) <= num_needles ({}) <= 1000 and context_chars >= 0",
               opt.num_questions, opt.num_needles);
  TaskRng rng(opt.seed, "needle");
  std::unordered_set<std::string> taken;
  std::vector<std::string> keys = invent_words(rng, opt.num_needles, taken, 2, 3);
  std::vector<int64_t> values;
  std::unordered_set<int64_t> used;
  while (static_cast<int64_t>(values.size()) < opt.num_needles) {
    const int64_t v = rng.range(1000, 9999);
    if (used.insert(v).second) values.push_back(v);
  }
  std::vector<std::string> facts;
  for (int64_t i = 0; i < opt.num_needles; ++i) {
    keys[static_cast<size_t>(i)] = capitalize(keys[static_cast<size_t>(i)]);
    facts.push_back(fmt::format("The secret number of {} is {}.", keys[static_cast<size_t>(i)], values[static_cast<size_t>(i)]));
  }
  LongHorizonExample ex;
  weave(ex, filler, rng, derive_seed(opt.seed, "needle/filler"), opt.context_chars, facts);
  for (int64_t i : rng.sample_indices(opt.num_needles, opt.num_questions))
    ex.questions.push_back({fmt::format("Q: What is the secret number of {}?\nA:", keys[static_cast<size_t>(i)]),
                            fmt::format(" {}", values[static_cast<size_t>(i)])});
  return ex;
}

LongHorizonExample make_fact_chain_example(const FillerText& filler, const FactChainOptions& opt) {
  const auto& people_all = fact_chain_people();
  const auto& places = fact_chain_locations();
  const auto& objects_all = fact_chain_objects();
  SOMNUS_CHECK(opt.num_people >= 1 && opt.num_people <= static_cast<int64_t>(people_all.size()) &&
                   opt.num_objects >= 0 && opt.num_objects <= static_cast<int64_t>(objects_all.size()) &&
                   opt.num_events >= 1 && opt.num_questions >= 1 &&
                   opt.num_questions <= opt.num_people + opt.num_objects && opt.context_chars >= 0,
               "make_fact_chain_example: bad options (people {}, objects {}, events {}, questions {})", opt.num_people,
               opt.num_objects, opt.num_events, opt.num_questions);
  TaskRng rng(opt.seed, "facts");
  std::vector<std::string> people, objects;
  for (int64_t i : rng.sample_indices(static_cast<int64_t>(people_all.size()), opt.num_people))
    people.push_back(people_all[static_cast<size_t>(i)]);
  for (int64_t i : rng.sample_indices(static_cast<int64_t>(objects_all.size()), opt.num_objects))
    objects.push_back(objects_all[static_cast<size_t>(i)]);

  static const std::vector<std::string> move_verbs = {"went", "travelled", "journeyed", "moved"};
  static const std::vector<std::string> take_verbs = {"picked up", "grabbed", "took"};
  static const std::vector<std::string> drop_verbs = {"dropped", "put down", "left"};

  std::map<std::string, std::string> person_at;   // person -> location (once known)
  std::map<std::string, std::string> object_at;   // object -> location where it lies (when not held)
  std::map<std::string, std::string> held_by;     // object -> person
  std::vector<std::string> facts;
  for (const auto& o : objects) {
    object_at[o] = rng.pick(places);
    facts.push_back(fmt::format("The {} is in the {}.", o, object_at[o]));
  }
  // Everyone shows up somewhere first, so every person can be asked about.
  std::vector<std::string> arrival = people;
  rng.shuffle(arrival);
  for (const auto& p : arrival) {
    person_at[p] = rng.pick(places);
    facts.push_back(fmt::format("{} {} to the {}.", p, rng.pick(move_verbs), person_at[p]));
  }
  for (int64_t e = 0; e < opt.num_events; ++e) {
    const std::string& p = rng.pick(people);
    std::vector<std::string> here, holding;
    for (const auto& o : objects) {
      if (held_by.count(o)) {
        if (held_by[o] == p) holding.push_back(o);
      } else if (object_at[o] == person_at[p]) {
        here.push_back(o);
      }
    }
    const double u = rng.uniform();
    if (!here.empty() && u < 0.35) {
      const std::string& o = rng.pick(here);
      held_by[o] = p;
      object_at.erase(o);
      facts.push_back(fmt::format("{} {} the {}.", p, rng.pick(take_verbs), o));
    } else if (!holding.empty() && u < 0.55) {
      const std::string& o = rng.pick(holding);
      held_by.erase(o);
      object_at[o] = person_at[p];
      facts.push_back(fmt::format("{} {} the {}.", p, rng.pick(drop_verbs), o));
    } else {
      std::string to;
      do to = rng.pick(places);
      while (to == person_at[p]);
      person_at[p] = to;
      facts.push_back(fmt::format("{} {} to the {}.", p, rng.pick(move_verbs), to));
    }
  }
  LongHorizonExample ex;
  weave(ex, filler, rng, derive_seed(opt.seed, "facts/filler"), opt.context_chars, facts);
  // Candidates: people, then objects (held objects first: they need the two-hop chain).
  std::vector<std::pair<std::string, std::string>> candidates;  // (question, answer)
  for (const auto& p : people) candidates.emplace_back(fmt::format("Q: Where is {}?\nA:", p), " " + person_at[p]);
  for (const auto& o : objects) {
    const std::string at = held_by.count(o) ? person_at[held_by[o]] : object_at[o];
    candidates.emplace_back(fmt::format("Q: Where is the {}?\nA:", o), " " + at);
  }
  for (int64_t i : rng.sample_indices(static_cast<int64_t>(candidates.size()), opt.num_questions))
    ex.questions.push_back({candidates[static_cast<size_t>(i)].first, candidates[static_cast<size_t>(i)].second});
  return ex;
}

std::vector<LongHorizonExample> make_needle_examples(const FillerText& filler, int64_t count, NeedleOptions opt) {
  std::vector<LongHorizonExample> out;
  const uint64_t base = opt.seed;
  for (int64_t i = 0; i < count; ++i) {
    opt.seed = derive_seed(base, fmt::format("needle/{}", i));
    out.push_back(make_needle_example(filler, opt));
  }
  return out;
}

std::vector<LongHorizonExample> make_fact_chain_examples(const FillerText& filler, int64_t count,
                                                         FactChainOptions opt) {
  std::vector<LongHorizonExample> out;
  const uint64_t base = opt.seed;
  for (int64_t i = 0; i < count; ++i) {
    opt.seed = derive_seed(base, fmt::format("facts/{}", i));
    out.push_back(make_fact_chain_example(filler, opt));
  }
  return out;
}

std::vector<nn::PromptAnswer> long_horizon_prompt_answers(const LongHorizonExample& ex) {
  std::vector<nn::PromptAnswer> out;
  for (const auto& q : ex.questions) out.push_back({ex.context + "\n" + q.prompt, q.answer});
  return out;
}

}  // namespace somnus::sleep
