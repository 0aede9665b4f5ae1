#include "sleep/tasks/languages.h"

#include <set>
#include <unordered_set>

#include "sleep/tasks/procedural.h"
#include "tensor/format.h"

namespace somnus::sleep {

const std::vector<std::string>& english_nouns() {
  static const std::vector<std::string> v = {"cat",  "dog",   "bird", "horse", "farmer", "teacher",
                                             "king", "queen", "girl", "boy",   "sailor", "baker"};
  return v;
}
const std::vector<std::string>& english_verbs() {
  static const std::vector<std::string> v = {"chase", "help",  "follow", "watch", "push",  "pull",  "visit", "kick",
                                             "love",  "call",  "paint",  "wash",  "greet", "guard", "touch"};
  return v;
}
const std::vector<std::string>& english_adjectives() {
  static const std::vector<std::string> v = {"big",   "small", "old",   "young", "happy",
                                             "angry", "quiet", "brave", "clever", "tall"};
  return v;
}

const char* word_order_name(WordOrder w) {
  static const char* const names[] = {"SVO", "SOV", "VSO", "VOS", "OSV", "OVS"};
  const int i = static_cast<int>(w);
  SOMNUS_CHECK(i >= 0 && i < 6, "word_order_name: bad word order {}", i);
  return names[i];
}

namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string present_3sg(const std::string& v) {
  for (const char* e : {"s", "sh", "ch", "x", "z"})
    if (ends_with(v, e)) return v + "es";
  return v + "s";
}
std::string past(const std::string& v) { return ends_with(v, "e") ? v + "d" : v + "ed"; }

std::string english_np(const NounPhrase& np) {
  std::string s = "the ";
  if (np.adjective >= 0) s += english_adjectives().at(static_cast<size_t>(np.adjective)) + " ";
  s += english_nouns().at(static_cast<size_t>(np.noun));
  if (np.plural) s += "s";
  return s;
}

std::string english_verb(const Sentence& s) {
  const std::string& v = english_verbs().at(static_cast<size_t>(s.verb));
  if (s.past) return past(v);
  return s.subject.plural ? v : present_3sg(v);
}

const std::string& lookup(const LanguageSpec& lang, const std::string& lemma) {
  auto it = lang.lexicon.find(lemma);
  SOMNUS_CHECK(it != lang.lexicon.end() && !it->second.empty(), "language '{}': no word for '{}' in the lexicon",
               lang.name, lemma);
  return it->second;
}

std::string target_np(const LanguageSpec& lang, const NounPhrase& np, bool is_object) {
  std::string noun = lookup(lang, english_nouns().at(static_cast<size_t>(np.noun)));
  if (np.plural) noun += lang.plural_suffix;
  if (is_object) noun += lang.object_suffix;
  if (np.adjective < 0) return noun;
  const std::string& adj = lookup(lang, english_adjectives().at(static_cast<size_t>(np.adjective)));
  return lang.adjective_after_noun ? noun + " " + adj : adj + " " + noun;
}

std::vector<std::string> split_words(std::string_view text) {
  std::vector<std::string> words;
  std::string cur;
  for (char c : text) {
    if (c == ' ') {
      if (!cur.empty()) words.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) words.push_back(std::move(cur));
  return words;
}

int index_of(const std::vector<std::string>& v, std::string_view w) {
  for (size_t i = 0; i < v.size(); ++i)
    if (v[i] == w) return static_cast<int>(i);
  return -1;
}

// Parses "the [adj] noun[s]" at words[pos]; advances pos.
std::optional<NounPhrase> parse_np(const std::vector<std::string>& words, size_t& pos) {
  if (pos >= words.size() || words[pos] != "the") return std::nullopt;
  ++pos;
  NounPhrase np;
  if (pos < words.size()) {
    const int a = index_of(english_adjectives(), words[pos]);
    if (a >= 0) {
      np.adjective = a;
      ++pos;
    }
  }
  if (pos >= words.size()) return std::nullopt;
  const std::string& w = words[pos];
  int n = index_of(english_nouns(), w);
  if (n < 0 && ends_with(w, "s")) {
    n = index_of(english_nouns(), std::string_view(w).substr(0, w.size() - 1));
    np.plural = n >= 0;
  }
  if (n < 0) return std::nullopt;
  np.noun = n;
  ++pos;
  return np;
}

}  // namespace

std::string render_english(const Sentence& s) {
  return english_np(s.subject) + " " + english_verb(s) + " " + english_np(s.object);
}

std::optional<Sentence> parse_english(std::string_view text) {
  const std::vector<std::string> words = split_words(text);
  size_t pos = 0;
  Sentence s;
  auto subj = parse_np(words, pos);
  if (!subj || pos >= words.size()) return std::nullopt;
  s.subject = *subj;
  const std::string& v = words[pos++];
  bool found = false;
  for (size_t i = 0; i < english_verbs().size() && !found; ++i) {
    const std::string& lemma = english_verbs()[i];
    s.verb = static_cast<int>(i);
    if (v == past(lemma)) {
      s.past = true;
      found = true;
    } else if (v == (s.subject.plural ? lemma : present_3sg(lemma))) {
      s.past = false;
      found = true;
    }
  }
  if (!found) return std::nullopt;
  auto obj = parse_np(words, pos);
  if (!obj || pos != words.size()) return std::nullopt;
  s.object = *obj;
  return s;
}

std::string render_target(const LanguageSpec& lang, const Sentence& s) {
  const std::string subj = target_np(lang, s.subject, false);
  const std::string obj = target_np(lang, s.object, true);
  const std::string verb = lookup(lang, english_verbs().at(static_cast<size_t>(s.verb))) +
                           (s.past ? lang.past_suffix : lang.present_suffix);
  switch (lang.order) {
    case WordOrder::SVO: return subj + " " + verb + " " + obj;
    case WordOrder::SOV: return subj + " " + obj + " " + verb;
    case WordOrder::VSO: return verb + " " + subj + " " + obj;
    case WordOrder::VOS: return verb + " " + obj + " " + subj;
    case WordOrder::OSV: return obj + " " + subj + " " + verb;
    case WordOrder::OVS: return obj + " " + verb + " " + subj;
  }
  fail("render_target: bad word order {}", static_cast<int>(lang.order));
}

std::pair<LanguageSpec, LanguageSpec> make_language_pair(uint64_t seed) {
  TaskRng rng(seed, "languages");
  std::unordered_set<std::string> taken;
  // Reserve the English words so that no invented word is English.
  for (const auto* list : {&english_nouns(), &english_verbs(), &english_adjectives()})
    for (const auto& w : *list) taken.insert(w);
  taken.insert("the");
  std::vector<int> orders = {1, 2, 3, 4, 5};  // not SVO: differ from English
  rng.shuffle(orders);
  LanguageSpec langs[2];
  // Suffixes: short invented syllables, distinct across everything.
  for (int l = 0; l < 2; ++l) {
    LanguageSpec& g = langs[l];
    g.name = capitalize(invent_words(rng, 1, taken, 2, 2)[0]);
    g.order = static_cast<WordOrder>(orders[static_cast<size_t>(l)]);
    g.adjective_after_noun = rng.bernoulli(0.5);
    std::vector<std::string> suffixes = invent_words(rng, 4, taken, 1, 1);
    g.plural_suffix = suffixes[0];
    g.past_suffix = suffixes[1];
    g.present_suffix = rng.bernoulli(0.5) ? suffixes[2] : "";
    g.object_suffix = suffixes[3];
    for (const auto* list : {&english_nouns(), &english_verbs(), &english_adjectives()}) {
      std::vector<std::string> words = invent_words(rng, static_cast<int64_t>(list->size()), taken, 1, 2);
      for (size_t i = 0; i < list->size(); ++i) g.lexicon[(*list)[i]] = words[i];
    }
  }
  // Two languages may draw the same adjective placement; they always differ in word order.
  return {std::move(langs[0]), std::move(langs[1])};
}

Sentence random_sentence(uint64_t seed) {
  TaskRng rng(seed, "languages/sentence");
  auto np = [&] {
    NounPhrase p;
    p.noun = static_cast<int>(rng.below(english_nouns().size()));
    p.adjective = rng.bernoulli(0.5) ? static_cast<int>(rng.below(english_adjectives().size())) : -1;
    p.plural = rng.bernoulli(0.5);
    return p;
  };
  Sentence s;
  s.subject = np();
  s.object = np();
  s.verb = static_cast<int>(rng.below(english_verbs().size()));
  s.past = rng.bernoulli(0.5);
  return s;
}

TranslationSplits make_translation_splits(const LanguageSpec& lang, int64_t num_train, int64_t num_test,
                                          uint64_t seed) {
  SOMNUS_CHECK(num_train >= 0 && num_test >= 0 && num_train + num_test <= 200000,
               "make_translation_splits: sizes must be in [0, 200000] together, got {} + {}", num_train, num_test);
  TaskRng rng(seed, "languages/splits");
  std::set<std::string> seen;
  TranslationSplits out;
  while (static_cast<int64_t>(out.train.size() + out.test.size()) < num_train + num_test) {
    const Sentence s = random_sentence(rng.next_u64());
    std::string en = render_english(s);
    if (!seen.insert(en).second) continue;
    TranslationPair p{std::move(en), render_target(lang, s)};
    (static_cast<int64_t>(out.train.size()) < num_train ? out.train : out.test).push_back(std::move(p));
  }
  return out;
}

std::string describe_language(const LanguageSpec& lang) {
  auto order_words = [](WordOrder w) {
    std::string s;
    for (const char* c = word_order_name(w); *c; ++c) {
      if (!s.empty()) s += " ";
      s += *c == 'S' ? "subject" : *c == 'V' ? "verb" : "object";
    }
    return s;
  };
  auto suffix = [](const std::string& s) { return s.empty() ? std::string("no suffix") : "the suffix -" + s; };
  std::string d = fmt::format("Grammar of {}.\n", lang.name);
  d += fmt::format("Word order: {} ({}).\n", order_words(lang.order), word_order_name(lang.order));
  d += fmt::format("Adjectives come {} the noun.\n", lang.adjective_after_noun ? "after" : "before");
  d += "There are no articles: \"the\" is not translated.\n";
  d += fmt::format("Plural nouns take {}.\n", suffix(lang.plural_suffix));
  d += fmt::format("The object noun takes {}, after any plural suffix.\n", suffix(lang.object_suffix));
  d += fmt::format("Verbs in the past tense take {}; in the present tense they take {}.\n", suffix(lang.past_suffix),
                   suffix(lang.present_suffix));
  d += "Lexicon:\n";
  for (const auto* list : {&english_nouns(), &english_verbs(), &english_adjectives()})
    for (const auto& w : *list) d += fmt::format("{} = {}\n", w, lookup(lang, w));
  return d;
}

nn::PromptAnswer translation_prompt_answer(const LanguageSpec& lang, const TranslationPair& pair) {
  return {fmt::format("Translate to {}: {} =>", lang.name, pair.source), " " + pair.target};
}

nn::PromptAnswer translation_icl_prompt_answer(const LanguageSpec& lang, const TranslationPair& pair) {
  nn::PromptAnswer pa = translation_prompt_answer(lang, pair);
  pa.prompt = describe_language(lang) + "\n" + pa.prompt;
  return pa;
}

}  // namespace somnus::sleep
