// The streaming harmony parser on what gpt-oss emits (fixtures written from
// the harmony format and gpt-oss's observed outputs), on truncated and odd
// streams, and on random token streams: no crash and no lost text.
#include <gtest/gtest.h>

#include <random>

#include "router/text/harmony_parser.h"
#include "router/text/tokenizer.h"

namespace moeserve::text {
namespace {

const Tokenizer& Tok() {
  static const Tokenizer* t = Tokenizer::FromTokenizerJson(MOESERVE_TOKENIZER_JSON)->release();
  return *t;
}

struct Parsed {
  std::string reasoning, content, finish;
  std::vector<std::pair<std::string, std::string>> calls;  // name, arguments
  std::vector<HarmonyDelta> deltas;
  size_t structural = 0;
};

Parsed Parse(const std::vector<int32_t>& ids, bool end_with_length = false) {
  HarmonyStreamParser p(Tok());
  Parsed r;
  for (int32_t id : ids) p.Push(id, &r.deltas);
  if (!p.finished()) p.Finish(end_with_length, &r.deltas);
  for (const auto& d : r.deltas) {
    switch (d.kind) {
      case HarmonyDelta::Kind::kReasoning: r.reasoning += d.text; break;
      case HarmonyDelta::Kind::kContent: r.content += d.text; break;
      case HarmonyDelta::Kind::kToolCallBegin:
        EXPECT_EQ(d.tool_index, static_cast<int>(r.calls.size()));
        r.calls.emplace_back(d.tool_name, "");
        break;
      case HarmonyDelta::Kind::kToolCallArguments:
        EXPECT_EQ(d.tool_index, static_cast<int>(r.calls.size()) - 1);
        r.calls.back().second += d.text;
        break;
      case HarmonyDelta::Kind::kFinish: r.finish = d.text; break;
    }
  }
  r.structural = p.structural_bytes();
  return r;
}

Parsed Parse(const std::string& completion, bool length = false) {
  return Parse(Tok().EncodeWithSpecials(completion), length);
}

TEST(HarmonyParserTest, AnalysisThenFinal) {
  const Parsed r = Parse("<|channel|>analysis<|message|>User greets. Reply.<|end|><|start|>assistant<|channel|>final"
                         "<|message|>Hello! How can I help?<|return|>");
  EXPECT_EQ(r.reasoning, "User greets. Reply.");
  EXPECT_EQ(r.content, "Hello! How can I help?");
  EXPECT_TRUE(r.calls.empty());
  EXPECT_EQ(r.finish, "stop");
}

TEST(HarmonyParserTest, ToolCallWithRecipientAfterChannel) {
  const Parsed r = Parse("<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary"
                         " to=functions.get_weather <|constrain|>json<|message|>{\"location\":\"Paris\"}<|call|>");
  EXPECT_EQ(r.reasoning, "Need the weather.");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].first, "get_weather");
  EXPECT_EQ(r.calls[0].second, "{\"location\":\"Paris\"}");
  EXPECT_EQ(r.content, "");
  EXPECT_EQ(r.finish, "tool_calls");
}

TEST(HarmonyParserTest, ToolCallWithRecipientInRole) {
  const Parsed r = Parse(" to=functions.lookup<|channel|>commentary json<|message|>{\"q\": 1}<|call|>");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].first, "lookup");
  EXPECT_EQ(r.calls[0].second, "{\"q\": 1}");
  EXPECT_EQ(r.finish, "tool_calls");
}

TEST(HarmonyParserTest, SeveralToolCalls) {
  const Parsed r = Parse("<|channel|>commentary to=functions.a <|constrain|>json<|message|>{\"x\":1}<|end|>"
                         "<|start|>assistant<|channel|>commentary to=functions.b <|constrain|>json<|message|>{\"y\":2}"
                         "<|call|>");
  ASSERT_EQ(r.calls.size(), 2u);
  EXPECT_EQ(r.calls[0], (std::pair<std::string, std::string>{"a", "{\"x\":1}"}));
  EXPECT_EQ(r.calls[1], (std::pair<std::string, std::string>{"b", "{\"y\":2}"}));
  EXPECT_EQ(r.finish, "tool_calls");
}

TEST(HarmonyParserTest, OddButRealShapes) {
  // No channel at all.
  EXPECT_EQ(Parse("<|message|>Hi there<|return|>").content, "Hi there");
  // Commentary addressed to the user (a preamble) is content.
  const Parsed pre = Parse("<|channel|>commentary to=assistant<|message|>Checking...<|end|><|start|>assistant"
                           "<|channel|>final<|message|>Done.<|return|>");
  EXPECT_EQ(pre.content, "Checking...Done.");
  EXPECT_TRUE(pre.calls.empty());
  // Text before a <|start|>.
  const Parsed before = Parse("<|channel|>final<|message|>A<|end|>stray<|start|>assistant<|channel|>final"
                              "<|message|>B<|return|>");
  EXPECT_EQ(before.content, "AstrayB");
  // Stray formatting tokens inside content carry no text.
  EXPECT_EQ(Parse("<|channel|>final<|message|>a<|constrain|>b<|channel|>c<|return|>").content, "abc");
  // A message ended by a new <|start|> instead of <|end|>.
  const Parsed restart = Parse("<|channel|>analysis<|message|>think<|start|>assistant<|channel|>final<|message|>ok"
                               "<|return|>");
  EXPECT_EQ(restart.reasoning, "think");
  EXPECT_EQ(restart.content, "ok");
  // <|call|> with no tool call is a plain stop.
  EXPECT_EQ(Parse("<|channel|>final<|message|>x<|call|>").finish, "stop");
}

