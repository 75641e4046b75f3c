// The o200k_harmony tokenizer against golden vectors published with
// openai/harmony and tiktoken (tokenizer.md §6), plus UTF-8 handling and the
// streaming decoder. The large corpus and fuzz comparison against npm tiktoken
// is tests/reference/tiktoken_compare.mjs.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>

#include "router/text/pretokenizer.h"
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

// Letters added in Unicode 15.0-16.0 take a contraction as tiktoken (Unicode
// 16 tables) does; ids from npm tiktoken 1.0.22.
TEST(TokenizerTest, UnicodeSixteenLettersTakeContractions) {
  const std::vector<std::pair<std::string, Ids>> cases = {
      {"\xF0\x93\x98\x8C's", {172, 241, 246, 234, 885}},         // U+1360C (16.0, Lo)
      {"\xF0\xB1\x92\x8D're", {172, 109, 240, 235, 4118}},       // U+3148D (15.0, Lo)
      {"\xF0\x9E\x97\x90\xF0\x9E\x97\x91'll", {172, 252, 245, 238, 172, 252, 245, 239, 6090}},  // Ol Onal
      {"\xF0\x91\x8E\x80've", {172, 239, 236, 222, 7341}},       // U+11380 Tulu-Tigalari
      {"x\xCC\x81'D", {87, 13430, 78685}},
      {"  hello", {220, 40617}},
      {"a\n\n  b", {64, 279, 220, 287}},
  };
  for (const auto& [text, want] : cases) EXPECT_EQ(Tok().EncodeOrdinary(text), want) << text;
}

// The classes come from the Unicode 16.0 database (values from its
// UnicodeData.txt and PropList.txt).
TEST(PreTokenizerTest, CodePointClasses) {
  const uint8_t upper = kPreUpper | kPreLetter, lower = kPreLower | kPreLetter,
                other = kPreUpper | kPreLower | kPreLetter, mark = kPreUpper | kPreLower;
  EXPECT_EQ(PreTokenClass('A'), upper);
  EXPECT_EQ(PreTokenClass('z'), lower);
  EXPECT_EQ(PreTokenClass(0x01C5), upper);    // Lt
  EXPECT_EQ(PreTokenClass(0x02B0), other);    // Lm
  EXPECT_EQ(PreTokenClass(0x4E2D), other);    // Lo
  EXPECT_EQ(PreTokenClass(0x1360C), other);   // Lo, new in 16.0
  EXPECT_EQ(PreTokenClass(0x3148D), other);   // Lo, new in 15.0
  EXPECT_EQ(PreTokenClass(0x1E5D0), other);   // Ol Onal letter, 16.0
  EXPECT_EQ(PreTokenClass(0x0301), mark);     // Mn
  EXPECT_EQ(PreTokenClass(0x0903), mark);     // Mc
  EXPECT_EQ(PreTokenClass('7'), kPreNumber);
  EXPECT_EQ(PreTokenClass(0x2160), kPreNumber);   // Nl
  EXPECT_EQ(PreTokenClass(0x1D2C0), kPreNumber);  // Kaktovik numeral (No), 15.0
  EXPECT_EQ(PreTokenClass(0x1E5F1), kPreNumber);  // Ol Onal digit (Nd), 16.0
  EXPECT_EQ(PreTokenClass(' '), kPreSpace);
  EXPECT_EQ(PreTokenClass('\n'), kPreSpace | kPreNewline);
  EXPECT_EQ(PreTokenClass(0x0085), kPreSpace);
  EXPECT_EQ(PreTokenClass(0x3000), kPreSpace);
  EXPECT_EQ(PreTokenClass(0xFEFF), 0);  // not White_Space
  EXPECT_EQ(PreTokenClass(0x180E), 0);
  EXPECT_EQ(PreTokenClass(0x200B), 0);
  EXPECT_EQ(PreTokenClass('-'), 0);
  EXPECT_EQ(PreTokenClass(0x10FFFF), 0);
  EXPECT_EQ(PreTokenClass(0x110000), 0);
}

// Pieces written out from the pattern's semantics (leftmost-first,
// backtracking), one case for each way an alternative gives characters back.
TEST(PreTokenizerTest, PiecesFollowThePattern) {
  auto split = [](const std::string& s) {
    std::vector<size_t> ends;
    SplitO200k(s, &ends);
    std::vector<std::string> pieces;
    size_t b = 0;
    for (const size_t e : ends) {
      pieces.push_back(s.substr(b, e - b));
      b = e;
    }
    return pieces;
  };
  using P = std::vector<std::string>;
  EXPECT_EQ(split("Hello world"), (P{"Hello", " world"}));
  EXPECT_EQ(split("HELLOworld"), (P{"HELLOworld"}));         // [U]*[W]+: U run then lower case
  EXPECT_EQ(split("HELLO"), (P{"HELLO"}));                   // alternative 2
  EXPECT_EQ(split("I'm he'LL"), (P{"I'm", " he'LL"}));
  EXPECT_EQ(split("dog's'"), (P{"dog's", "'"}));
  EXPECT_EQ(split("dog'\xC5\xBF"), (P{"dog'\xC5\xBF"}));  // (?i) folds U+017F to s
  EXPECT_EQ(split("1234567"), (P{"123", "456", "7"}));
  EXPECT_EQ(split("\xF0\x9D\x8B\x80\xF0\x9D\x8B\x81\xF0\x9D\x8B\x82\xF0\x9D\x8B\x83"),
            (P{"\xF0\x9D\x8B\x80\xF0\x9D\x8B\x81\xF0\x9D\x8B\x82", "\xF0\x9D\x8B\x83"}));
  EXPECT_EQ(split("  hello"), (P{" ", " hello"}));            // \s+(?!\S) gives back one space
  EXPECT_EQ(split("a   "), (P{"a", "   "}));                  // trailing run whole
  EXPECT_EQ(split("x \n \ny"), (P{"x", " \n \n", "y"}));     // \s*[\r\n]+ to the last newline
  EXPECT_EQ(split("x\n  y"), (P{"x", "\n", " ", " y"}));
  EXPECT_EQ(split(" ... //\n\nz"), (P{" ...", " //\n\n", "z"}));  // symbols, then [\r\n/]*
  EXPECT_EQ(split("\xCC\x81" "abc"), (P{"\xCC\x81" "abc"}));    // a mark is a prefix and a letter
  EXPECT_EQ(split("-ABc"), (P{"-ABc"}));
  EXPECT_EQ(split("\xEF\xBB\xBFword"), (P{"\xEF\xBB\xBFword"}));  // U+FEFF is not \s: a prefix
  // U* gives back its last Lm/Lo: "ABʰC" is [AB][ʰ] then "C".
  EXPECT_EQ(split("AB\xCA\xB0" "C"), (P{"AB\xCA\xB0", "C"}));
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
