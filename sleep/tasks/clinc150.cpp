#include "sleep/tasks/clinc150.h"

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "sleep/tasks/data_dir.h"
#include "sleep/tasks/procedural.h"
#include "tensor/format.h"

namespace somnus::sleep {

using json = nlohmann::json;

namespace {

json parse_json(std::string_view text, const std::string& what, const std::string& source) {
  try {
    return json::parse(text.begin(), text.end());
  } catch (const json::exception& e) {
    fail("{} '{}': not valid JSON (truncated or corrupt file?): {}", what, source, e.what());
  }
}

std::string preview(const json& v) {
  std::string s = v.dump();
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

std::vector<IntentRow> parse_rows(const json& rows, const std::string& key, const std::string& source) {
  if (!rows.is_array())
    fail("CLINC150 data '{}': field '{}' must be an array of [text, intent] rows, got {}", source, key,
         rows.type_name());
  std::vector<IntentRow> out;
  out.reserve(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    const json& r = rows[i];
    if (!r.is_array() || r.size() != 2 || !r[0].is_string() || !r[1].is_string())
      fail("CLINC150 data '{}': {}[{}] must be a [text, intent] pair of strings, got {}", source, key, i, preview(r));
    IntentRow row{r[0].get<std::string>(), r[1].get<std::string>()};
    if (row.intent.empty()) fail("CLINC150 data '{}': {}[{}] has an empty intent", source, key, i);
    out.push_back(std::move(row));
  }
  return out;
}

}  // namespace

ClincSplits parse_clinc150_data(std::string_view json_text, const std::string& source) {
  const json j = parse_json(json_text, "CLINC150 data", source);
  if (!j.is_object()) fail("CLINC150 data '{}': the top level must be an object of splits, got {}", source, j.type_name());
  ClincSplits s;
  for (const char* key : {"train", "val", "test"}) {
    auto it = j.find(key);
    if (it == j.end()) fail("CLINC150 data '{}': missing split '{}' (expected train, val and test)", source, key);
    std::vector<IntentRow> rows = parse_rows(*it, key, source);
    if (std::string_view(key) == "train") s.train = std::move(rows);
    else if (std::string_view(key) == "val") s.val = std::move(rows);
    else s.test = std::move(rows);
  }
  for (auto it = j.begin(); it != j.end(); ++it)
    if (it.key().rfind("oos_", 0) == 0) parse_rows(it.value(), it.key(), source);  // validated, unused
  return s;
}

std::vector<ClincDomain> parse_clinc150_domains(std::string_view json_text, const std::string& source) {
  const json j = parse_json(json_text, "CLINC150 domains", source);
  if (!j.is_object())
    fail("CLINC150 domains '{}': the top level must be an object mapping domains to intent lists, got {}", source,
         j.type_name());
  if (j.empty()) fail("CLINC150 domains '{}': no domains", source);
  std::vector<ClincDomain> out;
  std::unordered_map<std::string, std::string> owner;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const json& v = it.value();
    if (it.key().empty()) fail("CLINC150 domains '{}': a domain has an empty name", source);
    if (!v.is_array() || v.empty())
      fail("CLINC150 domains '{}': domain '{}' must map to a non-empty array of intent names, got {}", source,
           it.key(), preview(v));
    ClincDomain d{it.key(), {}};
    for (size_t i = 0; i < v.size(); ++i) {
      if (!v[i].is_string() || v[i].get<std::string>().empty())
        fail("CLINC150 domains '{}': domain '{}' entry {} must be a non-empty string, got {}", source, it.key(), i,
             preview(v[i]));
      std::string intent = v[i].get<std::string>();
      auto [o, inserted] = owner.emplace(intent, it.key());
      if (!inserted)
        fail("CLINC150 domains '{}': intent '{}' is listed in domain '{}' and again in domain '{}'", source, intent,
             o->second, it.key());
      d.intents.push_back(std::move(intent));
    }
    out.push_back(std::move(d));
  }
  return out;
}

Clinc150 load_clinc150(const std::filesystem::path& clinc_dir) {
  const auto data_file = clinc_dir / "data_full.json", domains_file = clinc_dir / "domains.json";
  Clinc150 c;
  c.splits = parse_clinc150_data(read_text_file(data_file), data_file.string());
  c.domains = parse_clinc150_domains(read_text_file(domains_file), domains_file.string());
  std::unordered_map<std::string, int64_t> train_count, test_count;
  for (const auto& r : c.splits.train) ++train_count[r.intent];
  for (const auto& r : c.splits.test) ++test_count[r.intent];
  for (const auto& d : c.domains)
    for (const auto& intent : d.intents)
      SOMNUS_CHECK(train_count[intent] > 0 && test_count[intent] > 0,
                   "CLINC150 '{}': intent '{}' of domain '{}' has {} train and {} test rows (needs both)",
                   clinc_dir.string(), intent, d.name, train_count[intent], test_count[intent]);
  return c;
}

Clinc150 load_clinc150_default(const std::vector<std::string>& extra_data_dir_candidates) {
  return load_clinc150(data_path("clinc150", extra_data_dir_candidates));
}

std::vector<int64_t> clinc150_domain_order(int64_t num_domains, uint64_t seed) {
  SOMNUS_CHECK(num_domains > 0, "clinc150_domain_order: no domains");
  std::vector<int64_t> order(static_cast<size_t>(num_domains));
  for (int64_t i = 0; i < num_domains; ++i) order[static_cast<size_t>(i)] = i;
  TaskRng rng(seed, "clinc150/order");
  rng.shuffle(order);
  return order;
}

std::vector<ClincTask> make_clinc150_tasks(const Clinc150& data, const ClincTaskOptions& opt) {
  SOMNUS_CHECK(opt.max_train_per_intent >= 0 && opt.max_test_per_intent >= 0,
               "make_clinc150_tasks: caps must be >= 0 (0 = all), got train {} test {}", opt.max_train_per_intent,
               opt.max_test_per_intent);
  SOMNUS_CHECK(!data.domains.empty(), "make_clinc150_tasks: no domains");
  // Rows per intent, in file order (a std::map keeps iteration independent of hashing).
  std::map<std::string, std::vector<const IntentRow*>> train_rows, eval_rows;
  for (const auto& r : data.splits.train) train_rows[r.intent].push_back(&r);
  for (const auto& r : (opt.eval_on_val ? data.splits.val : data.splits.test)) eval_rows[r.intent].push_back(&r);

  auto take = [&](const std::vector<const IntentRow*>& rows, int64_t cap, TaskRng& rng,
                  std::vector<nn::PromptAnswer>& out) {
    const int64_t n = static_cast<int64_t>(rows.size());
    const int64_t k = cap > 0 ? std::min(cap, n) : n;
    for (int64_t i : rng.sample_indices(n, k)) {
      const IntentRow* r = rows[static_cast<size_t>(i)];
      out.push_back({r->text + opt.separator, " " + r->intent});
    }
  };

  std::vector<ClincTask> tasks;
  for (int64_t d : clinc150_domain_order(static_cast<int64_t>(data.domains.size()), opt.seed)) {
    const ClincDomain& dom = data.domains[static_cast<size_t>(d)];
    ClincTask t{dom.name, dom.intents, {}, {}};
    // Per-domain streams: the examples of a domain do not depend on the domain order.
    TaskRng pick_rng(opt.seed, "clinc150/pick/" + dom.name), order_rng(opt.seed, "clinc150/shuffle/" + dom.name);
    for (const auto& intent : dom.intents) {
      auto tr = train_rows.find(intent);
      auto ev = eval_rows.find(intent);
      SOMNUS_CHECK(tr != train_rows.end() && ev != eval_rows.end(),
                   "make_clinc150_tasks: intent '{}' of domain '{}' has no {} rows", intent, dom.name,
                   tr == train_rows.end() ? "train" : (opt.eval_on_val ? "val" : "test"));
      take(tr->second, opt.max_train_per_intent, pick_rng, t.train);
      take(ev->second, opt.max_test_per_intent, pick_rng, t.test);
    }
    order_rng.shuffle(t.train);
    order_rng.shuffle(t.test);
    tasks.push_back(std::move(t));
  }
  return tasks;
}

}  // namespace somnus::sleep
