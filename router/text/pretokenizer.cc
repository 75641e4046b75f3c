#include "router/text/pretokenizer.h"

namespace moeserve::text {
namespace {

#include "router/text/unicode_classes.inc"  // kClassBlockShift, kClassBlock, kClassData (generated)

constexpr uint8_t kQuote = '\'';

struct Char {
  uint8_t cls;
  uint8_t len;  // bytes
};

inline uint8_t ClassOf(uint32_t cp) {
  return kClassData[(static_cast<uint32_t>(kClassBlock[cp >> kClassBlockShift]) << kClassBlockShift) |
                    (cp & ((1u << kClassBlockShift) - 1))];
}

// The ASCII classes, computed once from the table.
struct AsciiClasses {
  uint8_t cls[128];
  AsciiClasses() {
    for (uint32_t c = 0; c < 128; ++c) cls[c] = ClassOf(c);
  }
};
const AsciiClasses kAscii;

// The character at p[i] (i < n; valid UTF-8).
inline Char At(const uint8_t* p, size_t i) {
  const uint8_t c = p[i];
  if (c < 0x80) return {kAscii.cls[c], 1};
  if (c < 0xE0) return {ClassOf(((c & 0x1Fu) << 6) | (p[i + 1] & 0x3Fu)), 2};
  if (c < 0xF0) return {ClassOf(((c & 0x0Fu) << 12) | ((p[i + 1] & 0x3Fu) << 6) | (p[i + 2] & 0x3Fu)), 3};
  return {ClassOf(((c & 0x07u) << 18) | ((p[i + 1] & 0x3Fu) << 12) | ((p[i + 2] & 0x3Fu) << 6) | (p[i + 3] & 0x3Fu)),
          4};
}

// [^\r\n\p{L}\p{N}]: the optional first character of the letter alternatives.
inline bool IsPrefix(uint8_t cls) { return !(cls & (kPreNewline | kPreLetter | kPreNumber)); }
// [^\s\p{L}\p{N}]
inline bool IsSymbol(uint8_t cls) { return !(cls & (kPreSpace | kPreLetter | kPreNumber)); }

}  // namespace

// [U]*[W]+ contraction? from s (U = kPreUpper, W = kPreLower). U* gives
// back characters until W+ can start: either the character after the U run
// is W, or the run's last W character (Lm, Lo or a mark) starts W+, which
// then ends with it (what follows it in the run is Lu or Lt).
inline __attribute__((always_inline)) size_t O200kSplitter::Lower(size_t s) const {
  size_t e = s, last_w_end = kNone;
  while (e < n_) {
    const Char c = At(p_, e);
    if (!(c.cls & kPreUpper)) {
      if (c.cls & kPreLower) return Contraction(LowerRun(e + c.len));
      break;
    }
    e += c.len;
    if (c.cls & kPreLower) last_w_end = e;
  }
  return last_w_end == kNone ? kNone : Contraction(last_w_end);
}

// [U]+[W]* contraction? from s.
inline __attribute__((always_inline)) size_t O200kSplitter::Upper(size_t s) const {
  size_t e = s;
  while (e < n_) {
    const Char c = At(p_, e);
    if (!(c.cls & kPreUpper)) break;
    e += c.len;
  }
  if (e == s) return kNone;
  return Contraction(LowerRun(e));
}

inline __attribute__((always_inline)) size_t O200kSplitter::LowerRun(size_t e) const {
  while (e < n_) {
    const Char c = At(p_, e);
    if (!(c.cls & kPreLower)) break;
    e += c.len;
  }
  return e;
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d)? at e.
inline __attribute__((always_inline)) size_t O200kSplitter::Contraction(size_t e) const {
  if (e + 1 >= n_ || p_[e] != kQuote) return e;
  const uint8_t a = p_[e + 1] | 0x20;  // ASCII lower case (only compared with letters)
  const uint8_t b = e + 2 < n_ ? (p_[e + 2] | 0x20) : 0;
  switch (a) {
    case 's':
    case 't':
    case 'm':
    case 'd':
      return e + 2;
    case 'r':
      return b == 'e' ? e + 3 : e;
    case 'v':
      return b == 'e' ? e + 3 : e;
    case 'l':
      return b == 'l' ? e + 3 : e;
    default:
      break;
  }
  // U+017F LATIN SMALL LETTER LONG S folds to s.
  if (p_[e + 1] == 0xC5 && e + 2 < n_ && p_[e + 2] == 0xBF) return e + 3;
  return e;
}

size_t O200kSplitter::PieceEnd(size_t i) const {
  const Char c0 = At(p_, i);
  const bool prefix = IsPrefix(c0.cls);
  size_t e;
  // Alternative 1, with and then without the optional first character (the
  // second differs only when that character is a mark).
  if (prefix && (e = Lower(i + c0.len)) != kNone) return e;
  if ((e = Lower(i)) != kNone) return e;
  // Alternative 2.
  if (prefix && (e = Upper(i + c0.len)) != kNone) return e;
  if ((e = Upper(i)) != kNone) return e;
  // \p{N}{1,3}
  if (c0.cls & kPreNumber) {
    e = i + c0.len;
    for (int k = 1; k < 3 && e < n_; ++k) {
      const Char c = At(p_, e);
      if (!(c.cls & kPreNumber)) break;
      e += c.len;
    }
    return e;
  }
  // " ?[^\s\p{L}\p{N}]+[\r\n/]*"
  size_t s = kNone;
  if (p_[i] == ' ' && i + 1 < n_ && IsSymbol(At(p_, i + 1).cls)) s = i + 1;
  else if (IsSymbol(c0.cls)) s = i;
  if (s != kNone) {
    e = s;
    while (e < n_) {
      const Char c = At(p_, e);
      if (!IsSymbol(c.cls)) break;
      e += c.len;
    }
    while (e < n_ && (p_[e] == '\r' || p_[e] == '\n' || p_[e] == '/')) ++e;
    return e;
  }
  // The whitespace alternatives share one scan of the run of \s.
  if (c0.cls & kPreSpace) {
    size_t after_newline = kNone;  // end of the last \r or \n in the run
    size_t last = i;               // start of the run's last character
    e = i;
    int count = 0;
    while (e < n_) {
      const Char c = At(p_, e);
      if (!(c.cls & kPreSpace)) break;
      last = e;
      e += c.len;
      ++count;
      if (c.cls & kPreNewline) after_newline = e;
    }
    // \s*[\r\n]+ : \s* gives back characters until a newline follows; the
    // last newline of the run is the first one found that way.
    if (after_newline != kNone) return after_newline;
    // \s+(?!\S) : the whole run at the end of the text, or the run without
    // its last character when something other than \s follows.
    if (e == n_) return e;
    if (count >= 2) return last;
    // \s+
    return e;
  }
  return i + c0.len;  // unreachable: every character is a letter, mark, number, symbol or \s
}

uint8_t PreTokenClass(uint32_t cp) { return cp < 0x110000 ? ClassOf(cp) : 0; }

void SplitO200k(std::string_view text, std::vector<size_t>* ends) {
  const O200kSplitter splitter(text);
  for (size_t i = 0; i < text.size();) {
    i = splitter.PieceEnd(i);
    ends->push_back(i);
  }
}

}  // namespace moeserve::text
