// Harmony-aware constraints on a chat reply (DESIGN §3, structured output).
//
// The reply is what gpt-oss samples after "<|start|>assistant". Its grammar
// has harmony's special tokens as symbols and leaves the reasoning free:
//
//   reply     := preface* last
//   preface   := <|channel|>analysis <|message|> TEXT <|end|> <|start|>assistant
//              | <|channel|>commentary <|message|> TEXT <|end|> <|start|>assistant   (preambles; with tools)
//   last      := final | call                  (as the rules below allow)
//   final     := <|channel|>final <|message|> BODY <|return|>
//   call      := header(NAME) <|message|> ARGS(NAME) <|call|>
//   header(N) := <|channel|>commentary to=functions.N [" <|constrain|>json" | " json"]
//              | " to=functions.N" <|channel|>commentary [...]
//
// TEXT is any ordinary tokens. BODY is JSON valid against the response
// format's schema (any object for json_object), or TEXT. NAME is one of the
// declared functions; ARGS is JSON valid against that function's parameters
// when the call is required or named or the tool is strict, else TEXT.
// tool_choice "required" or a named function leaves no final message; "none"
// (or no tools) leaves no call.
//
// Thread-safety: the cache is internally locked; compiled grammars are shared.
#pragma once

#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "router/grammar/matcher.h"
#include "router/text/harmony.h"
#include "router/text/tokenizer.h"

namespace moeserve::grammar {

struct ReplyRules {
  enum class Final { kText, kJsonObject, kJsonSchema };
  Final final = Final::kText;
  nlohmann::ordered_json final_schema;  // kJsonSchema
  enum class Calls { kNone, kAuto, kRequired, kNamed };
  Calls calls = Calls::kNone;
  std::vector<text::ToolDescription> tools;  // the declared functions (kAuto, kRequired, kNamed)
  std::string named;                         // kNamed: the function

  // Nothing to constrain: free text and no tool calls.
  bool unconstrained() const { return final == Final::kText && calls == Calls::kNone; }
  std::string Key() const;  // identifies the grammar (cache key)
};

// The reply grammar; InvalidArgument (naming the schema or tool) when a
// schema cannot be compiled.
absl::StatusOr<Grammar> BuildReplyGrammar(const ReplyRules& rules, const text::Tokenizer& tok);

// Compiled reply grammars by ReplyRules::Key(), least recently used out:
// at most `capacity` of them and `max_states` grammar states in all (a large
// grammar's NFA takes ~150 bytes a state), keeping the newest whatever its size.
class ReplyGrammarCache {
 public:
  ReplyGrammarCache(const text::Tokenizer& tok, size_t capacity = 64, size_t max_states = 4'000'000);
  // nullptr when the rules constrain nothing.
  absl::StatusOr<std::shared_ptr<const CompiledGrammar>> Get(const ReplyRules& rules);
  const std::shared_ptr<const TokenTable>& tokens() const { return tokens_; }

 private:
  const text::Tokenizer& tok_;
  std::shared_ptr<const TokenTable> tokens_;
  size_t capacity_;
  size_t max_states_;
  size_t states_ = 0;  // in lru_
  std::mutex mu_;
  std::list<std::pair<std::string, std::shared_ptr<const CompiledGrammar>>> lru_;  // most recent first
};

}  // namespace moeserve::grammar
