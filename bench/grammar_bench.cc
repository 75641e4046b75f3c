// Structured output: the router's cost per constrained sequence per step at
// the o200k_harmony vocabulary. For each schema, constrained replies are
// walked token by token (a seeded random choice among the allowed tokens, the
// reasoning ended early as a model would end it) and every step's mask —
// GrammarMatcher::Mask() plus its encoding into the step protocol — is timed.
// Compiling a schema's grammar computes every node's token table at once
// ("compile_ms", paid by the first request with those rules, then cached);
// the first reply warms the matcher's own state cache and is left out, the
// later ones are the steady state the goal is about (median under 100 us,
// p99 under 1 ms).
// One thread; prints one JSON line per schema and a summary.
//   moeserve_grammar_bench --tokenizer tokenizer.json [--replies 20] [--max-steps 400]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "router/grammar/reply_grammar.h"
#include "router/step_codec.h"
#include "router/text/tokenizer.h"

using namespace moeserve;
using json = nlohmann::ordered_json;

namespace {

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5))];
}

double Now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

}  // namespace

int main(int argc, char** argv) {
  std::string tok_path;
  int replies = 20, max_steps = 400;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--tokenizer") tok_path = argv[i + 1];
    else if (k == "--replies") replies = std::stoi(argv[i + 1]);
    else if (k == "--max-steps") max_steps = std::stoi(argv[i + 1]);
  }
  auto tok = text::Tokenizer::FromTokenizerJson(tok_path);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  const text::Tokenizer& T = **tok;
  const double t_table = Now();
  grammar::ReplyGrammarCache cache(T);
  std::printf("{\"what\":\"token table\",\"seconds\":%.3f,\"vocab\":%lld}\n", Now() - t_table,
              static_cast<long long>(T.vocab_size()));

  // The schemas of tests/e2e/structured_e2e.mjs, and a tool call.
  const std::vector<std::pair<std::string, json>> schemas = {
      {"person", json::parse(R"({"type":"object","properties":{"name":{"type":"string","maxLength":12},"age":{"type":"integer","minimum":0,"maximum":130},"email":{"type":"string","format":"email"},"tags":{"type":"array","items":{"enum":["a","b","c"]},"maxItems":3}},"required":["name","age"],"additionalProperties":false})")},
      {"order", json::parse(R"({"type":"object","properties":{"id":{"type":"string","pattern":"^[A-Z]{2}-[0-9]{3}$"},"items":{"type":"array","minItems":1,"maxItems":2,"items":{"type":"object","properties":{"sku":{"type":"string","format":"uuid"},"qty":{"type":"integer","exclusiveMinimum":0,"maximum":9},"price":{"type":"number","minimum":0,"maximum":100}},"required":["sku","qty"],"additionalProperties":false}},"paid":{"type":"boolean"},"note":{"anyOf":[{"type":"string","maxLength":5},{"type":"null"}]}},"required":["id","items","paid","note"],"additionalProperties":false})")},
      {"tree", json::parse(R"({"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer","minimum":-5,"maximum":5},"kids":{"type":"array","items":{"$ref":"#/$defs/node"},"maxItems":2}},"required":["v","kids"],"additionalProperties":false}},"$ref":"#/$defs/node"})")},
      {"json_object", json()},
      {"free text (tools auto)", json()},
  };
  const int32_t end_id = T.SpecialId("<|end|>");
  std::vector<double> all_steady;
  for (size_t si = 0; si < schemas.size(); ++si) {
    const auto& [name, schema] = schemas[si];
    grammar::ReplyRules rules;
    if (name == "json_object") {
      rules.final = grammar::ReplyRules::Final::kJsonObject;
    } else if (name == "free text (tools auto)") {
      rules.calls = grammar::ReplyRules::Calls::kAuto;
      text::ToolDescription t;
      t.name = "get_weather";
      t.parameters = json::parse(R"({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]})");
      t.strict = true;
      rules.tools.push_back(t);
    } else {
      rules.final = grammar::ReplyRules::Final::kJsonSchema;
      rules.final_schema = schema;
    }
    const double c0 = Now();
    auto compiled = cache.Get(rules);
    const double compile_s = Now() - c0;  // the grammar, and every node's token table
    if (!compiled.ok()) {
      std::fprintf(stderr, "%s: %s\n", name.c_str(), std::string(compiled.status().message()).c_str());
      return 1;
    }
    std::mt19937 rng(static_cast<uint32_t>(si + 1));
    std::vector<double> steady;
    int steps_total = 0, finished = 0;
    worker::v1::TokenMask wire;
    size_t wire_bytes = 0;
    for (int rep = 0; rep < replies; ++rep) {
      grammar::GrammarMatcher m(*compiled);
      for (int step = 0; step < max_steps; ++step) {
        const double a = Now();
        const grammar::TokenMask& mask = m.Mask();
        router::EncodeTokenMask(mask, static_cast<int32_t>(T.vocab_size()), &wire);
        const double dt = Now() - a;
        wire_bytes += wire.ByteSizeLong();
        if (rep > 0) steady.push_back(dt * 1e6);
        ++steps_total;
        std::vector<int32_t> allowed;
        for (int32_t t = 0; t < T.vocab_size(); ++t) {
          if (grammar::MaskHas(mask, t)) allowed.push_back(t);
        }
        if (allowed.empty()) break;
        // The reasoning ends soon, as a model's does; otherwise a random allowed token.
        int32_t pick = allowed[rng() % allowed.size()];
        if (grammar::MaskHas(mask, end_id) && rng() % 4 == 0) pick = end_id;
        // Inside strings most tokens are allowed: favour the ones that can close them, so replies end.
        if (allowed.size() > 1000 && rng() % 3 == 0) {
          std::vector<int32_t> closing;
          for (int32_t t : allowed) {
            const std::string* b = T.TokenBytes(t);
            if (b && b->size() <= 2 && b->find_first_of("\"}],") != std::string::npos) closing.push_back(t);
          }
          if (!closing.empty()) pick = closing[rng() % closing.size()];
        }
        if (!m.Accept(pick)) {
          std::fprintf(stderr, "%s: the matcher refused a token its mask allowed\n", name.c_str());
          return 1;
        }
        if (T.SpecialId("<|return|>") == pick || T.SpecialId("<|call|>") == pick) {
          ++finished;
          break;
        }
      }
    }
    all_steady.insert(all_steady.end(), steady.begin(), steady.end());
    std::printf("{\"schema\":\"%s\",\"compile_ms\":%.2f,\"steps\":%d,\"finished\":%d,"
                "\"replies\":%d,\"mask_us_median\":%.1f,\"mask_us_p99\":%.1f,\"mask_us_max\":%.1f,\"wire_bytes_mean\":%.0f,"
                "\"tables\":%zu}\n",
                name.c_str(), compile_s * 1e3, steps_total, finished, replies,
                Percentile(steady, 0.5), Percentile(steady, 0.99), Percentile(steady, 1.0),
                static_cast<double>(wire_bytes) / std::max(1, steps_total), (*compiled)->num_tables());
  }
  std::printf("{\"what\":\"all schemas, after the first reply\",\"steps\":%zu,\"mask_us_median\":%.1f,"
              "\"mask_us_p99\":%.1f}\n",
              all_steady.size(), Percentile(all_steady, 0.5), Percentile(all_steady, 0.99));
  return 0;
}
