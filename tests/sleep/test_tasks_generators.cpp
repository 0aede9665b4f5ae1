// The procedural generators: the knowledge world, the long-horizon tasks (needles and
// bAbI-style fact chains in filler text) and the two procedural languages. Each: same seed
// -> identical output, another seed -> different output, and valid data (answers re-derived
// from the world, from the facts in the context, or from the grammar).
#include <gtest/gtest.h>

#include <map>
#include <regex>
#include <set>

#include "sleep/tasks/data_dir.h"
#include "sleep/tasks/knowledge_world.h"
#include "sleep/tasks/languages.h"
#include "sleep/tasks/long_horizon.h"
#include "tensor/error.h"

using namespace somnus;
using namespace somnus::sleep;

namespace {

std::vector<std::string> source_candidates() {
#ifdef SOMNUS_SOURCE_DIR
  return {std::string(SOMNUS_SOURCE_DIR) + "/../shared/data"};
#else
  return {};
#endif
}

std::string world_digest(const KnowledgeWorld& w) {
  std::string s;
  for (const auto* split : {&w.pretrain, &w.new_knowledge})
    for (const auto& d : *split) {
      s += d.entity.name + "|";
      for (const auto& p : d.passages) s += p + "|";
      for (const auto& q : d.questions) s += q.prompt + q.answer + "|";
    }
  return s;
}

// 300 numbered filler lines: fast, and the facts cannot be confused with them.
FillerText synthetic_filler() {
  std::string text;
  for (int i = 0; i < 300; ++i) text += "filler line number " + std::to_string(i) + " of the haystack\n";
  return FillerText(text);
}

std::string digest(const LongHorizonExample& ex) {
  std::string s = ex.context;
  for (const auto& q : ex.questions) s += "|" + q.prompt + q.answer;
  return s;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t e = text.find('\n', start);
    if (e == std::string::npos) e = text.size();
    out.push_back(text.substr(start, e - start));
    start = e + 1;
  }
  return out;
}

// Replays the fact lines of a context (an independent reading of the story) and answers
// "Where is X?" for people and objects.
std::map<std::string, std::string> replay_facts(const std::string& context) {
  const std::regex place(R"(^The (\w+) is in the (\w+)\.$)");
  const std::regex move(R"(^(\w+) (went|travelled|journeyed|moved) to the (\w+)\.$)");
  const std::regex take(R"(^(\w+) (picked up|grabbed|took) the (\w+)\.$)");
  const std::regex drop(R"(^(\w+) (dropped|put down|left) the (\w+)\.$)");
  std::map<std::string, std::string> person_at, object_at, holder;
  std::smatch m;
  for (const auto& line : lines_of(context)) {
    if (std::regex_match(line, m, place)) {
      object_at[m[1]] = m[2];
    } else if (std::regex_match(line, m, move)) {
      person_at[m[1]] = m[3];
    } else if (std::regex_match(line, m, take)) {
      EXPECT_EQ(object_at[m[3]], person_at[m[1]]) << "picked up where it is not: " << line;
      holder[m[3]] = m[1];
    } else if (std::regex_match(line, m, drop)) {
      EXPECT_EQ(holder[m[3]], std::string(m[1])) << "dropped what is not held: " << line;
      holder.erase(m[3]);
      object_at[m[3]] = person_at[m[1]];
    }
  }
  std::map<std::string, std::string> where;
  for (const auto& [p, l] : person_at) where["Q: Where is " + p + "?\nA:"] = " " + l;
  for (const auto& [o, l] : object_at)
    where["Q: Where is the " + o + "?\nA:"] = " " + (holder.count(o) ? person_at[holder[o]] : l);
  return where;
}

}  // namespace

// ------------------------------------------------------------------ knowledge world

