// The grammar engine: JSON Schema languages (documents written by hand that
// must be accepted or refused), token masks against brute force (every token
// of a small vocabulary stepped byte by byte from the live state) along random
// walks, and the walks' complete documents parsed as JSON and checked against
// their schemas' required keys and types. The e2e tests validate real outputs
// with ajv.
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "nlohmann/json.hpp"
#include "router/grammar/json_schema.h"
#include "router/grammar/matcher.h"

namespace moeserve::grammar {
namespace {

using json = nlohmann::ordered_json;

// A small vocabulary: every single byte, then pieces over a JSON-ish
// alphabet (with UTF-8 and escapes), then three special tokens.
std::shared_ptr<const TokenTable> SmallVocab(int pieces = 1500, uint32_t seed = 1) {
  std::vector<std::string> bytes;
  for (int b = 0; b < 256; ++b) bytes.push_back(std::string(1, static_cast<char>(b)));
  const std::vector<std::string> alphabet = {"{", "}", "[", "]", "\"", ",", ":", " ", "\n", "0", "1", "5", "9", ".",
                                             "-", "e", "a", "b", "x", "n", "u", "l", "t", "r", "f", "s", "\\", "é",
                                             "中", "ab", "null", "true", "false", "\":", "\",", "\"}", "12", "-0"};
  std::mt19937 rng(seed);
  std::set<std::string> seen(bytes.begin(), bytes.end());
  while (static_cast<int>(bytes.size()) < 256 + pieces) {
    std::string s;
    const int n = 2 + static_cast<int>(rng() % 4);
    for (int i = 0; i < n; ++i) s += alphabet[rng() % alphabet.size()];
    if (rng() % 5 == 0) s.pop_back();  // sometimes a partial UTF-8 character
    if (!s.empty() && seen.insert(s).second) bytes.push_back(s);
  }
  std::vector<bool> special(bytes.size(), false);
  for (int i = 0; i < 3; ++i) {
    bytes.push_back("");
    special.push_back(true);
  }
  return std::make_shared<TokenTable>(bytes, special);
}

// Whether `doc` is in the language of `g` (byte by byte from the root).
bool Accepts(const Grammar& g, const std::string& doc) {
  GrammarRunner r(g);
  const int32_t s = r.NextBytes(r.Root(), doc);
  return s != GrammarRunner::kDead && r.can_end(s);
}

Grammar Compile(const json& schema) {
  absl::StatusOr<Grammar> g = JsonSchemaGrammar(schema);
  EXPECT_TRUE(g.ok()) << g.status() << " for " << schema.dump();
  return g.ok() ? std::move(*g) : Grammar();
}

TEST(JsonSchemaTest, LanguagesAcceptAndRefuse) {
  struct Case {
    const char* schema;
    std::vector<std::string> yes, no;
  };
  const std::vector<Case> cases = {
      {R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["name"]})",
       {R"({"name":"x"})", R"({"name":"x","age":3})", R"({ "name" : "a\"b\u00e9" , "age":-12 })", "{\"name\":\"中\"}"},
       {R"({})", R"({"age":3})", R"({"age":3,"name":"x"})", R"({"name":"x","extra":1})", R"({"name":x})",
        R"({"name":"x","age":1.5})", "{\"name\":\"a\nb\"}"}},
      {R"({"type":"array","items":{"type":"number"},"minItems":1,"maxItems":3})",
       {"[1]", "[1,2.5,-3e10]", "[ 0 , 1 ]"},
       {"[]", "[1,2,3,4]", "[01]", "[1,]", "[\"a\"]"}},
      {R"({"enum":["red","green",3,null]})", {R"("red")", "3", "null"}, {R"("blue")", "4", R"("Red")"}},
      {R"({"const":{"a":[1,2]}})", {R"({"a":[1,2]})"}, {R"({"a":[1,2,3]})"}},
      {R"({"anyOf":[{"type":"string"},{"type":"null"}]})", {R"("s")", "null"}, {"1", "true"}},
      {R"({"type":["integer","boolean"]})", {"7", "true"}, {"\"7\"", "1.5"}},
      {R"({"type":"integer","minimum":-15,"maximum":230})",
       {"-15", "-9", "0", "7", "99", "100", "199", "230"},
       {"-16", "-150", "231", "300", "1000", "-0"}},
      {R"({"type":"integer","exclusiveMinimum":0})", {"1", "42", "1000000"}, {"0", "-1"}},
      {R"({"type":"number","minimum":0,"maximum":10})",
       {"0", "0.5", "9.999", "10", "10.0", "3"},
       {"-0.1", "10.01", "11", "-1"}},
      {R"({"type":"number","exclusiveMinimum":0,"exclusiveMaximum":1})", {"0.5", "0.001"}, {"0", "1", "0.0", "1.5"}},
      {R"({"type":"string","minLength":2,"maxLength":3})", {R"("ab")", R"("a\nb")", "\"中文字\""}, {R"("a")", R"("abcd")"}},
      {R"({"type":"string","pattern":"^[A-Z]{2}-\\d+$"})", {R"("AB-1")", R"("ZZ-0042")"}, {R"("A-1")", R"("AB-")", R"("ab-1")"}},
      {R"({"type":"string","pattern":"cat"})", {R"("cat")", R"("a cat!")"}, {R"("dog")"}},
      {R"({"type":"string","pattern":"^a\"b$"})", {R"("a\"b")"}, {R"("a"b")", R"("ab")"}},
      {R"({"type":"string","format":"date"})", {R"("2024-02-28")", R"("1999-12-31")"}, {R"("2024-02-30")", R"("2024-13-01")", R"("24-01-01")"}},
      {R"({"type":"string","format":"uuid"})", {R"("123e4567-e89b-12d3-a456-426614174000")"}, {R"("123e4567")"}},
      {R"({"type":"object","properties":{"a":{"type":"boolean"}},"additionalProperties":true})",
       {R"({})", R"({"a":true})", R"({"a":false,"z":[1,{"y":null}]})", R"({"z":1})"}, {R"({"a":1})"}},
      {R"({"type":"object","additionalProperties":{"type":"integer"}})", {R"({})", R"({"x":1,"y":2})"}, {R"({"x":"1"})"}},
      {R"({"$defs":{"node":{"type":"object","properties":{"v":{"type":"integer"},"next":{"anyOf":[{"$ref":"#/$defs/node"},{"type":"null"}]}},"required":["v","next"]}},"$ref":"#/$defs/node"})",
       {R"({"v":1,"next":null})", R"({"v":1,"next":{"v":2,"next":{"v":3,"next":null}}})"},
       {R"({"v":1})", R"({"v":1,"next":{"v":2}})"}},
      {R"({"type":"array","prefixItems":[{"type":"string"},{"type":"integer"}],"items":false})",
       {R"(["a",1])", R"(["a"])", "[]"}, {R"(["a",1,2])", R"([1,"a"])"}},
      {R"(true)", {"1", R"({"a":[true,null,"x"]})", "[]"}, {"tru", "{a:1}"}},
      {R"({"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"},"c":{"type":"integer"},"d":{"type":"integer"},"e":{"type":"integer"},"f":{"type":"integer"},"g":{"type":"integer"},"h":{"type":"integer"}}})",
       {R"({})", R"({"a":1})", R"({"h":1})", R"({"b":1,"g":2})", R"({"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8})"},
       {R"({"b":1,"a":2})", R"({,"a":1})", R"({"a":1,})"}},
      // oneOf whose branches cannot overlap: by type, by value, by a discriminator (through $ref, as pydantic writes it).
      {R"({"oneOf":[{"type":"string","maxLength":2},{"type":"integer"},{"type":"null"}]})",
       {R"("ab")", "12", "null"}, {R"("abc")", "1.5", "true"}},
      {R"({"oneOf":[{"enum":["a","b"]},{"const":"c"},{"type":"integer"}]})", {R"("a")", R"("c")", "3"}, {R"("d")"}},
      {R"({"$defs":{"Cat":{"type":"object","properties":{"kind":{"const":"cat"},"lives":{"type":"integer"}},"required":["kind","lives"],"additionalProperties":false},)"
       R"("Dog":{"type":"object","properties":{"kind":{"const":"dog"},"good":{"type":"boolean"}},"required":["kind","good"],"additionalProperties":false}},)"
       R"("oneOf":[{"$ref":"#/$defs/Cat"},{"$ref":"#/$defs/Dog"}]})",
       {R"({"kind":"cat","lives":9})", R"({"kind":"dog","good":true})"}, {R"({"kind":"cat","good":true})", R"({"kind":"fox","good":true})"}},
  };
  for (const Case& c : cases) {
    const Grammar g = Compile(json::parse(c.schema));
    for (const std::string& d : c.yes) EXPECT_TRUE(Accepts(g, d)) << c.schema << " should accept " << d;
    for (const std::string& d : c.no) EXPECT_FALSE(Accepts(g, d)) << c.schema << " should refuse " << d;
  }
}