TEST(HarmonyParserTest, TruncatedStreams) {
  const Parsed a = Parse("<|channel|>analysis<|message|>Thinking about", /*length=*/true);
  EXPECT_EQ(a.reasoning, "Thinking about");
  EXPECT_EQ(a.finish, "length");
  const Parsed b = Parse("<|channel|>commentary to=functions.f <|constrain|>json<|message|>{\"a\":", true);
  ASSERT_EQ(b.calls.size(), 1u);
  EXPECT_EQ(b.calls[0].second, "{\"a\":");
  EXPECT_EQ(b.finish, "length");
  // Cut inside the header: its text is content, not lost.
  const Parsed c = Parse("<|channel|>fin", true);
  EXPECT_EQ(c.content, "fin");
  EXPECT_EQ(c.finish, "length");
}

TEST(HarmonyParserTest, ArgumentsStreamAndUtf8IsNeverSplit) {
  const std::string args = "{\"city\": \"K\xC3\xB8" "benhavn \xF0\x9F\x8C\xA7\", \"days\": 3}";
  std::vector<int32_t> ids = Tok().EncodeWithSpecials("<|channel|>commentary to=functions.w <|constrain|>json<|message|>");
  // Feed the arguments byte by byte (single-byte tokens), the worst case for UTF-8.
  for (unsigned char c : args) {
    for (int32_t id = 0; id < Tok().num_ordinary(); ++id) {
      const std::string* b = Tok().TokenBytes(id);
      if (b->size() == 1 && static_cast<unsigned char>((*b)[0]) == c) {
        ids.push_back(id);
        break;
      }
    }
  }
  ids.push_back(200012);
  const Parsed r = Parse(ids);
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].second, args);
  int arg_deltas = 0;
  for (const auto& d : r.deltas) {
    if (d.kind == HarmonyDelta::Kind::kToolCallArguments) ++arg_deltas;
    EXPECT_EQ(SanitizeUtf8(d.text), d.text) << "delta splits a character";
  }
  EXPECT_GE(arg_deltas, 1);
}

TEST(HarmonyParserTest, IncrementalDeltasArriveBeforeTheEnd) {
  HarmonyStreamParser p(Tok());
  std::vector<HarmonyDelta> out;
  for (int32_t id : Tok().EncodeWithSpecials("<|channel|>final<|message|>one two three")) p.Push(id, &out);
  ASSERT_FALSE(out.empty());
  std::string content;
  for (const auto& d : out) content += d.text;
  EXPECT_EQ(content, "one two three");
}

// Random streams of ordinary text and every harmony special token: no crash,
// every ordinary byte is emitted or consumed as header structure, and no
// delta splits a UTF-8 character.
TEST(HarmonyParserTest, RandomStreamsLoseNoText) {
  std::mt19937 g(7);
  std::vector<int32_t> specials = {199998, 199999, 200002, 200003, 200005, 200006, 200007, 200008, 200012, 200018, 200500};
  std::vector<int32_t> words;
  for (const char* w : {"analysis", "final", "commentary", " to=functions.f", " to=", "functions.", "json", " ",
                        "hello", "\xE4\xBD\xA0\xE5\xA5\xBD", "{\"a\":1}", "assistant", "\n"}) {
    for (int32_t id : Tok().EncodeOrdinary(w)) words.push_back(id);
  }
  for (int iter = 0; iter < 5000; ++iter) {
    std::vector<int32_t> ids;
    const int n = 1 + static_cast<int>(g() % 40);
    for (int i = 0; i < n; ++i) {
      const int r = static_cast<int>(g() % 10);
      ids.push_back(r < 4 ? specials[g() % specials.size()] : r < 8 ? words[g() % words.size()]
                                                                     : static_cast<int32_t>(g() % 199998));
    }
    // Keep only tokens that are complete UTF-8 by themselves, so byte counts are exact.
    std::vector<int32_t> kept;
    for (int32_t id : ids) {
      const std::string* b = Tok().TokenBytes(id);
      if (id >= Tok().num_ordinary() || SanitizeUtf8(*b) == *b) kept.push_back(id);
    }
    HarmonyStreamParser p(Tok());
    std::vector<HarmonyDelta> out;
    size_t ordinary = 0;
    for (int32_t id : kept) {
      if (p.finished()) break;
      if (id < Tok().num_ordinary()) ordinary += Tok().TokenBytes(id)->size();
      p.Push(id, &out);
    }
    p.Finish(true, &out);
    size_t emitted = 0;
    int finishes = 0;
    for (const auto& d : out) {
      if (d.kind == HarmonyDelta::Kind::kFinish) ++finishes;
      else emitted += d.text.size();
      ASSERT_EQ(SanitizeUtf8(d.text), d.text);
    }
    ASSERT_EQ(finishes, 1);
    ASSERT_EQ(emitted + p.structural_bytes(), ordinary) << "iteration " << iter;
  }
}

}  // namespace
}  // namespace moeserve::text
