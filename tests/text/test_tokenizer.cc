// The o200k_harmony tokenizer against golden vectors published with
// openai/harmony and tiktoken (tokenizer.md §6), plus UTF-8 handling and the
// streaming decoder. The large corpus and fuzz comparison against npm tiktoken
// is tests/reference/tiktoken_compare.mjs.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>

#include "router/text/tokenizer.h"

#ifndef MOESERVE_TOKENIZER_JSON
#error "MOESERVE_TOKENIZER_JSON must name the gpt-oss tokenizer.json"
#endif

namespace moeserve::text {
namespace {

const Tokenizer& Tok() {
  static const Tokenizer* t = [] {
    auto r = Tokenizer::FromTokenizerJson(MOESERVE_TOKENIZER_JSON);
    EXPECT_TRUE(r.ok()) << r.status();
    return r->release();
  }();
  return *t;
}

using Ids = std::vector<int32_t>;

TEST(TokenizerTest, GoldenVectors) {
  const std::vector<std::pair<std::string, Ids>> cases = {
      {"hello world", {24912, 2375}},
      {"<|start|>", {27, 91, 5236, 91, 29}},
      {"Hello, world!", {13225, 11, 2375, 0}},
      {"I'm", {15390}},
      {"DON'T", {134882, 51532}},
      {"12345", {7633, 2548}},
      {"1234567890", {7633, 19354, 29338, 15}},
      {"\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C\xEF\xBC\x81", {177519, 979, 28428, 3393}},
      {"\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7\xE2\x80\x8D\xF0\x9F\x91\xA6",
       {28823, 101, 2524, 28823, 102, 2524, 28823, 100, 2524, 28823, 99}},
      {"caf\xC3\xA9", {66, 103112}},
      {"a   b", {64, 256, 287}},
      {"\n\n\n", {2499}},
      {"a \n b", {64, 793, 287}},
      {"def f(x):\n    return x**2\n", {1314, 285, 4061, 1883, 271, 622, 1215, 410, 17, 198}},
      // Unicode White_Space: U+FEFF is not whitespace, U+0085 is.
      {"x \xEF\xBB\xBFy", {87, 71280, 88}},
      {"a \xC2\x85" "b", {64, 220, 126, 227, 65}},
      {"\xEF\xBB\xBF ", {5574, 220}},
  };
  for (const auto& [text, want] : cases) EXPECT_EQ(Tok().EncodeOrdinary(text), want) << text;
  EXPECT_EQ(Tok().EncodeWithSpecials("<|start|>"), Ids{200006});
  EXPECT_EQ(Tok().EncodeWithSpecials("<|start|>user<|message|>hi<|end|>"), (Ids{200006, 1428, 200008, 3686, 200007}));
  EXPECT_EQ(Tok().EncodeOrdinary("assistant"), Ids{173781});
  EXPECT_EQ(Tok().EncodeOrdinary("analysis"), Ids{35644});
  EXPECT_EQ(Tok().EncodeOrdinary("final"), Ids{17196});
}

TEST(TokenizerTest, SpecialTokensAndReservedIds) {
  EXPECT_EQ(Tok().vocab_size(), 201088);
  EXPECT_EQ(Tok().num_ordinary(), 199998);
  EXPECT_EQ(Tok().SpecialId("<|return|>"), 200002);
  EXPECT_EQ(Tok().SpecialId("<|call|>"), 200012);
  EXPECT_EQ(Tok().SpecialId("<|constrain|>"), 200003);
  EXPECT_EQ(Tok().SpecialId("<|endofprompt|>"), 200018);
  EXPECT_EQ(Tok().SpecialId("<|reserved_200019|>"), 200019);
  EXPECT_EQ(Tok().SpecialId("<|reserved_201087|>"), 201087);
  EXPECT_EQ(Tok().SpecialId("<|reserved_201088|>"), -1);
  EXPECT_EQ(*Tok().Decode({200019, 201087}), "<|reserved_200019|><|reserved_201087|>");
  EXPECT_EQ(Tok().EncodeWithSpecials("a<|reserved_200500|>b"), (Ids{64, 200500, 65}));
  // Unknown or unterminated special-looking text is plain text.
  EXPECT_EQ(Tok().EncodeWithSpecials("<|nope|>"), Tok().EncodeOrdinary("<|nope|>"));
  EXPECT_EQ(Tok().EncodeWithSpecials("<|start"), Tok().EncodeOrdinary("<|start"));
}

TEST(TokenizerTest, DecodeRoundTripAndBadIds) {
  const std::string text = "Grüße, 世界! \t\n  code: x->y; emoji \xF0\x9F\x98\x80 <|end|>";
  EXPECT_EQ(*Tok().Decode(Tok().EncodeOrdinary(text)), text);
  EXPECT_EQ(*Tok().Decode(Tok().EncodeWithSpecials(text)), text);
  EXPECT_EQ(Tok().Decode({1, -1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Tok().Decode({201088}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenizerTest, InvalidUtf8BecomesReplacementCharacter) {
  EXPECT_EQ(SanitizeUtf8("a\xFF" "b"), "a\xEF\xBF\xBD" "b");
  EXPECT_EQ(SanitizeUtf8("\xE4\xBD"), "\xEF\xBF\xBD");             // truncated 3-byte character
  EXPECT_EQ(SanitizeUtf8("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(SanitizeUtf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong
  EXPECT_EQ(Tok().EncodeOrdinary("a\xFF"), Tok().EncodeOrdinary("a\xEF\xBF\xBD"));
}

TEST(TokenizerTest, IncrementalDecoderNeverSplitsCharacters) {
  // Byte tokens of a 4-byte emoji arrive one at a time.
  const std::string emoji = "\xF0\x9F\x98\x80";
  std::vector<int32_t> ids;
  // (Encoding a lone byte would first turn it into U+FFFD, so find the byte tokens.)
  auto byte_token = [](unsigned char c) {
    for (int32_t id = 0; id < Tok().num_ordinary(); ++id) {
      const std::string* b = Tok().TokenBytes(id);
      if (b && b->size() == 1 && static_cast<unsigned char>((*b)[0]) == c) return id;
    }
    return -1;
  };
  for (unsigned char c : emoji) ids.push_back(byte_token(c));
  IncrementalDecoder dec(Tok());
  std::string got;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string part = *dec.Add(ids[i]);
    if (i + 1 < ids.size()) {
      EXPECT_EQ(part, "") << i;
    }
    got += part;
  }
  EXPECT_EQ(got + dec.Flush(), emoji);
  // A dangling lead byte is flushed as U+FFFD, and bytes are never lost.
  IncrementalDecoder d2(Tok());
  EXPECT_EQ(*d2.Add(ids[0]), "");
  EXPECT_EQ(*d2.Add(Tok().EncodeOrdinary("a")[0]), "\xEF\xBF\xBD" "a");
  EXPECT_EQ(d2.Flush(), "");
  EXPECT_FALSE(d2.Add(-5).ok());
}

// Long runs of one character (one pre-token each) must encode in linear time:
// 4x the input may take about 4x as long, not 16x. A ratio of two timings of
// the same build, so it holds under sanitizers and on slow machines.
TEST(TokenizerTest, LongRunsAreNotQuadratic) {
  auto seconds = [](size_t n) {
    double best = 1e9;
    for (int rep = 0; rep < 2; ++rep) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::string a(n, 'a'), sp(n, ' ');
      const auto ids = Tok().EncodeOrdinary(a);
      const auto ids2 = Tok().EncodeOrdinary(sp);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      EXPECT_EQ(*Tok().Decode(ids), a);
      EXPECT_EQ(*Tok().Decode(ids2), sp);
    }
    return best;
  };
  const double small = seconds(128 << 10), big = seconds(512 << 10);
  EXPECT_LT(big / small, 9.0) << "128 KiB runs: " << small << " s, 512 KiB: " << big << " s";
}

}  // namespace
}  // namespace moeserve::text
