// Two procedural languages for the continual-translation experiment (PARADIGM §5.5, the
// paper's Fig. 5, where Manchu and Kalamang are learned from a grammar book): English
// sentences from a small grammar, and their translations under a seeded lexicon, word order
// and morphology. Scored with chrF (metrics.h).
//
// English grammar:  S -> NP_subj V NP_obj ;  NP -> "the" [Adj] N ;  N singular or plural (+s),
//   V present (+s/+es agreeing with a singular subject, bare with a plural one) or past
//   (+ed/+d). Words are regular English (12 nouns, 15 verbs, 10 adjectives), e.g.
//   "the old farmers chased the dog", "the cat greets the small birds".
// A language (LanguageSpec) has:
//   a lexicon: one invented word per English lemma (no articles: "the" is dropped);
//   a word order of subject, object and verb (SVO, SOV, VSO, VOS, OSV, OVS);
//   adjective placement before or after the noun;
//   suffixes: plural on nouns, past and present on verbs, and an object (accusative) case
//   suffix on the object noun (after the plural suffix), each possibly empty for present.
// make_language_pair(seed) draws two languages with different word orders and disjoint
// lexicons. describe_language() writes its grammar and lexicon as text for in-context
// learning. parse_english() inverts the English renderer, so tests can re-derive every
// target from its source.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "nn/data.h"

namespace somnus::sleep {

enum class WordOrder : int { SVO = 0, SOV, VSO, VOS, OSV, OVS };
const char* word_order_name(WordOrder w);  // "SVO", ...

struct LanguageSpec {
  std::string name;
  WordOrder order = WordOrder::SOV;
  bool adjective_after_noun = true;
  std::string plural_suffix, past_suffix, present_suffix, object_suffix;
  std::map<std::string, std::string> lexicon;  // English lemma -> word, for every lemma
};

// The English vocabulary (lemmas).
const std::vector<std::string>& english_nouns();
const std::vector<std::string>& english_verbs();
const std::vector<std::string>& english_adjectives();

struct NounPhrase {
  int noun = 0;        // index into english_nouns()
  int adjective = -1;  // index into english_adjectives(), -1 = none
  bool plural = false;
  bool operator==(const NounPhrase&) const = default;
};
struct Sentence {
  NounPhrase subject, object;
  int verb = 0;  // index into english_verbs()
  bool past = false;
  bool operator==(const Sentence&) const = default;
};

std::string render_english(const Sentence& s);
// The sentence of an English string made by render_english, or nullopt.
std::optional<Sentence> parse_english(std::string_view text);
// Throws somnus::Error when the lexicon lacks a lemma of the sentence.
std::string render_target(const LanguageSpec& lang, const Sentence& s);

// Two languages (seeded): distinct word orders, each different from English SVO, disjoint
// invented lexicons and suffixes.
std::pair<LanguageSpec, LanguageSpec> make_language_pair(uint64_t seed);

Sentence random_sentence(uint64_t seed);

struct TranslationPair {
  std::string source;  // English
  std::string target;
};
// Seeded train and test pairs with no test sentence in train (and no duplicates).
struct TranslationSplits {
  std::vector<TranslationPair> train, test;
};
TranslationSplits make_translation_splits(const LanguageSpec& lang, int64_t num_train, int64_t num_test, uint64_t seed);

// The grammar and lexicon as text (for in-context learning prompts).
std::string describe_language(const LanguageSpec& lang);
// "Translate to <name>: <english> =>" / " <target>".
nn::PromptAnswer translation_prompt_answer(const LanguageSpec& lang, const TranslationPair& pair);
// The same prompt preceded by describe_language() and a blank line (the ICL row).
nn::PromptAnswer translation_icl_prompt_answer(const LanguageSpec& lang, const TranslationPair& pair);

}  // namespace somnus::sleep