TEST(JsonSchemaTest, RefusesWhatItCannotHonour) {
  for (const char* bad : {R"({"type":"object","minProperties":1})", R"({"type":"strin"})", R"({"not":{}})",
                          R"({"type":"string","pattern":"(?=a)b"})", R"({"type":"string","pattern":"(a"})",
                          R"({"$ref":"#/$defs/missing"})", R"({"$ref":"http://x/y"})", R"(false)",
                          R"({"type":"number","minimum":0.5})", R"({"type":"integer","minimum":5,"maximum":1})",
                          R"({"type":"object","required":["a"]})", R"({"$defs":{"a":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"})",
                          R"({"type":"array","uniqueItems":true})", R"({"allOf":[{"type":"string"},{"minLength":1}]})",
                          // oneOf whose branches may both match: a value valid for two would break "exactly one".
                          R"({"oneOf":[{"type":"number"},{"type":"integer"}]})",
                          R"({"oneOf":[{"type":"string"},{"type":"string","maxLength":3}]})",
                          R"({"oneOf":[{"enum":[1,2]},{"enum":[2,3]}]})",
                          R"({"oneOf":[{"type":"object","properties":{"a":{"type":"integer"}}},{"type":"object","properties":{"b":{"type":"integer"}}}]})",
                          R"({"oneOf":[{"type":"object","properties":{"k":{"const":1}},"required":["k"]},{"type":"object","properties":{"k":{"enum":[1,2]}},"required":["k"]}]})"}) {
    absl::StatusOr<Grammar> g = JsonSchemaGrammar(json::parse(bad));
    EXPECT_FALSE(g.ok()) << bad;
    if (!g.ok()) EXPECT_NE(g.status().message().find("schema"), std::string::npos) << g.status();
  }
}

