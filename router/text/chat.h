// OpenAI chat requests -> harmony conversations -> prompt token ids, the way
// gpt-oss's chat template and openai/harmony render them.
//
//  * A harmony system message is always generated: model identity, knowledge
//    cutoff, current date, "Reasoning: low|medium|high", valid channels, and the
//    functions line when tools exist.
//  * The request's system and developer messages become the developer
//    message's "# Instructions" (joined by blank lines), followed by the tools
//    (OpenAI "function" tools) in the "functions" namespace.
//  * Assistant history: reasoning ("reasoning_content" or "reasoning") as an
//    analysis message, content as a final message, each tool call as a
//    commentary message to "functions.NAME" with content type
//    "<|constrain|>json" ending in <|call|>. Tool results (role "tool", matched to
//    the call by tool_call_id, or by "name") become "functions.NAME to=assistant"
//    commentary messages. Past analysis is dropped as harmony does (before the
//    first final answer, when the conversation's last assistant turn is final).
//  * The prompt ends with "<|start|>assistant".
//
// Request validation happens here too: a malformed message is an
// InvalidArgument naming its index, which the API maps to a 400.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "router/text/harmony.h"
#include "router/text/tokenizer.h"

namespace moeserve::text {

struct ChatRenderOptions {
  std::string reasoning_effort = "medium";  // low | medium | high
  std::string current_date;                 // YYYY-MM-DD; empty: omitted
  std::string model_identity = "You are ChatGPT, a large language model trained by OpenAI.";
  std::string knowledge_cutoff = "2024-06";
  std::optional<ResponseFormatSection> response_format;  // shown in the developer message
};

// A conversation turn as every chat API has it (OpenAI chat messages,
// Responses input items, Ollama messages map onto it).
struct ChatToolCall {
  std::string id;         // the call's id; tool turns refer to it
  std::string name;       // the function
  std::string arguments;  // JSON text
};
struct ChatTurn {
  std::string role;  // system | developer | user | assistant | tool
  std::string content;
  std::string reasoning;                 // assistant: its analysis text
  std::vector<ChatToolCall> tool_calls;  // assistant: the calls it made
  std::string tool_call_id;              // tool: the call this result answers
  std::string name;                      // tool: the function (when there is no tool_call_id)
};

// OpenAI chat `messages` and `tools` decoded (`tools` may be null); errors name the index.
absl::StatusOr<std::vector<ChatTurn>> ChatTurnsFromOpenAi(const nlohmann::ordered_json& messages);
absl::StatusOr<std::vector<ToolDescription>> ToolsFromOpenAi(const nlohmann::ordered_json& tools);

absl::StatusOr<std::vector<Message>> ChatToHarmony(const std::vector<ChatTurn>& messages,
                                                   const std::vector<ToolDescription>& tools,
                                                   const ChatRenderOptions& options);
absl::StatusOr<std::vector<int32_t>> RenderChat(const Tokenizer& tok, const std::vector<ChatTurn>& messages,
                                                const std::vector<ToolDescription>& tools,
                                                const ChatRenderOptions& options);

// `messages` and `tools` as in the OpenAI chat completions request (`tools` may be null).
absl::StatusOr<std::vector<Message>> ChatToHarmony(const nlohmann::ordered_json& messages,
                                                   const nlohmann::ordered_json& tools,
                                                   const ChatRenderOptions& options);
// obj[key] when it is a string; `absent` when obj has no such key (or is not
// an object); nullopt when the value is not a string. Untrusted JSON is read
// through this (nlohmann's value() throws on a type mismatch).
std::optional<std::string> StringField(const nlohmann::ordered_json& obj, const char* key,
                                       std::optional<std::string> absent = std::nullopt);

absl::StatusOr<std::vector<int32_t>> RenderChatRequest(const Tokenizer& tok, const nlohmann::ordered_json& messages,
                                                       const nlohmann::ordered_json& tools,
                                                       const ChatRenderOptions& options);

// The plain-completion path (/v1/completions): a text prompt is tokenized with
// special-token text becoming special tokens (as HF tokenizers do for added
// tokens); a token-id array is checked against the vocabulary.
absl::StatusOr<std::vector<int32_t>> CompletionPromptTokens(const Tokenizer& tok, const nlohmann::ordered_json& prompt);

// The stop tokens of an assistant turn: the model's eos ids (Describe, from
// its config and generation_config) and harmony's <|return|> and <|call|> as
// the tokenizer has them.
std::vector<int32_t> AssistantStopTokens(const Tokenizer& tok, const std::vector<int32_t>& model_eos);

}  // namespace moeserve::text
