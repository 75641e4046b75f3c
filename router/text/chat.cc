#include "router/text/chat.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"

namespace moeserve::text {

std::optional<std::string> StringField(const nlohmann::ordered_json& obj, const char* key,
                                       std::optional<std::string> absent) {
  if (!obj.is_object() || !obj.contains(key)) return absent;
  const auto& v = obj[key];
  if (!v.is_string()) return std::nullopt;
  return v.get<std::string>();
}

namespace {

using json = nlohmann::ordered_json;

absl::Status Bad(size_t i, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("messages[", i, "]: ", what));
}

// Message content: a string, or an array of {"type": "text", "text": ...} parts.
absl::StatusOr<std::string> ContentText(const json& m, size_t i) {
  if (!m.contains("content") || m["content"].is_null()) return std::string();
  const json& c = m["content"];
  if (c.is_string()) return c.get<std::string>();
  if (!c.is_array()) return Bad(i, "content must be a string or an array of parts");
  std::string out;
  for (const json& part : c) {
    if (!part.is_object() || StringField(part, "type") != "text" || !part.contains("text") || !part["text"].is_string()) {
      return Bad(i, "only text content parts are supported");
    }
    out += part["text"].get<std::string>();
  }
  return out;
}

}  // namespace

std::vector<int32_t> AssistantStopTokens(const Tokenizer& tok, const std::vector<int32_t>& model_eos) {
  std::vector<int32_t> ids = model_eos;
  for (const char* name : {"<|return|>", "<|call|>"}) {
    const int32_t id = tok.SpecialId(name);
    if (id >= 0 && std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
  }
  return ids;
}

absl::StatusOr<std::vector<int32_t>> CompletionPromptTokens(const Tokenizer& tok, const json& prompt) {
  if (prompt.is_string()) return tok.EncodeWithSpecials(prompt.get<std::string>());
  if (prompt.is_array()) {
    std::vector<int32_t> ids;
    for (size_t i = 0; i < prompt.size(); ++i) {
      const json& v = prompt[i];
      if (!v.is_number_integer()) return absl::InvalidArgumentError("prompt must be a string or an array of token ids");
      const int64_t id = v.get<int64_t>();
      if (id < 0 || id >= tok.vocab_size()) {
        return absl::InvalidArgumentError(absl::StrCat("prompt[", i, "]: token id ", id, " is outside the vocabulary of ",
                                                       tok.vocab_size()));
      }
      ids.push_back(static_cast<int32_t>(id));
    }
    return ids;
  }
  return absl::InvalidArgumentError("prompt must be a string or an array of token ids");
}

absl::StatusOr<std::vector<ToolDescription>> ToolsFromOpenAi(const json& tools) {
  std::vector<ToolDescription> out;
  if (tools.is_null()) return out;
  if (!tools.is_array()) return absl::InvalidArgumentError("tools must be an array");
  for (size_t i = 0; i < tools.size(); ++i) {
    const json& t = tools[i];
    if (!t.is_object() || StringField(t, "type", "function") != "function" || !t.contains("function") ||
        !t["function"].is_object() || !t["function"].contains("name") || !t["function"]["name"].is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("tools[", i, "]: expected {\"type\": \"function\", \"function\": {\"name\": ...}}"));
    }
    const json& f = t["function"];
    ToolDescription d;
    d.name = f["name"].get<std::string>();
    if (f.contains("description") && f["description"].is_string()) d.description = f["description"].get<std::string>();
    if (f.contains("parameters") && !f["parameters"].is_null()) {
      if (!f["parameters"].is_object()) return absl::InvalidArgumentError(absl::StrCat("tools[", i, "]: parameters must be an object"));
      d.parameters = f["parameters"];
    }
    if (f.contains("strict") && !f["strict"].is_null()) {
      if (!f["strict"].is_boolean()) return absl::InvalidArgumentError(absl::StrCat("tools[", i, "]: strict must be a boolean"));
      d.strict = f["strict"].get<bool>();
    }
    out.push_back(std::move(d));
  }
  return out;
}

absl::StatusOr<std::vector<ChatTurn>> ChatTurnsFromOpenAi(const json& messages) {
  if (!messages.is_array() || messages.empty()) return absl::InvalidArgumentError("messages must be a non-empty array");
  std::vector<ChatTurn> out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string()) return Bad(i, "missing role");
    ChatTurn turn;
    turn.role = m["role"].get<std::string>();
    ASSIGN_OR_RETURN(turn.content, ContentText(m, i));
    for (const char* k : {"reasoning_content", "reasoning"}) {
      if (m.contains(k) && m[k].is_string()) {
        turn.reasoning = m[k].get<std::string>();
        break;
      }
    }
    if (turn.role == "assistant" && m.contains("tool_calls") && !m["tool_calls"].is_null()) {
      if (!m["tool_calls"].is_array()) return Bad(i, "tool_calls must be an array");
      for (const json& c : m["tool_calls"]) {
        if (!c.is_object() || !c.contains("function") || !c["function"].is_object() ||
            !c["function"].contains("name") || !c["function"]["name"].is_string()) {
          return Bad(i, "a tool call needs function.name");
        }
        ChatToolCall call;
        call.name = c["function"]["name"].get<std::string>();
        call.arguments = "{}";
        if (c["function"].contains("arguments")) {
          const json& a = c["function"]["arguments"];
          call.arguments = a.is_string() ? a.get<std::string>() : a.dump();
        }
        if (c.contains("id") && c["id"].is_string()) call.id = c["id"].get<std::string>();
        turn.tool_calls.push_back(std::move(call));
      }
    }
    if (m.contains("tool_call_id") && m["tool_call_id"].is_string()) turn.tool_call_id = m["tool_call_id"].get<std::string>();
    if (m.contains("name") && m["name"].is_string()) turn.name = m["name"].get<std::string>();
    out.push_back(std::move(turn));
  }
  return out;
}

