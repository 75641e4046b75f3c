// Streaming parser for what gpt-oss samples after "<|start|>assistant".
//
// Push() takes sampled token ids one by one and emits typed deltas: reasoning
// text (analysis channel), content (final channel and anything unplaceable),
// tool calls (recipient "functions.NAME": a begin delta with the name, then
// argument text as it streams) and the finish reason ("<|return|>" -> stop,
// "<|call|>" -> tool_calls; Finish() -> length or stop).
//
// It accepts what gpt-oss really emits: the recipient in the role part or
// after the channel, "commentary to=assistant", a missing channel, text before
// a "<|start|>", a header cut short, stray special tokens. It never throws and
// never drops text: ordinary text it cannot place becomes content. Text is
// decoded incrementally and never split inside a UTF-8 character.
//
// Thread-safety: one parser per sequence.
#pragma once

#include <string>
#include <vector>

#include "router/text/tokenizer.h"

namespace moeserve::text {

struct HarmonyDelta {
  enum class Kind { kReasoning, kContent, kToolCallBegin, kToolCallArguments, kFinish };
  Kind kind;
  std::string text;           // reasoning / content / argument text; finish reason for kFinish
  std::string tool_name;      // kToolCallBegin: the function name (without "functions.")
  int tool_index = -1;        // kToolCallBegin / kToolCallArguments: 0, 1, ... within the response
};

class HarmonyStreamParser {
 public:
  explicit HarmonyStreamParser(const Tokenizer& tok);

  // Consumes one sampled token; appends the deltas it completes to `out`.
  void Push(int32_t id, std::vector<HarmonyDelta>* out);
  // The stream ended without a stop token; `length` says it hit max tokens.
  void Finish(bool length, std::vector<HarmonyDelta>* out);

  bool finished() const { return finished_; }
  // Bytes of ordinary text consumed as header structure (role, channel,
  // recipient, content type) rather than emitted, for the no-lost-text check.
  size_t structural_bytes() const { return structural_bytes_; }

 private:
  enum class State { kHeader, kContent, kExpectStart };
  enum class Sink { kReasoning, kContent, kToolArgs };
  void BeginContent(std::vector<HarmonyDelta>* out);
  void EndMessage(std::vector<HarmonyDelta>* out);
  void Emit(const std::string& text, std::vector<HarmonyDelta>* out);
  void FlushHeaderAsContent(std::vector<HarmonyDelta>* out);

  const Tokenizer& tok_;
  State state_ = State::kHeader;
  Sink sink_ = Sink::kContent;
  std::string header_;             // header text so far (specials as their text)
  std::string header_ordinary_;    // the ordinary-token bytes of header_
  IncrementalDecoder decoder_;
  int num_tool_calls_ = 0;
  bool finished_ = false;
  size_t structural_bytes_ = 0;
};

}  // namespace moeserve::text
