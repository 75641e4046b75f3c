// The streaming harmony parser over random token sequences (two bytes per
// token: mostly harmony's special tokens and short text tokens, so the
// structure is reached): it must emit deltas or nothing, and after Finish a
// finish reason, never crash.
#include <cstdint>
#include <vector>

#include "base/harmony_tokens.h"
#include "router/text/harmony_parser.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeserve;
  const text::Tokenizer& tok = fuzz::Tok();
  static const std::vector<int32_t> kSpecial = {harmony::kStart,   harmony::kEnd,      harmony::kMessage,
                                                harmony::kChannel, harmony::kConstrain, harmony::kReturn,
                                                harmony::kCall,    harmony::kEndOfText};
  // Words that make headers: roles, channels, recipients.
  static const std::vector<int32_t> kWords = [&] {
    std::vector<int32_t> w;
    for (const char* s : {"assistant", "analysis", "final", "commentary", " to=", "functions.get_weather", " json",
                          "<|constrain|>", "{\"a\": 1}", "user", "system", "developer", "tool"}) {
      for (int32_t id : tok.EncodeOrdinary(s)) w.push_back(id);
    }
    return w;
  }();
  text::HarmonyStreamParser p(tok);
  std::vector<text::HarmonyDelta> out;
  for (size_t i = 0; i + 2 <= size && !p.finished(); i += 2) {
    const uint16_t v = static_cast<uint16_t>(data[i] | (data[i + 1] << 8));
    int32_t id;
    switch (v % 4) {
      case 0: id = kSpecial[(v / 4) % kSpecial.size()]; break;
      case 1: id = kWords[(v / 4) % kWords.size()]; break;
      default: id = static_cast<int32_t>((v / 4) % 201088); break;
    }
    p.Push(id, &out);
  }
  p.Finish(size % 2 == 1, &out);
  return 0;
}