// The mask equals brute force at every step of random walks, on schemas that
// exercise calls (recursion, generic values, many optional members).
// Random walks through `compiled`'s language, choosing among the masked
// tokens; at every step the mask must equal a brute force that replays the
// document and then each token with a fresh runner (no token tables). Returns
// how many walks ended in a complete document, each checked to be JSON with
// the schema's required names.
static int WalkAndCompareMasks(const char* text, const std::shared_ptr<const CompiledGrammar>& compiled, std::mt19937& rng,
                        int walks, int max_steps) {
  const json schema = json::parse(text);
  const TokenTable& vocab = compiled->tokens();
  int complete = 0;
  for (int walk = 0; walk < walks; ++walk) {
    GrammarMatcher m(compiled);
    std::string doc;
    for (int step = 0; step < max_steps; ++step) {
      const TokenMask mask = m.Mask();
      std::vector<int32_t> allowed;
      GrammarRunner brute(compiled->grammar());
      const int32_t s0 = brute.NextBytes(brute.Root(), doc);
      for (int32_t t = 0; t < vocab.vocab_size(); ++t) {
        const int32_t s = vocab.is_special(t) ? GrammarRunner::kDead : brute.NextBytes(s0, vocab.bytes(t));
        const bool ok = s != GrammarRunner::kDead;
        EXPECT_EQ(MaskHas(mask, t), ok) << text << " after '" << doc << "' token '" << vocab.bytes(t) << "'";
        if (MaskHas(mask, t) != ok) return complete;
        if (ok) allowed.push_back(t);
        if (t > 300 && step % 4 != 0) break;  // full sweeps every 4th step keep the test fast
      }
      if (m.can_end() && rng() % 8 == 0) break;
      if (allowed.empty()) break;
      const int32_t pick = allowed[rng() % allowed.size()];
      EXPECT_TRUE(m.Accept(pick));
      doc += vocab.bytes(pick);
    }
    if (!m.can_end()) continue;
    ++complete;
    const json parsed = json::parse(doc, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(parsed.is_discarded()) << text << ": " << doc;
    if (schema.is_object() && schema.contains("required")) {
      for (const auto& r : schema["required"]) EXPECT_TRUE(parsed.contains(r.get<std::string>())) << doc;
    }
  }
  return complete;
}

TEST(GrammarMatcherTest, MaskEqualsBruteForceAlongRandomWalks) {
  const auto vocab = SmallVocab();
  const std::vector<const char*> schemas = {
      R"({"type":"object","properties":{"name":{"type":"string","maxLength":8},"tags":{"type":"array","items":{"enum":["a","b"]}},"n":{"type":"number"}},"required":["name","n"]})",
      R"({"type":"object"})",
      R"(true)",
      R"({"$defs":{"t":{"type":"object","properties":{"k":{"type":"array","items":{"$ref":"#/$defs/t"},"maxItems":2}},"required":["k"]}},"$ref":"#/$defs/t"})",
      R"({"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"string"},"c":{"type":"boolean"},"d":{"type":"null"},"e":{"type":"integer","minimum":3,"maximum":40},"f":{"type":"string","pattern":"^x+$"},"g":{"type":"array","maxItems":20}}})",
  };
  std::mt19937 rng(7);
  int complete = 0;
  for (const char* text : schemas) {
    complete += WalkAndCompareMasks(text, std::make_shared<CompiledGrammar>(Compile(json::parse(text)), vocab), rng, 12, 120);
    ASSERT_FALSE(HasFailure());
  }
  EXPECT_GT(complete, 5);
}

