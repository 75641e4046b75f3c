// The harmony chat format of gpt-oss (spec §5): conversations of messages
// rendered to prompt token ids, exactly as openai/harmony renders them.
//
// This is the harmony-level model (authors, channels, recipients, content
// types, system and developer content); mapping OpenAI chat requests onto it
// is the caller's policy. Rendering follows openai/harmony's encoding.rs:
// header = role (a tool's name for tool messages) [":" name] [" to=" recipient]
// ["<|channel|>" channel] [" " content_type], then "<|message|>", the
// content, and "<|call|>" for assistant messages with a recipient, else
// "<|end|>". Text is always encoded as ordinary text, so user text can never
// forge a special token. Tools are rendered from JSON Schema into harmony's
// TypeScript-like namespace.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "router/text/tokenizer.h"

namespace moeserve::text {

struct ToolDescription {
  std::string name;
  std::string description;
  std::optional<nlohmann::ordered_json> parameters;  // JSON Schema, key order kept
  bool strict = false;  // the caller asks for arguments valid against `parameters`
};

struct ToolNamespace {
  std::string name;  // "functions"
  std::optional<std::string> description;
  std::vector<ToolDescription> tools;
};

struct SystemContent {
  std::optional<std::string> model_identity = "You are ChatGPT, a large language model trained by OpenAI.";
  std::optional<std::string> reasoning_effort = "medium";  // low | medium | high
  std::optional<std::string> knowledge_cutoff = "2024-06";
  std::optional<std::string> conversation_start_date;      // YYYY-MM-DD
  std::vector<std::string> valid_channels = {"analysis", "commentary", "final"};
  bool channel_required = true;
  std::vector<ToolNamespace> tools;  // built-in tools (browser, python)
};

// A structured-output format the reply must follow, shown to the model as the
// developer message's "# Response Formats" section.
struct ResponseFormatSection {
  std::string name;
  std::string description;
  std::string schema;  // JSON text
};

struct DeveloperContent {
  std::optional<std::string> instructions;
  std::vector<ToolNamespace> tools;  // usually one namespace, "functions"
  std::optional<ResponseFormatSection> response_format;
};

struct Message {
  std::string role;                  // system | developer | user | assistant | tool
  std::optional<std::string> name;   // tool messages: the tool, e.g. "functions.get_weather"
  std::optional<std::string> channel;
  std::optional<std::string> recipient;
  std::optional<std::string> content_type;
  std::string text;                  // text content
  std::optional<SystemContent> system;        // system messages
  std::optional<DeveloperContent> developer;  // developer messages
};

struct RenderConfig {
  bool auto_drop_analysis = true;  // drop analysis before the first final when the last assistant turn is final
};

// Renders the conversation followed by "<|start|>" + next_role.
absl::StatusOr<std::vector<int32_t>> RenderForCompletion(const Tokenizer& tok, const std::vector<Message>& messages,
                                                         const std::string& next_role, const RenderConfig& config);
// Renders the conversation alone.
absl::StatusOr<std::vector<int32_t>> RenderConversation(const Tokenizer& tok, const std::vector<Message>& messages,
                                                        const RenderConfig& config);

// Messages from openai/harmony's JSON form of a conversation
// ({"messages": [{"role", "name"?, "channel"?, "recipient"?, "content_type"?,
// "content": [{"type": "text"|"system_content"|"developer_content", ...}]}]}).
// Absent optional fields stay absent (nothing is defaulted).
absl::StatusOr<std::vector<Message>> MessagesFromHarmonyJson(const nlohmann::ordered_json& conversation);

// JSON Schema -> harmony's TypeScript-like type (exposed for tests).
std::string SchemaToTypeScript(const nlohmann::ordered_json& schema, const std::string& indent);

}  // namespace moeserve::text