TEST(KnowledgeWorld, SeededValidAndDisjoint) {
  WorldOptions opt;
  opt.seed = 4;
  opt.num_pretrain_entities = 60;
  opt.num_new_entities = 20;
  const KnowledgeWorld w = make_knowledge_world(opt), again = make_knowledge_world(opt);
  EXPECT_EQ(world_digest(w), world_digest(again));
  opt.seed = 5;
  EXPECT_NE(world_digest(w), world_digest(make_knowledge_world(opt)));

  ASSERT_EQ(w.pretrain.size(), 60u);
  ASSERT_EQ(w.new_knowledge.size(), 20u);
  std::set<std::string> pre_names, new_names;
  for (const auto& d : w.pretrain) pre_names.insert(d.entity.name);
  for (const auto& d : w.new_knowledge) new_names.insert(d.entity.name);
  EXPECT_EQ(pre_names.size(), 60u);
  EXPECT_EQ(new_names.size(), 20u);
  for (const auto& n : new_names) EXPECT_EQ(pre_names.count(n), 0u) << n;

  for (const auto* split : {&w.pretrain, &w.new_knowledge})
    for (const auto& d : *split) {
      ASSERT_EQ(d.entity.values.size(), static_cast<size_t>(kNumWorldAttributes));
      ASSERT_EQ(d.passages.size(), 3u);
      EXPECT_EQ(std::set<std::string>(d.passages.begin(), d.passages.end()).size(), 3u) << "paraphrases differ";
      for (const auto& p : d.passages) {
        EXPECT_NE(p.find(d.entity.name), std::string::npos);
        for (const auto& v : d.entity.values) EXPECT_NE(p.find(v), std::string::npos) << v << " missing in " << p;
      }
      ASSERT_EQ(d.questions.size(), static_cast<size_t>(kNumWorldAttributes));
      for (const auto& q : d.questions) {
        EXPECT_EQ(q.answer, " " + d.entity.value(q.attribute));
        EXPECT_NE(q.prompt.find(d.entity.name), std::string::npos);
        EXPECT_EQ(q.prompt.find(d.entity.value(q.attribute)), std::string::npos) << "closed book: " << q.prompt;
        EXPECT_EQ(q.prompt.substr(q.prompt.size() - 3), "\nA:");
      }
      const int year = std::stoi(d.entity.value(WorldAttribute::birth_year));
      EXPECT_TRUE(year >= 1700 && year <= 1999);
    }
  const auto qa = closed_book_questions(w.new_knowledge);
  EXPECT_EQ(qa.size(), 20u * kNumWorldAttributes);
  const auto ob = open_book(w.new_knowledge[0].passages[0], w.new_knowledge[0].questions[2]);
  EXPECT_EQ(ob.prompt.rfind(w.new_knowledge[0].passages[0], 0), 0u);
  EXPECT_EQ(ob.answer, w.new_knowledge[0].questions[2].answer);
  EXPECT_NE(passages_text(w.pretrain).find("\n\n"), std::string::npos);
  EXPECT_EQ(std::string(world_attribute_name(WorldAttribute::pet)), "pet");
  opt.passages_per_entity = 0;
  EXPECT_THROW(make_knowledge_world(opt), Error);
}

// ------------------------------------------------------------------ long horizon

TEST(LongHorizon, NeedlesAreFoundWhereTheySay) {
  const FillerText filler = synthetic_filler();
  NeedleOptions opt;
  opt.seed = 9;
  opt.context_chars = 5000;
  opt.num_needles = 5;
  opt.num_questions = 3;
  const auto examples = make_needle_examples(filler, 6, opt);
  const auto again = make_needle_examples(filler, 6, opt);
  opt.seed = 10;
  const auto other = make_needle_examples(filler, 6, opt);
  const std::regex needle(R"(^The secret number of (\w+) is (\d{4})\.$)");
  for (size_t i = 0; i < examples.size(); ++i) {
    const auto& ex = examples[i];
    EXPECT_EQ(digest(ex), digest(again[i]));
    EXPECT_NE(digest(ex), digest(other[i]));
    EXPECT_LE(ex.context.size(), 5000u);
    EXPECT_GT(ex.context.size(), 4900u);  // filler lines are ~40 bytes
    ASSERT_EQ(ex.facts.size(), 5u);
    std::map<std::string, std::string> secret;
    for (size_t k = 0; k < ex.facts.size(); ++k) {
      EXPECT_EQ(ex.context.compare(static_cast<size_t>(ex.fact_offsets[k]), ex.facts[k].size(), ex.facts[k]), 0);
      std::smatch m;
      ASSERT_TRUE(std::regex_match(ex.facts[k], m, needle)) << ex.facts[k];
      secret[m[1]] = m[2];
    }
    EXPECT_EQ(secret.size(), 5u);
    ASSERT_EQ(ex.questions.size(), 3u);
    std::set<std::string> asked;
    for (const auto& q : ex.questions) {
      std::smatch m;
      const std::regex ask(R"(^Q: What is the secret number of (\w+)\?\nA:$)");
      ASSERT_TRUE(std::regex_match(q.prompt, m, ask)) << q.prompt;
      EXPECT_EQ(q.answer, " " + secret[m[1]]);
      asked.insert(m[1]);
    }
    EXPECT_EQ(asked.size(), 3u);
    const auto pas = long_horizon_prompt_answers(ex);
    ASSERT_EQ(pas.size(), 3u);
    EXPECT_EQ(pas[0].prompt, ex.context + "\n" + ex.questions[0].prompt);
  }
  // Needles spread over the context, not all at one end.
  int64_t first = 1 << 30, last = 0;
  for (const auto& ex : examples)
    for (int64_t off : ex.fact_offsets) first = std::min(first, off), last = std::max(last, off);
  EXPECT_LT(first, 2500);
  EXPECT_GT(last, 2500);
}

