// Shared machinery of the procedural task generators: a seeded random stream and invented
// words.
//
// Why not <random>: std::uniform_int_distribution and std::shuffle are implementation-defined,
// so the same seed would give different data sets under libstdc++ and libc++. TaskRng draws
// from somnus::Generator's Philox4x32-10 stream (tensor/philox.h) on the host, and does its own
// unbiased bounded draws (Lemire's multiply-and-reject) and Fisher-Yates shuffles, so a seed
// names one data set everywhere.
//
// Independent sub-streams: derive_seed(seed, "tag") gives each part of a generator its own
// stream (e.g. the CLINC150 domain order and the per-intent example caps), so changing one
// option does not reshuffle what the others produce.
//
// Conventions shared by every task in sleep/tasks (so that nn::PromptAnswerDataset, which
// encodes prompt and answer separately and concatenates them, and a BPE tokenizer see
// natural text): a prompt ends with a cue (" =>", "\nA:", "out:") and an answer starts with
// one space (" kitchen"). Exact-match scoring (metrics.h) normalises that space away.
#pragma once
#include <cstdint>
#include <iterator>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tensor/format.h"
#include "tensor/philox.h"
#include "tensor/random.h"

namespace somnus::sleep {

// splitmix64 finaliser over (seed, FNV-1a(tag)): well-mixed, distinct streams per tag.
inline uint64_t derive_seed(uint64_t seed, std::string_view tag) {
  uint64_t h = 1469598103934665603ull;
  for (char c : tag) {
    h ^= static_cast<uint8_t>(c);
    h *= 1099511628211ull;
  }
  return splitmix64_mix(seed ^ (h + 0x9E3779B97F4A7C15ull + (seed << 6) + (seed >> 2)));
}

class TaskRng {
 public:
  explicit TaskRng(uint64_t seed) : gen_(seed) {}
  TaskRng(uint64_t seed, std::string_view tag) : gen_(derive_seed(seed, tag)) {}

  // 64 random bits: lanes x, y of the next Philox counter.
  uint64_t next_u64() {
    const uint64_t counter = gen_.advance(4);
    const philox::U4 r = philox::philox4x32_10(counter, 0, gen_.seed);
    return (static_cast<uint64_t>(r.x) << 32) | r.y;
  }
  // Uniform in [0, n), unbiased (Lemire 2019).
  uint64_t below(uint64_t n) {
    SOMNUS_CHECK(n > 0, "TaskRng::below: empty range");
    unsigned __int128 m = static_cast<unsigned __int128>(next_u64()) * n;
    uint64_t low = static_cast<uint64_t>(m);
    if (low < n) {
      const uint64_t threshold = (0 - n) % n;
      while (low < threshold) {
        m = static_cast<unsigned __int128>(next_u64()) * n;
        low = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }
  // Uniform integer in [lo, hi] (inclusive).
  int64_t range(int64_t lo, int64_t hi) {
    SOMNUS_CHECK(lo <= hi, "TaskRng::range: empty range [{}, {}]", lo, hi);
    return lo + static_cast<int64_t>(below(static_cast<uint64_t>(hi - lo) + 1));
  }
  // Uniform in [0, 1).
  double uniform() { return static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0); }
  bool bernoulli(double p) { return uniform() < p; }

  template <class T>
  void shuffle(std::vector<T>& v) {
    for (size_t i = v.size(); i > 1; --i) {
      const size_t j = static_cast<size_t>(below(i));
      std::swap(v[i - 1], v[j]);
    }
  }
  template <class T>
  const T& pick(const std::vector<T>& v) {
    SOMNUS_CHECK(!v.empty(), "TaskRng::pick: empty list");
    return v[static_cast<size_t>(below(v.size()))];
  }
  // k distinct indices of [0, n) in random order.
  std::vector<int64_t> sample_indices(int64_t n, int64_t k) {
    SOMNUS_CHECK(k >= 0 && k <= n, "TaskRng::sample_indices: cannot draw {} of {}", k, n);
    std::vector<int64_t> idx(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) idx[static_cast<size_t>(i)] = i;
    // Partial Fisher-Yates: the first k slots.
    for (int64_t i = 0; i < k; ++i) {
      const int64_t j = i + static_cast<int64_t>(below(static_cast<uint64_t>(n - i)));
      std::swap(idx[static_cast<size_t>(i)], idx[static_cast<size_t>(j)]);
    }
    idx.resize(static_cast<size_t>(k));
    return idx;
  }

  Generator& generator() { return gen_; }

 private:
  Generator gen_;
};

// A pronounceable invented word of `min_syllables`..`max_syllables` consonant-vowel(-coda)
// syllables, lowercase ASCII ("vorla", "kestrin").
inline std::string invent_word(TaskRng& rng, int min_syllables = 2, int max_syllables = 3) {
  static const char* const kOnsets[] = {"b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
                                        "br", "dr", "gr", "kr", "tr", "st", "sh", "th", "ch", "pl"};
  static const char* const kVowels[] = {"a", "e", "i", "o", "u", "ai", "ei", "ou"};
  static const char* const kCodas[] = {"", "", "", "n", "r", "l", "s", "m"};
  const int n = static_cast<int>(rng.range(min_syllables, max_syllables));
  std::string w;
  for (int s = 0; s < n; ++s) {
    w += kOnsets[rng.below(std::size(kOnsets))];
    w += kVowels[rng.below(std::size(kVowels))];
    w += kCodas[rng.below(std::size(kCodas))];
  }
  return w;
}

// `n` distinct invented words, none of them in `taken` (which is updated), so several
// vocabularies drawn from one `taken` set are disjoint.
inline std::vector<std::string> invent_words(TaskRng& rng, int64_t n, std::unordered_set<std::string>& taken,
                                             int min_syllables = 2, int max_syllables = 3) {
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(n));
  int64_t attempts = 0;
  while (static_cast<int64_t>(out.size()) < n) {
    SOMNUS_CHECK(++attempts < 1000 * (n + 10), "invent_words: could not find {} distinct words of {}..{} syllables",
                 n, min_syllables, max_syllables);
    std::string w = invent_word(rng, min_syllables, max_syllables);
    if (taken.insert(w).second) out.push_back(std::move(w));
  }
  return out;
}

inline std::string capitalize(std::string s) {
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = static_cast<char>(s[0] - 'a' + 'A');
  return s;
}

}  // namespace somnus::sleep
