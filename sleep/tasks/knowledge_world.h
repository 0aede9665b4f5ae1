// A procedural world of fictional people for the knowledge-incorporation experiment
// (PARADIGM §5.2, the paper's Table 3): passages state facts about invented entities, and
// closed-book questions ask them back. Because names and cities are invented from syllables,
// a model can know an entity's facts only from the passages it was given.
//
// Each entity has one value per attribute:
//   birthplace (an invented city), profession, birth year (1700–1999), favourite colour,
//   instrument, pet.
// Passages: one sentence per attribute, from a few templates each, in a seeded order, so
// several paraphrases of the same facts exist (continued pretraining on n passages).
// Questions: one per attribute, prompt "Q: <question>\nA:", answer " <value>".
// Open-book prompts put a passage before the question (for teachers and ICL).
//
// Splits: the pretraining entities and the new-knowledge entities have disjoint names
// (one pool of invented words), so the new facts are new. Cities are shared between splits
// (a city is a value, not an entity). Everything is a function of WorldOptions::seed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "nn/data.h"

namespace somnus::sleep {

enum class WorldAttribute : int { birthplace = 0, profession, birth_year, colour, instrument, pet };
constexpr int kNumWorldAttributes = 6;
const char* world_attribute_name(WorldAttribute a);

struct WorldEntity {
  std::string name;                 // "Vorla Kestrin"
  std::vector<std::string> values;  // kNumWorldAttributes, indexed by WorldAttribute
  const std::string& value(WorldAttribute a) const { return values[static_cast<size_t>(a)]; }
};

struct WorldQuestion {
  std::string prompt;  // "Q: Where was Vorla Kestrin born?\nA:"
  std::string answer;  // " Talmira"
  WorldAttribute attribute = WorldAttribute::birthplace;
};

// An entity with its paraphrased passages and its questions.
struct WorldDocument {
  WorldEntity entity;
  std::vector<std::string> passages;
  std::vector<WorldQuestion> questions;  // one per attribute
};

struct WorldOptions {
  uint64_t seed = 0;
  int64_t num_pretrain_entities = 200;
  int64_t num_new_entities = 50;
  int64_t passages_per_entity = 3;  // paraphrases (distinct whenever the templates allow)
  int64_t num_cities = 40;
};

struct KnowledgeWorld {
  std::vector<WorldDocument> pretrain;   // for the base model
  std::vector<WorldDocument> new_knowledge;  // disjoint names; given after pretraining
};

KnowledgeWorld make_knowledge_world(const WorldOptions& options = {});

// The question as a closed-book prompt/answer pair.
nn::PromptAnswer closed_book(const WorldQuestion& q);
// The question preceded by a passage ("<passage>\n" + prompt).
nn::PromptAnswer open_book(const std::string& passage, const WorldQuestion& q);
// All closed-book questions of the documents.
std::vector<nn::PromptAnswer> closed_book_questions(const std::vector<WorldDocument>& docs);
// All passages of the documents, concatenated into one training text (passages separated by
// blank lines), e.g. for a token-stream pretraining corpus.
std::string passages_text(const std::vector<WorldDocument>& docs);

}  // namespace somnus::sleep