TEST(LongHorizon, FactChainAnswersFollowTheStory) {
  const FillerText filler = synthetic_filler();
  FactChainOptions opt;
  opt.seed = 2;
  opt.context_chars = 3000;
  opt.num_people = 3;
  opt.num_objects = 3;
  opt.num_events = 12;
  opt.num_questions = 4;
  const auto examples = make_fact_chain_examples(filler, 40, opt);
  const auto again = make_fact_chain_examples(filler, 40, opt);
  opt.seed = 3;
  const auto other = make_fact_chain_examples(filler, 40, opt);
  int object_questions = 0;
  for (size_t i = 0; i < examples.size(); ++i) {
    const auto& ex = examples[i];
    EXPECT_EQ(digest(ex), digest(again[i]));
    EXPECT_NE(digest(ex), digest(other[i]));
    EXPECT_EQ(ex.facts.size(), 3u + 3u + 12u);
    EXPECT_LE(ex.context.size(), 3000u);
    const auto where = replay_facts(ex.context);
    ASSERT_EQ(ex.questions.size(), 4u);
    for (const auto& q : ex.questions) {
      auto it = where.find(q.prompt);
      ASSERT_NE(it, where.end()) << q.prompt;
      EXPECT_EQ(q.answer, it->second) << q.prompt;
      if (q.prompt.find("the ") != std::string::npos) ++object_questions;
    }
  }
  EXPECT_GT(object_questions, 0);
}

TEST(LongHorizon, RealFillerLongerThanAWindow) {
  if (!try_find_data_dir(source_candidates()))
    GTEST_SKIP() << "tinyshakespeare not found (set SOMNUS_DATA_DIR or run next to ../shared/data)";
  const FillerText filler(load_tinyshakespeare(source_candidates()));
  EXPECT_GT(filler.size(), 1000000);
  FactChainOptions opt;
  opt.seed = 1;
  opt.context_chars = 20000;
  const auto ex = make_fact_chain_example(filler, opt);
  EXPECT_GT(ex.context.size(), 19000u);
  const auto where = replay_facts(ex.context);
  for (const auto& q : ex.questions) EXPECT_EQ(q.answer, where.at(q.prompt));
  EXPECT_THROW(FillerText("\n\n\n"), Error);
}

// ------------------------------------------------------------------ languages

namespace {
LanguageSpec hand_language(WordOrder order, bool adj_after) {
  LanguageSpec l;
  l.name = "Tes";
  l.order = order;
  l.adjective_after_noun = adj_after;
  l.plural_suffix = "ka";
  l.past_suffix = "ru";
  l.present_suffix = "mi";
  l.object_suffix = "o";
  for (const auto* list : {&english_nouns(), &english_verbs(), &english_adjectives()})
    for (const auto& w : *list) l.lexicon[w] = "x" + w;
  l.lexicon["dog"] = "wofa";
  l.lexicon["cat"] = "kisa";
  l.lexicon["chase"] = "chas";
  l.lexicon["big"] = "gro";
  return l;
}
}  // namespace

TEST(Languages, RulesByHand) {
  // "the big dogs chased the cat": subject (dog, big, plural), object (cat), chase, past.
  Sentence s;
  s.subject = {1, 0, true};
  s.object = {0, -1, false};
  s.verb = 0;
  s.past = true;
  EXPECT_EQ(render_english(s), "the big dogs chased the cat");
  EXPECT_EQ(render_target(hand_language(WordOrder::SOV, true), s), "wofaka gro kisao chasru");
  EXPECT_EQ(render_target(hand_language(WordOrder::VSO, false), s), "chasru gro wofaka kisao");
  EXPECT_EQ(render_target(hand_language(WordOrder::OVS, true), s), "kisao chasru wofaka gro");
  // Present tense: English agrees with the subject; the target takes the present suffix.
  s.past = false;
  EXPECT_EQ(render_english(s), "the big dogs chase the cat");
  std::swap(s.subject, s.object);
  EXPECT_EQ(render_english(s), "the cat chases the big dogs");
  EXPECT_EQ(render_target(hand_language(WordOrder::SVO, false), s), "kisa chasmi gro wofakao");
  s.verb = 3;  // watch
  EXPECT_EQ(render_english(s), "the cat watches the big dogs");
  EXPECT_EQ(parse_english("the cat watches the big dogs"), s);
  EXPECT_FALSE(parse_english("the cat watch the big dogs").has_value());  // agreement
  EXPECT_FALSE(parse_english("the cat watches big dogs").has_value());
  LanguageSpec missing = hand_language(WordOrder::SOV, true);
  missing.lexicon.erase("cat");
  EXPECT_THROW(render_target(missing, s), Error);
}

