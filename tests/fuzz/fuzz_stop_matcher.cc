// Stop strings over streamed text: the first bytes choose up to four stop
// strings, the rest is pushed in pieces. What comes out must be a prefix of
// the text, and must not contain a stop string.
#include <cstdint>
#include <string>
#include <vector>

#include "router/text/stop_matcher.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moeserve;
  if (size < 2) return 0;
  size_t i = 0;
  std::vector<std::string> stops;
  const int n = data[i++] % 5;
  for (int s = 0; s < n && i < size; ++s) {
    const size_t len = 1 + data[i++] % 6;
    if (i + len > size) break;
    stops.emplace_back(reinterpret_cast<const char*>(data + i), len);
    i += len;
  }
  text::StopMatcher m(stops);
  std::string text, shown;
  while (i < size && !m.stopped()) {
    const size_t len = 1 + data[i++] % 7;
    const std::string piece(reinterpret_cast<const char*>(data + i), std::min(len, size - i));
    i += piece.size();
    text += piece;
    shown += m.Push(piece);
  }
  if (!m.stopped()) shown += m.Flush();
  if (text.compare(0, shown.size(), shown) != 0) __builtin_trap();  // a prefix of the text
  for (const std::string& s : stops) {
    if (shown.find(s) != std::string::npos) __builtin_trap();  // no stop string leaks
  }
  if (!m.stopped() && shown != text) __builtin_trap();  // nothing lost without a stop
  return 0;
}