// Long bounded repetitions (maxLength, minLength, counted regex groups,
// nested) share token tables between copies far from their ends: masks must
// still equal the brute force everywhere, near the ends of the copies too.
TEST(GrammarMatcherTest, LongRepetitionsShareTablesAndMasksStayExact) {
  const auto vocab = SmallVocab();  // tokens of up to ~25 bytes: copies share once ~27 follow them
  ASSERT_LE(vocab->max_symbols(), 30);
  const std::vector<const char*> schemas = {
      R"({"type":"object","properties":{"s":{"type":"string","maxLength":70}},"required":["s"]})",
      R"({"type":"object","properties":{"s":{"type":"string","minLength":45,"maxLength":80}},"required":["s"]})",
      R"({"type":"string","pattern":"^(ab|c){0,60}x$"})",
      R"({"type":"string","pattern":"^(a?b?){40}$"})",
      R"({"type":"string","pattern":"^([0-9]{2,35}-){2,40}$"})",
      R"({"type":"array","items":{"type":"string","maxLength":40},"minItems":1,"maxItems":12})",
  };
  std::mt19937 rng(11);
  int complete = 0;
  for (const char* text : schemas) {
    auto compiled = std::make_shared<CompiledGrammar>(Compile(json::parse(text)), vocab);
    int shared = 0, own_tables = 0;
    for (int32_t n = 0; n < static_cast<int32_t>(compiled->grammar().nodes().size()); ++n) {
      shared += compiled->table_node(n) != n;
      own_tables += compiled->table_node(n) == n && compiled->grammar().node(n).consumes;
    }
    EXPECT_GT(shared, 0) << text << ": no copies share tables, so this test would not test it";
    complete += WalkAndCompareMasks(text, compiled, rng, 10, 160);
    ASSERT_FALSE(HasFailure());
    // Precompute makes one table per group of nodes that share, and the
    // walks' masks agree with them as above.
    auto pre = std::make_shared<CompiledGrammar>(Compile(json::parse(text)), vocab);
    pre->Precompute(2);
    EXPECT_EQ(pre->num_tables(), static_cast<size_t>(own_tables)) << text;
    WalkAndCompareMasks(text, pre, rng, 3, 160);
    ASSERT_FALSE(HasFailure());
  }
  EXPECT_GT(complete, 5);
}

