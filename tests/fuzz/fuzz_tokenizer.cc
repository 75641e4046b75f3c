// The o200k_harmony tokenizer on arbitrary bytes: encoding (ordinary and with
// special-token text) must not crash and must round-trip valid UTF-8; the
// incremental decoder must take any id sequence (bad ids as errors) and emit
// only valid UTF-8. The o200k splitter's pieces must cover valid text exactly,
// each non-empty and made of whole characters.
#include <cstdint>
#include <cstring>
#include <string>

#include "router/text/pretokenizer.h"
#include "tests/fuzz/fuzz_util.h"

namespace {
// Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF.
bool ValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) len = 2, cp = c & 0x1f;
    else if ((c & 0xf0) == 0xe0) len = 3, cp = c & 0x0f;
    else if ((c & 0xf8) == 0xf0) len = 4, cp = c & 0x07;
    else return false;
    if (i + len > s.size()) return false;
    for (int k = 1; k < len; ++k) {
      const unsigned char d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff)) {
      return false;
    }
    i += len;
  }
  return true;
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeserve;
  const text::Tokenizer& tok = fuzz::Tok();
  const std::string s(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = tok.EncodeOrdinary(s);
  (void)tok.EncodeWithSpecials(s);
  if (ValidUtf8(s)) {
    std::string back;
    text::IncrementalDecoder dec(tok);
    for (int32_t id : ids) {
      auto piece = dec.Add(id);
      if (!piece.ok()) __builtin_trap();
      back += *piece;
    }
    back += dec.Flush();
    if (back != s) __builtin_trap();  // ordinary text round-trips
    std::vector<size_t> ends;
    text::SplitO200k(s, &ends);
    size_t b = 0;
    for (const size_t e : ends) {
      if (e <= b || e > s.size() || !ValidUtf8(s.substr(b, e - b))) __builtin_trap();
      b = e;
    }
    if (b != s.size()) __builtin_trap();
  }
  // The bytes as little-endian ids (any value, also out of range).
  text::IncrementalDecoder dec(tok);
  std::string out;
  for (size_t i = 0; i + 4 <= size; i += 4) {
    int32_t id;
    std::memcpy(&id, data + i, 4);
    auto piece = dec.Add(id % 210000);
    if (piece.ok()) out += *piece;
  }
  out += dec.Flush();
  if (!ValidUtf8(out)) __builtin_trap();
  return 0;
}
