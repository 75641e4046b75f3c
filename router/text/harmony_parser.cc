#include "router/text/harmony_parser.h"

#include "absl/strings/match.h"
#include "base/harmony_tokens.h"

namespace moeserve::text {
namespace {

using harmony::kCall, harmony::kEnd, harmony::kMessage, harmony::kReturn, harmony::kStart;

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// The word after `marker` in `h` (up to whitespace, '<' or the end), or "".
std::string WordAfter(const std::string& h, const std::string& marker) {
  const size_t p = h.find(marker);
  if (p == std::string::npos) return "";
  size_t b = p + marker.size(), e = b;
  while (e < h.size() && !IsSpace(h[e]) && h[e] != '<') ++e;
  return h.substr(b, e - b);
}

}  // namespace

HarmonyStreamParser::HarmonyStreamParser(const Tokenizer& tok) : tok_(tok), decoder_(tok) {}

void HarmonyStreamParser::Emit(const std::string& text, std::vector<HarmonyDelta>* out) {
  if (text.empty()) return;
  HarmonyDelta d;
  d.text = text;
  switch (sink_) {
    case Sink::kReasoning: d.kind = HarmonyDelta::Kind::kReasoning; break;
    case Sink::kContent: d.kind = HarmonyDelta::Kind::kContent; break;
    case Sink::kToolArgs:
      d.kind = HarmonyDelta::Kind::kToolCallArguments;
      d.tool_index = num_tool_calls_ - 1;
      break;
  }
  // Merge with the previous delta of the same kind to keep the stream compact.
  if (!out->empty() && out->back().kind == d.kind && out->back().tool_index == d.tool_index &&
      d.kind != HarmonyDelta::Kind::kFinish && d.kind != HarmonyDelta::Kind::kToolCallBegin) {
    out->back().text += d.text;
  } else {
    out->push_back(std::move(d));
  }
}

void HarmonyStreamParser::FlushHeaderAsContent(std::vector<HarmonyDelta>* out) {
  // A header that never reached <|message|>: its ordinary text is content.
  sink_ = Sink::kContent;
  Emit(SanitizeUtf8(header_ordinary_), out);
  header_.clear();
  header_ordinary_.clear();
}

void HarmonyStreamParser::BeginContent(std::vector<HarmonyDelta>* out) {
  // Header forms seen from gpt-oss (after "<|start|>assistant"):
  //   "<|channel|>analysis"   "<|channel|>final"   "" (no channel)
  //   "<|channel|>commentary to=functions.f <|constrain|>json"
  //   " to=functions.f<|channel|>commentary json"   "<|channel|>commentary to=assistant"
  const std::string& h = header_;
  const std::string channel = WordAfter(h, "<|channel|>");
  const std::string recipient = WordAfter(h, "to=");
  sink_ = Sink::kContent;
  if (absl::StartsWith(recipient, "functions.") && recipient.size() > 10) {
    HarmonyDelta d;
    d.kind = HarmonyDelta::Kind::kToolCallBegin;
    d.tool_name = recipient.substr(10);
    d.tool_index = num_tool_calls_++;
    out->push_back(std::move(d));
    sink_ = Sink::kToolArgs;
  } else if (channel == "analysis") {
    sink_ = Sink::kReasoning;
  }
  structural_bytes_ += header_ordinary_.size();
  header_.clear();
  header_ordinary_.clear();
  state_ = State::kContent;
}

void HarmonyStreamParser::EndMessage(std::vector<HarmonyDelta>* out) {
  Emit(decoder_.Flush(), out);
  state_ = State::kExpectStart;
  sink_ = Sink::kContent;
}

void HarmonyStreamParser::Push(int32_t id, std::vector<HarmonyDelta>* out) {
  if (finished_) return;
  const std::string* bytes = tok_.TokenBytes(id);
  if (!bytes) return;  // ids outside the vocabulary are rejected before sampling results get here
  const bool special = id >= tok_.num_ordinary();
  if (id == kReturn || id == kCall) {
    if (state_ == State::kHeader) {
      if (header_.empty() || id != kCall) FlushHeaderAsContent(out);
      else BeginContent(out);  // "<|call|>" right after a header: an empty tool call
    }
    if (state_ == State::kContent) EndMessage(out);
    finished_ = true;
    out->push_back({HarmonyDelta::Kind::kFinish, id == kCall && num_tool_calls_ > 0 ? "tool_calls" : "stop", "", -1});
    return;
  }
  switch (state_) {
    case State::kHeader:
      if (id == kMessage) {
        BeginContent(out);
      } else if (id == kStart || id == kEnd) {
        // A header that restarts or ends: keep its text as content.
        FlushHeaderAsContent(out);
        state_ = id == kStart ? State::kHeader : State::kExpectStart;

      } else {
        header_ += *bytes;
        if (!special) header_ordinary_ += *bytes;
      }
      break;
    case State::kContent:
      if (id == kEnd) {
        EndMessage(out);
      } else if (id == kStart) {
        EndMessage(out);
        state_ = State::kHeader;
      } else if (special) {
        // Stray formatting, legacy (<|endoftext|>) or reserved tokens inside
        // content are not text.
      } else {
        auto text = decoder_.Add(id);
        if (text.ok()) Emit(*text, out);
      }
      break;
    case State::kExpectStart:
      if (id == kStart) {
        state_ = State::kHeader;
      } else if (!special) {
        // Text outside any message: content, so nothing is lost.
        sink_ = Sink::kContent;
        state_ = State::kContent;
        auto text = decoder_.Add(id);
        if (text.ok()) Emit(*text, out);
      }
      break;
  }
}

void HarmonyStreamParser::Finish(bool length, std::vector<HarmonyDelta>* out) {
  if (finished_) return;
  if (state_ == State::kHeader && !header_.empty()) FlushHeaderAsContent(out);
  if (state_ == State::kContent) Emit(decoder_.Flush(), out);
  finished_ = true;
  out->push_back({HarmonyDelta::Kind::kFinish, length ? "length" : "stop", "", -1});
}

}  // namespace moeserve::text