// An independent simulation of a compiled grammar's pushdown automaton, with
// every return stack spelled out and epsilon edges followed one by one (the
// runner uses precomputed closures, shared frames and byte classes).
class ReferencePda {
 public:
  using Config = std::pair<int32_t, std::vector<int32_t>>;  // node, return nodes (innermost last)
  explicit ReferencePda(const Grammar& g) : g_(g) {}
  std::set<Config> Root() const {
    std::set<Config> out;
    Close({g_.rule_start(g_.root()), {}}, &out);
    return out;
  }
  std::set<Config> Step(const std::set<Config>& from, uint8_t byte) const {
    std::set<Config> out;
    for (const auto& [node, stack] : from) {
      for (const Grammar::Edge& e : g_.node(node).edges) {
        if (e.kind == Grammar::Edge::kBytes && g_.byte_set(e.arg).test(byte)) Close({e.to, stack}, &out);
      }
    }
    return out;
  }
  // Some configuration can still take a symbol, or end the input.
  bool Live(const std::set<Config>& s) const {
    for (const auto& [node, stack] : s) {
      for (const Grammar::Edge& e : g_.node(node).edges) {
        if (e.kind == Grammar::Edge::kBytes || e.kind == Grammar::Edge::kSpecial) return true;
      }
    }
    return CanEnd(s);
  }
  bool CanEnd(const std::set<Config>& s) const {
    for (const auto& [node, stack] : s) {
      if (stack.empty() && g_.node(node).accept) return true;
    }
    return false;
  }

 private:
  // Every configuration reachable without consuming, all of them kept.
  void Close(Config c, std::set<Config>* out) const {
    if (!out->insert(c).second) return;
    const Grammar::Node& n = g_.node(c.first);
    if (n.accept && !c.second.empty()) {
      std::vector<int32_t> rest(c.second.begin(), c.second.end() - 1);
      Close({c.second.back(), std::move(rest)}, out);
    }
    for (const Grammar::Edge& e : n.edges) {
      if (e.kind == Grammar::Edge::kEps) Close({e.to, c.second}, out);
      if (e.kind == Grammar::Edge::kCall) {
        std::vector<int32_t> deeper = c.second;
        deeper.push_back(e.to);
        Close({g_.rule_start(e.arg), std::move(deeper)}, out);
      }
    }
  }
  const Grammar& g_;
};

// Along random walks, every byte from every state visited: the runner's step
// is dead, and can end, exactly when the reference's is (this covers the
// byte classes: a byte answered from its class's step must agree too).
TEST(GrammarRunnerTest, StepsEqualAReferencePushdownAutomaton) {
  const std::vector<const char*> schemas = {
      R"({"type":"object","properties":{"name":{"type":"string","maxLength":3},"n":{"type":"integer","minimum":-5,"maximum":120}},"required":["name"]})",
      R"({"$defs":{"t":{"type":"object","properties":{"k":{"type":"array","items":{"$ref":"#/$defs/t"},"maxItems":2}},"required":["k"]}},"$ref":"#/$defs/t"})",
      R"({"enum":["ab","b\u00e9",1.5,null,"\u4e2d"]})",
      R"({"type":"string","pattern":"^[a-f0-9]{2,4}(x|yz)*$"})",
      R"({"type":"array","items":{"type":"number"},"minItems":1,"maxItems":3})",
      R"(true)",
  };
  std::mt19937 rng(11);
  for (const char* text : schemas) {
    const Grammar g = Compile(json::parse(text));
    const ReferencePda ref(g);
    for (int walk = 0; walk < 6; ++walk) {
      GrammarRunner run(g);
      int32_t s = run.Root();
      std::set<ReferencePda::Config> r = ref.Root();
      std::string doc;
      for (int step = 0; step < 40; ++step) {
        ASSERT_EQ(run.can_end(s), ref.CanEnd(r)) << text << " after '" << doc << "'";
        std::vector<int> live;
        for (int b = 0; b < 256; ++b) {
          const int32_t next = run.Next(s, b);
          const std::set<ReferencePda::Config> rnext = ref.Step(r, static_cast<uint8_t>(b));
          ASSERT_EQ(next == GrammarRunner::kDead, !ref.Live(rnext)) << text << " after '" << doc << "' byte " << b;
          if (next == GrammarRunner::kDead) continue;
          ASSERT_EQ(run.can_end(next), ref.CanEnd(rnext)) << text << " after '" << doc << "' byte " << b;
          live.push_back(b);
        }
        if (live.empty()) break;
        const int b = live[rng() % live.size()];
        s = run.Next(s, b);
        r = ref.Step(r, static_cast<uint8_t>(b));
        doc += static_cast<char>(b);
      }
    }
  }
}

