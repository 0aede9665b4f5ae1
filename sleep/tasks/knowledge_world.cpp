#include "sleep/tasks/knowledge_world.h"

#include <unordered_set>

#include "sleep/tasks/procedural.h"
#include "tensor/format.h"

namespace somnus::sleep {

namespace {

const std::vector<std::string>& professions() {
  static const std::vector<std::string> v = {"baker",   "sailor",   "painter",  "carpenter", "weaver", "astronomer",
                                             "potter",  "merchant", "teacher",  "gardener",  "doctor", "blacksmith",
                                             "miller",  "poet",     "engineer", "librarian"};
  return v;
}
const std::vector<std::string>& colours() {
  static const std::vector<std::string> v = {"red",    "blue",  "green", "yellow", "purple", "orange",
                                             "silver", "black", "white", "brown",  "pink",   "grey"};
  return v;
}
const std::vector<std::string>& instruments() {
  static const std::vector<std::string> v = {"violin", "flute", "harp",     "drum",    "cello", "lute",
                                             "piano",  "horn",  "clarinet", "trumpet", "oboe",  "guitar"};
  return v;
}
const std::vector<std::string>& pets() {
  static const std::vector<std::string> v = {"cat",    "dog",  "parrot", "tortoise", "rabbit", "goat",
                                             "falcon", "horse", "owl",   "ferret",   "lizard", "goose"};
  return v;
}

// Sentence templates per attribute; {n} = name, {v} = value.
const std::vector<std::vector<std::string>>& fact_templates() {
  static const std::vector<std::vector<std::string>> t = {
      {"{n} was born in {v}.", "The birthplace of {n} is {v}.", "{n} comes from the city of {v}."},
      {"{n} works as a {v}.", "By trade, {n} is a {v}.", "{n} earns a living as a {v}."},
      {"{n} was born in the year {v}.", "The year of {n}'s birth was {v}.", "{n} came into the world in {v}."},
      {"The favourite colour of {n} is {v}.", "{n} likes the colour {v} best.", "Of all colours, {n} prefers {v}."},
      {"{n} plays the {v}.", "The instrument of {n} is the {v}.", "In the evenings {n} practises the {v}."},
      {"{n} keeps a {v} as a pet.", "The pet of {n} is a {v}.", "{n} lives with a pet {v}."},
  };
  return t;
}
const std::vector<std::string>& question_templates() {
  static const std::vector<std::string> q = {
      "Where was {n} born?", "What is the profession of {n}?", "In which year was {n} born?",
      "What is the favourite colour of {n}?", "Which instrument does {n} play?", "What pet does {n} keep?"};
  return q;
}

std::string fill_template(const std::string& tmpl, const std::string& name, const std::string& value) {
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl.compare(i, 3, "{n}") == 0) {
      out += name;
      i += 2;
    } else if (tmpl.compare(i, 3, "{v}") == 0) {
      out += value;
      i += 2;
    } else {
      out += tmpl[i];
    }
  }
  return out;
}

WorldDocument make_document(WorldEntity e, int64_t passages, TaskRng& rng) {
  WorldDocument d;
  const auto& tmpl = fact_templates();
  std::unordered_set<std::string> seen;
  for (int64_t p = 0; p < passages; ++p) {
    std::string passage;
    // Retry a few times for a paraphrase not given before (3^6 template choices x orders).
    for (int attempt = 0; attempt < 8; ++attempt) {
      std::vector<int> order(kNumWorldAttributes);
      for (int a = 0; a < kNumWorldAttributes; ++a) order[static_cast<size_t>(a)] = a;
      rng.shuffle(order);
      passage.clear();
      for (int a : order) {
        const auto& choices = tmpl[static_cast<size_t>(a)];
        if (!passage.empty()) passage += ' ';
        passage += fill_template(rng.pick(choices), e.name, e.values[static_cast<size_t>(a)]);
      }
      if (!seen.count(passage)) break;
    }
    seen.insert(passage);
    d.passages.push_back(passage);
  }
  for (int a = 0; a < kNumWorldAttributes; ++a)
    d.questions.push_back({"Q: " + fill_template(question_templates()[static_cast<size_t>(a)], e.name, "") + "\nA:",
                           " " + e.values[static_cast<size_t>(a)], static_cast<WorldAttribute>(a)});
  d.entity = std::move(e);
  return d;
}

}  // namespace

const char* world_attribute_name(WorldAttribute a) {
  static const char* const names[] = {"birthplace", "profession", "birth_year", "colour", "instrument", "pet"};
  const int i = static_cast<int>(a);
  SOMNUS_CHECK(i >= 0 && i < kNumWorldAttributes, "world_attribute_name: bad attribute {}", i);
  return names[i];
}

KnowledgeWorld make_knowledge_world(const WorldOptions& opt) {
  SOMNUS_CHECK(opt.num_pretrain_entities >= 0 && opt.num_new_entities >= 0 && opt.passages_per_entity >= 1 &&
                   opt.num_cities >= 1,
               "make_knowledge_world: bad options (entities {} + {}, passages {}, cities {})",
               opt.num_pretrain_entities, opt.num_new_entities, opt.passages_per_entity, opt.num_cities);
  TaskRng name_rng(opt.seed, "world/names"), value_rng(opt.seed, "world/values"), text_rng(opt.seed, "world/text");
  std::unordered_set<std::string> taken;
  std::vector<std::string> cities = invent_words(name_rng, opt.num_cities, taken, 2, 3);
  for (auto& c : cities) c = capitalize(c);
  const int64_t total = opt.num_pretrain_entities + opt.num_new_entities;
  // Full names "Given Family"; given names and family names come from one taken-set, so every
  // full name is unique and no name part is a city.
  std::vector<std::string> given = invent_words(name_rng, total, taken, 2, 2);
  std::vector<std::string> family = invent_words(name_rng, total, taken, 2, 3);
  KnowledgeWorld w;
  for (int64_t i = 0; i < total; ++i) {
    WorldEntity e;
    e.name = capitalize(given[static_cast<size_t>(i)]) + " " + capitalize(family[static_cast<size_t>(i)]);
    e.values = {value_rng.pick(cities),      value_rng.pick(professions()),
                std::to_string(value_rng.range(1700, 1999)), value_rng.pick(colours()),
                value_rng.pick(instruments()), value_rng.pick(pets())};
    WorldDocument d = make_document(std::move(e), opt.passages_per_entity, text_rng);
    (i < opt.num_pretrain_entities ? w.pretrain : w.new_knowledge).push_back(std::move(d));
  }
  return w;
}

nn::PromptAnswer closed_book(const WorldQuestion& q) { return {q.prompt, q.answer}; }

nn::PromptAnswer open_book(const std::string& passage, const WorldQuestion& q) {
  return {passage + "\n" + q.prompt, q.answer};
}

std::vector<nn::PromptAnswer> closed_book_questions(const std::vector<WorldDocument>& docs) {
  std::vector<nn::PromptAnswer> out;
  for (const auto& d : docs)
    for (const auto& q : d.questions) out.push_back(closed_book(q));
  return out;
}

std::string passages_text(const std::vector<WorldDocument>& docs) {
  std::string out;
  for (const auto& d : docs)
    for (const auto& p : d.passages) {
      if (!out.empty()) out += "\n\n";
      out += p;
    }
  return out;
}

}  // namespace somnus::sleep