TEST(Languages, PairIsSeededAndDistinct) {
  const auto [a, b] = make_language_pair(7);
  const auto [a2, b2] = make_language_pair(7);
  const auto [c, d] = make_language_pair(8);
  EXPECT_EQ(describe_language(a), describe_language(a2));
  EXPECT_EQ(describe_language(b), describe_language(b2));
  EXPECT_NE(describe_language(a), describe_language(c));
  EXPECT_NE(a.order, b.order);
  EXPECT_NE(a.order, WordOrder::SVO);
  EXPECT_NE(b.order, WordOrder::SVO);
  EXPECT_NE(a.name, b.name);
  std::set<std::string> words_a;
  for (const auto& [lemma, w] : a.lexicon) words_a.insert(w);
  EXPECT_EQ(words_a.size(), english_nouns().size() + english_verbs().size() + english_adjectives().size());
  for (const auto& [lemma, w] : b.lexicon) EXPECT_EQ(words_a.count(w), 0u) << w;
  const std::string desc = describe_language(a);
  EXPECT_NE(desc.find(word_order_name(a.order)), std::string::npos);
  EXPECT_NE(desc.find("cat = " + a.lexicon.at("cat")), std::string::npos);
  EXPECT_NE(desc.find("-" + a.plural_suffix), std::string::npos);
}

TEST(Languages, TranslationPairsFollowTheGrammar) {
  const auto [a, b] = make_language_pair(3);
  for (const LanguageSpec* lang : {&a, &b}) {
    const TranslationSplits s = make_translation_splits(*lang, 300, 100, 5);
    const TranslationSplits again = make_translation_splits(*lang, 300, 100, 5);
    const TranslationSplits other = make_translation_splits(*lang, 300, 100, 6);
    ASSERT_EQ(s.train.size(), 300u);
    ASSERT_EQ(s.test.size(), 100u);
    std::set<std::string> train_sources;
    for (size_t i = 0; i < s.train.size(); ++i) {
      EXPECT_EQ(s.train[i].source, again.train[i].source);
      EXPECT_EQ(s.train[i].target, again.train[i].target);
      train_sources.insert(s.train[i].source);
    }
    EXPECT_EQ(train_sources.size(), 300u);
    int differ = 0;
    for (size_t i = 0; i < s.train.size(); ++i) differ += s.train[i].source != other.train[i].source;
    EXPECT_GT(differ, 250);
    for (const auto* split : {&s.train, &s.test})
      for (const auto& p : *split) {
        const auto parsed = parse_english(p.source);
        ASSERT_TRUE(parsed.has_value()) << p.source;
        EXPECT_EQ(render_english(*parsed), p.source);
        EXPECT_EQ(render_target(*lang, *parsed), p.target);
        for (size_t b = 0, e; b < p.target.size(); b = e + 1) {  // no article survives
          e = std::min(p.target.find(' ', b), p.target.size());
          EXPECT_NE(p.target.substr(b, e - b), "the") << p.target;
        }
      }
    for (const auto& p : s.test) EXPECT_EQ(train_sources.count(p.source), 0u) << p.source;
    const auto pa = translation_prompt_answer(*lang, s.test[0]);
    EXPECT_EQ(pa.prompt, "Translate to " + lang->name + ": " + s.test[0].source + " =>");
    EXPECT_EQ(pa.answer, " " + s.test[0].target);
    const auto icl = translation_icl_prompt_answer(*lang, s.test[0]);
    EXPECT_EQ(icl.prompt, describe_language(*lang) + "\n" + pa.prompt);
  }
  // English round trip over random sentences.
  for (uint64_t seed = 0; seed < 200; ++seed) {
    const Sentence s = random_sentence(seed);
    EXPECT_EQ(parse_english(render_english(s)), s);
  }
}