TEST(GrammarMatcherTest, SpecialTokensAndRefusal) {
  const auto vocab = SmallVocab(100);
  const int32_t end = vocab->vocab_size() - 1;
  Grammar g;
  const int32_t root = g.AddRule("root");
  g.Define(root, Seq({Lit("ab"), Special(end)}));
  ASSERT_TRUE(g.Compile(root).ok());
  auto compiled = std::make_shared<CompiledGrammar>(std::move(g), vocab);
  GrammarMatcher m(compiled);
  EXPECT_FALSE(m.Accept(end));
  EXPECT_FALSE(m.Accept('b'));
  EXPECT_TRUE(m.Accept('a'));
  EXPECT_FALSE(MaskHas(m.Mask(), end));
  EXPECT_TRUE(MaskHas(m.Mask(), 'b'));
  EXPECT_TRUE(m.Accept('b'));
  const TokenMask& mask = m.Mask();
  int count = 0;
  for (int32_t t = 0; t < vocab->vocab_size(); ++t) count += MaskHas(mask, t);
  EXPECT_EQ(count, 1);
  EXPECT_TRUE(MaskHas(mask, end));
  EXPECT_TRUE(m.Accept(end));
  EXPECT_TRUE(m.can_end());
}

TEST(GrammarTest, LeftRecursionIsRefused) {
  Grammar g;
  const int32_t a = g.AddRule("a");
  g.Define(a, Alt({Seq({Call(a), Lit("x")}), Lit("y")}));
  EXPECT_FALSE(g.Compile(a).ok());
}

TEST(GrammarTest, CodePointRangesAreExact) {
  for (auto [lo, hi] : std::vector<std::pair<uint32_t, uint32_t>>{{0x41, 0x5A}, {0x80, 0x7FF}, {0x7F0, 0x900},
                                                                   {0xFF0, 0x10010}, {0xD7F0, 0xE010}, {0x10000, 0x10FFFF}}) {
    Grammar g;
    const int32_t r = g.AddRule("r");
    g.Define(r, CodePoints(lo, hi));
    ASSERT_TRUE(g.Compile(r).ok());
    for (uint32_t cp : {lo - 1, lo, lo + 1, (lo + hi) / 2, hi - 1, hi, hi + 1, 0xD800u, 0xDFFFu}) {
      if (cp > 0x10FFFF) continue;
      std::string s;
      if (cp < 0x80) s = std::string(1, static_cast<char>(cp));
      else if (cp < 0x800) s = {static_cast<char>(0xC0 | (cp >> 6)), static_cast<char>(0x80 | (cp & 0x3F))};
      else if (cp < 0x10000) s = {static_cast<char>(0xE0 | (cp >> 12)), static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
      else s = {static_cast<char>(0xF0 | (cp >> 18)), static_cast<char>(0x80 | ((cp >> 12) & 0x3F)), static_cast<char>(0x80 | ((cp >> 6) & 0x3F)), static_cast<char>(0x80 | (cp & 0x3F))};
      const bool in = cp >= lo && cp <= hi && !(cp >= 0xD800 && cp <= 0xDFFF);
      EXPECT_EQ(Accepts(g, s), in) << std::hex << lo << "-" << hi << " cp " << cp;
    }
  }
}

}  // namespace
}  // namespace moeserve::grammar
