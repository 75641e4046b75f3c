// Stop strings over streamed text (OpenAI's `stop`).
//
// Push() takes the next piece of decoded text and returns what may be shown
// now: text that could still be the start of a stop string is held back, so a
// stop string never leaks in part. Once a stop string appears, the text before
// it is returned, stopped() turns true and everything after is dropped.
// Pieces are whole UTF-8 characters (from IncrementalDecoder) and stop strings
// are valid UTF-8, so what is held back never splits a character.
#pragma once

#include <string>
#include <vector>

namespace moeserve::text {

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  std::string Push(const std::string& piece);
  // The end of the stream: whatever was held back.
  std::string Flush();
  bool stopped() const { return stopped_; }
  bool empty() const { return stops_.empty(); }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace moeserve::text