absl::StatusOr<std::vector<Message>> ChatToHarmony(const std::vector<ChatTurn>& messages,
                                                   const std::vector<ToolDescription>& tools,
                                                   const ChatRenderOptions& options) {
  if (messages.empty()) return absl::InvalidArgumentError("messages must be a non-empty array");
  if (options.reasoning_effort != "low" && options.reasoning_effort != "medium" && options.reasoning_effort != "high") {
    return absl::InvalidArgumentError("reasoning_effort must be low, medium or high");
  }
  ToolNamespace functions;
  functions.name = "functions";
  for (size_t i = 0; i < tools.size(); ++i) {
    const std::string& name = tools[i].name;
    if (name.empty() || name.find_first_of(" \t\n<>") != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("tools[", i, "]: invalid function name"));
    }
    functions.tools.push_back(tools[i]);
  }
  std::vector<Message> out;
  Message sys;
  sys.role = "system";
  SystemContent sc;
  sc.model_identity = options.model_identity;
  sc.knowledge_cutoff = options.knowledge_cutoff;
  if (!options.current_date.empty()) sc.conversation_start_date = options.current_date;
  sc.reasoning_effort = options.reasoning_effort;
  sys.system = sc;
  out.push_back(std::move(sys));

  std::vector<std::string> instructions;
  std::vector<Message> rest;
  absl::flat_hash_map<std::string, std::string> call_names;  // tool_call_id -> function name
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatTurn& m = messages[i];
    const std::string& role = m.role;
    const std::string& text = m.content;
    if (role == "system" || role == "developer") {
      instructions.push_back(text);
    } else if (role == "user") {
      Message u;
      u.role = "user";
      u.text = text;
      rest.push_back(std::move(u));
    } else if (role == "assistant") {
      if (!m.reasoning.empty()) {
        Message a;
        a.role = "assistant";
        a.channel = "analysis";
        a.text = m.reasoning;
        rest.push_back(std::move(a));
      }
      for (const ChatToolCall& c : m.tool_calls) {
        if (c.name.empty()) return Bad(i, "a tool call needs function.name");
        if (!c.id.empty()) call_names[c.id] = c.name;
        Message call;
        call.role = "assistant";
        call.channel = "commentary";
        call.recipient = "functions." + c.name;
        call.content_type = "<|constrain|>json";
        call.text = c.arguments.empty() ? "{}" : c.arguments;
        rest.push_back(std::move(call));
      }
      if (!text.empty()) {
        Message f;
        f.role = "assistant";
        f.channel = "final";
        f.text = text;
        rest.push_back(std::move(f));
      }
    } else if (role == "tool") {
      std::string name;
      if (!m.tool_call_id.empty()) {
        auto it = call_names.find(m.tool_call_id);
        if (it != call_names.end()) name = it->second;
      }
      if (name.empty()) name = m.name;
      if (name.empty()) return Bad(i, "a tool message needs a tool_call_id of an earlier tool call, or a name");
      Message t;
      t.role = "tool";
      t.name = "functions." + name;
      t.recipient = "assistant";
      t.channel = "commentary";
      t.text = text;
      rest.push_back(std::move(t));
    } else {
      return Bad(i, absl::StrCat("unknown role \"", role, "\""));
    }
  }
  if (!instructions.empty() || !functions.tools.empty() || options.response_format) {
    Message dev;
    dev.role = "developer";
    DeveloperContent dc;
    if (!instructions.empty()) dc.instructions = absl::StrJoin(instructions, "\n\n");
    if (!functions.tools.empty()) dc.tools.push_back(functions);
    dc.response_format = options.response_format;
    dev.developer = std::move(dc);
    out.push_back(std::move(dev));
  }
  for (auto& m : rest) out.push_back(std::move(m));
  return out;
}

absl::StatusOr<std::vector<Message>> ChatToHarmony(const json& messages, const json& tools,
                                                   const ChatRenderOptions& options) {
  ASSIGN_OR_RETURN(std::vector<ToolDescription> t, ToolsFromOpenAi(tools));
  ASSIGN_OR_RETURN(std::vector<ChatTurn> m, ChatTurnsFromOpenAi(messages));
  return ChatToHarmony(m, t, options);
}

absl::StatusOr<std::vector<int32_t>> RenderChat(const Tokenizer& tok, const std::vector<ChatTurn>& messages,
                                                const std::vector<ToolDescription>& tools,
                                                const ChatRenderOptions& options) {
  ASSIGN_OR_RETURN(std::vector<Message> conv, ChatToHarmony(messages, tools, options));
  RenderConfig cfg;
  cfg.auto_drop_analysis = true;
  return RenderForCompletion(tok, conv, "assistant", cfg);
}

absl::StatusOr<std::vector<int32_t>> RenderChatRequest(const Tokenizer& tok, const json& messages, const json& tools,
                                                       const ChatRenderOptions& options) {
  ASSIGN_OR_RETURN(std::vector<ToolDescription> t, ToolsFromOpenAi(tools));
  ASSIGN_OR_RETURN(std::vector<ChatTurn> m, ChatTurnsFromOpenAi(messages));
  return RenderChat(tok, m, t, options);
}

}  // namespace moeserve::text
