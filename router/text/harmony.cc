#include "router/text/harmony.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/harmony_tokens.h"
#include "base/status.h"

namespace moeserve::text {
namespace {

using json = nlohmann::ordered_json;

using harmony::kCall, harmony::kChannel, harmony::kEnd, harmony::kMessage, harmony::kStart;

bool IsEnum(const json& s) { return s.contains("enum") && s["enum"].is_array() && !s["enum"].empty(); }

// serde_json's Display of a value (compact JSON).
std::string JsonDisplay(const json& v) { return v.dump(); }

// "default: ..." the way harmony prints it.
std::string DefaultComment(const json& owner, const json& def) {
  if (def.is_string() && !IsEnum(owner)) return absl::StrCat("default: \"", def.get<std::string>(), "\"");
  if (def.is_string()) return absl::StrCat("default: ", def.get<std::string>());
  return absl::StrCat("default: ", JsonDisplay(def));
}

std::string NullableSuffix(const json& s, std::string t) {
  if (s.contains("nullable") && s["nullable"].is_boolean() && s["nullable"].get<bool>() &&
      t.find("null") == std::string::npos) {
    t += " | null";
  }
  return t;
}

// Lines of a string as Rust's str::lines() yields them (no trailing empty line).
std::vector<std::string> Lines(const std::string& s) {
  std::vector<std::string> out = absl::StrSplit(s, '\n');
  if (!out.empty() && out.back().empty()) out.pop_back();
  for (auto& l : out)
    if (!l.empty() && l.back() == '\r') l.pop_back();
  return out;
}

std::string ToolsSection(const std::vector<ToolNamespace>& namespaces) {
  // harmony keeps namespaces in a BTreeMap: sorted by name.
  std::vector<const ToolNamespace*> sorted;
  for (const auto& n : namespaces) sorted.push_back(&n);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name; });
  std::vector<std::string> sections = {"# Tools"};
  for (const ToolNamespace* ns : sorted) {
    std::vector<std::string> c = {absl::StrCat("## ", ns->name, "\n")};
    if (ns->description) {
      for (const auto& line : Lines(*ns->description)) c.push_back(ns->tools.empty() ? line : absl::StrCat("// ", line));
    }
    if (!ns->tools.empty()) {
      c.push_back(absl::StrCat("namespace ", ns->name, " {\n"));
      for (const auto& t : ns->tools) {
        for (const auto& line : Lines(t.description)) c.push_back(absl::StrCat("// ", line));
        if (t.parameters) {
          c.push_back(absl::StrCat("type ", t.name, " = (_: ", SchemaToTypeScript(*t.parameters, ""), ") => any;\n"));
        } else {
          c.push_back(absl::StrCat("type ", t.name, " = () => any;\n"));
        }
      }
      c.push_back(absl::StrCat("} // namespace ", ns->name));
    }
    sections.push_back(absl::StrJoin(c, "\n"));
  }
  return absl::StrJoin(sections, "\n\n");
}

std::string RenderSystem(const SystemContent& s, bool has_function_tools) {
  std::vector<std::string> sections, top;
  if (s.model_identity) top.push_back(*s.model_identity);
  if (s.knowledge_cutoff) top.push_back(absl::StrCat("Knowledge cutoff: ", *s.knowledge_cutoff));
  if (s.conversation_start_date) top.push_back(absl::StrCat("Current date: ", *s.conversation_start_date));
  if (!top.empty()) sections.push_back(absl::StrJoin(top, "\n"));
  if (s.reasoning_effort) sections.push_back(absl::StrCat("Reasoning: ", *s.reasoning_effort));
  if (!s.tools.empty()) sections.push_back(ToolsSection(s.tools));
  if (!s.valid_channels.empty()) {
    std::string h = absl::StrCat("# Valid channels: ", absl::StrJoin(s.valid_channels, ", "), ".");
    if (s.channel_required) h += " Channel must be included for every message.";
    if (has_function_tools) h += "\nCalls to these tools must go to the commentary channel: 'functions'.";
    sections.push_back(h);
  }
  return absl::StrJoin(sections, "\n\n");
}

std::string RenderDeveloper(const DeveloperContent& d) {
  std::vector<std::string> sections;
  if (d.instructions) {
    sections.push_back("# Instructions");
    sections.push_back(*d.instructions);
  }
  if (!d.tools.empty()) sections.push_back(ToolsSection(d.tools));
  if (d.response_format) {
    const ResponseFormatSection& f = *d.response_format;
    sections.push_back("# Response Formats");
    sections.push_back(absl::StrCat("## ", f.name.empty() ? "response" : f.name, "\n\n",
                                    f.description.empty() ? "" : absl::StrCat("// ", f.description, "\n"), f.schema));
  }
  return absl::StrJoin(sections, "\n\n");
}

absl::Status RenderMessage(const Tokenizer& tok, const Message& m, bool has_function_tools, std::vector<int32_t>* out) {
  auto text = [&](const std::string& s) {
    const auto ids = tok.EncodeOrdinary(s);
    out->insert(out->end(), ids.begin(), ids.end());
  };
  out->push_back(kStart);
  if (m.role == "tool") {
    if (!m.name) return absl::InvalidArgumentError("tool messages need the tool's name");
    text(*m.name);
  } else {
    text(m.role);
    if (m.name) text(absl::StrCat(":", *m.name));
  }
  // NOTE: the recipient goes before the channel, as the released openai/harmony
  // (npm openai-harmony 0.4.0, our reference) renders it and as gpt-oss's chat
  // template writes tool calls; later harmony sources swap the two.
  if (m.recipient && *m.recipient != "all") text(absl::StrCat(" to=", *m.recipient));
  if (m.channel) {
    out->push_back(kChannel);
    text(*m.channel);
  }
  if (m.content_type) {
    // The content type may carry the <|constrain|> marker ("<|constrain|>json"),
    // which harmony renders as the special token.
    const auto ids = tok.EncodeWithSpecials(absl::StrCat(" ", *m.content_type));
    out->insert(out->end(), ids.begin(), ids.end());
  }
  out->push_back(kMessage);
  if (m.system) {
    if (m.role != "system") return absl::InvalidArgumentError("system content outside a system message");
    text(RenderSystem(*m.system, has_function_tools));
  }
  if (m.developer) {
    if (m.role != "developer") return absl::InvalidArgumentError("developer content outside a developer message");
    text(RenderDeveloper(*m.developer));
  }
  if (!m.text.empty()) text(m.text);
  out->push_back(m.role == "assistant" && m.recipient ? kCall : kEnd);
  return absl::OkStatus();
}

}  // namespace

std::string SchemaToTypeScript(const json& schema, const std::string& indent) {
  if (schema.contains("oneOf") && schema["oneOf"].is_array()) {
    std::string out;
    for (const json& v : schema["oneOf"]) {
      out += absl::StrCat("\n", indent, " | ");
      out += NullableSuffix(v, SchemaToTypeScript(v, indent + "   "));
      std::vector<std::string> trailing;
      if (v.contains("description") && v["description"].is_string()) trailing.push_back(v["description"].get<std::string>());
      if (v.contains("default")) trailing.push_back(DefaultComment(v, v["default"]));
      if (!trailing.empty()) out += absl::StrCat(" // ", absl::StrJoin(trailing, " "));
    }
    return out;
  }
  if (schema.contains("type") && schema["type"].is_array()) {
    std::vector<std::string> types;
    for (const json& t : schema["type"]) {
      if (t.is_string()) types.push_back(t == "integer" ? "number" : t.get<std::string>());
    }
    if (!types.empty()) return absl::StrJoin(types, " | ");
  }
  if (!schema.contains("type") || !schema["type"].is_string()) return "any";
  const std::string type = schema["type"].get<std::string>();
  if (type == "object") {
    std::string out;
    if (schema.contains("description") && schema["description"].is_string()) {
      out += absl::StrCat(indent, "// ", schema["description"].get<std::string>(), "\n");
    }
    out += "{\n";
    if (schema.contains("properties") && schema["properties"].is_object()) {
      std::vector<std::string> required;
      if (schema.contains("required") && schema["required"].is_array()) {
        for (const json& r : schema["required"])
          if (r.is_string()) required.push_back(r.get<std::string>());
      }
      auto is_required = [&](const std::string& k) {
        return std::find(required.begin(), required.end(), k) != required.end();
      };
      for (const auto& [key, val] : schema["properties"].items()) {
        if (val.contains("title") && val["title"].is_string()) {
          out += absl::StrCat(indent, "// ", val["title"].get<std::string>(), "\n", indent, "//\n");
        }
        const bool one_of = val.contains("oneOf") && val["oneOf"].is_array();
        if (!val.contains("oneOf") && val.contains("description") && val["description"].is_string()) {
          out += absl::StrCat(indent, "// ", val["description"].get<std::string>(), "\n");
        }
        if (val.contains("examples") && val["examples"].is_array() && !val["examples"].empty()) {
          out += absl::StrCat(indent, "// Examples:\n");
          for (const json& ex : val["examples"])
            if (ex.is_string()) out += absl::StrCat(indent, "// - \"", ex.get<std::string>(), "\"\n");
        }
        if (one_of) {
          const json& arr = val["oneOf"];
          std::optional<std::string> prop_desc;
          if (val.contains("description") && val["description"].is_string()) prop_desc = val["description"].get<std::string>();
          bool skip = false;
          if (prop_desc && !arr.empty() && arr[0].contains("description") && arr[0]["description"].is_string() &&
              arr[0]["description"].get<std::string>() == *prop_desc) {
            skip = true;
          }
          bool above = false;
          if (!skip && prop_desc) {
            out += absl::StrCat(indent, "// ", *prop_desc, "\n");
            above = true;
          }
          if (val.contains("default")) out += absl::StrCat(indent, "// ", DefaultComment(val, val["default"]), "\n");
          out += absl::StrCat(indent, key, is_required(key) ? "" : "?", ":\n");
          for (size_t i = 0; i < arr.size(); ++i) {
            const json& v = arr[i];
            out += absl::StrCat(indent, " | ");
            out += NullableSuffix(v, SchemaToTypeScript(v, indent + "   "));
            std::vector<std::string> trailing;
            if (!(i == 0 && above) && v.contains("description") && v["description"].is_string()) {
              const std::string d = v["description"].get<std::string>();
              if (!prop_desc || d != *prop_desc) trailing.push_back(d);
            }
            if (v.contains("default")) trailing.push_back(DefaultComment(v, v["default"]));
            if (!trailing.empty()) out += absl::StrCat(" // ", absl::StrJoin(trailing, " "));
            out += "\n";
          }
          out += absl::StrCat(indent, ",\n");
          continue;
        }
        out += absl::StrCat(indent, key, is_required(key) ? "" : "?", ": ");
        out += NullableSuffix(val, SchemaToTypeScript(val, indent + "    "));
        out += ",";
        if (val.contains("default")) out += absl::StrCat(" // ", DefaultComment(val, val["default"]));
        out += "\n";
      }
    }
    out += absl::StrCat(indent, "}");
    return out;
  }
  if (type == "string") {
    if (IsEnum(schema)) {
      std::vector<std::string> vals;
      for (const json& e : schema["enum"])
        if (e.is_string()) vals.push_back(absl::StrCat("\"", e.get<std::string>(), "\""));
      if (!vals.empty()) return absl::StrJoin(vals, " | ");
    }
    return "string";
  }
  if (type == "number" || type == "integer") return "number";
  if (type == "boolean") return "boolean";
  if (type == "array") {
    if (schema.contains("items")) return absl::StrCat(SchemaToTypeScript(schema["items"], indent), "[]");
    return "Array<any>";
  }
  return "any";
}

namespace {

std::optional<std::string> OptString(const json& j, const char* key) {
  if (j.contains(key) && j[key].is_string()) return j[key].get<std::string>();
  return std::nullopt;
}

absl::StatusOr<std::vector<ToolNamespace>> ToolsFromJson(const json& tools) {
  std::vector<ToolNamespace> out;
  if (tools.is_null()) return out;
  if (!tools.is_object()) return absl::InvalidArgumentError("tools must be an object of namespaces");
  for (const auto& [key, ns] : tools.items()) {
    if (!ns.is_object()) return absl::InvalidArgumentError("a tool namespace must be an object");
    ToolNamespace n;
    n.name = OptString(ns, "name").value_or(key);
    n.description = OptString(ns, "description");
    if (ns.contains("tools") && ns["tools"].is_array()) {
      for (const json& t : ns["tools"]) {
        ToolDescription d;
        d.name = OptString(t, "name").value_or("");
        d.description = OptString(t, "description").value_or("");
        if (t.contains("parameters") && !t["parameters"].is_null()) d.parameters = t["parameters"];
        n.tools.push_back(std::move(d));
      }
    }
    out.push_back(std::move(n));
  }
  return out;
}

}  // namespace

absl::StatusOr<std::vector<Message>> MessagesFromHarmonyJson(const json& conversation) {
  if (!conversation.is_object() || !conversation.contains("messages") || !conversation["messages"].is_array()) {
    return absl::InvalidArgumentError("a conversation is an object with a \"messages\" array");
  }
  std::vector<Message> out;
  for (const json& jm : conversation["messages"]) {
    Message m;
    if (!jm.is_object() || !jm.contains("role") || !jm["role"].is_string()) {
      return absl::InvalidArgumentError("every message needs a role");
    }
    m.role = jm["role"].get<std::string>();
    m.name = OptString(jm, "name");
    m.channel = OptString(jm, "channel");
    m.recipient = OptString(jm, "recipient");
    m.content_type = OptString(jm, "content_type");
    if (jm.contains("content") && jm["content"].is_array()) {
      for (const json& c : jm["content"]) {
        const std::string type = OptString(c, "type").value_or("text");
        if (type == "text") {
          m.text += OptString(c, "text").value_or("");
        } else if (type == "system_content") {
          SystemContent s;
          s.model_identity = OptString(c, "model_identity");
          s.knowledge_cutoff = OptString(c, "knowledge_cutoff");
          s.conversation_start_date = OptString(c, "conversation_start_date");
          s.reasoning_effort = OptString(c, "reasoning_effort");
          if (s.reasoning_effort) {
            std::string& e = *s.reasoning_effort;
            for (char& ch : e) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
          }
          s.valid_channels.clear();
          s.channel_required = false;
          if (c.contains("channel_config") && c["channel_config"].is_object()) {
            const json& cc = c["channel_config"];
            if (cc.contains("valid_channels") && cc["valid_channels"].is_array()) {
              for (const json& v : cc["valid_channels"])
                if (v.is_string()) s.valid_channels.push_back(v.get<std::string>());
            }
            s.channel_required = cc.value("channel_required", false);
          }
          if (c.contains("tools")) {
            ASSIGN_OR_RETURN(s.tools, ToolsFromJson(c["tools"]));
          }
          m.system = std::move(s);
        } else if (type == "developer_content") {
          DeveloperContent d;
          d.instructions = OptString(c, "instructions");
          if (c.contains("tools")) {
            ASSIGN_OR_RETURN(d.tools, ToolsFromJson(c["tools"]));
          }
          m.developer = std::move(d);
        } else {
          return absl::InvalidArgumentError(absl::StrCat("unknown content type \"", type, "\""));
        }
      }
    }
    out.push_back(std::move(m));
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> RenderConversation(const Tokenizer& tok, const std::vector<Message>& messages,
                                                        const RenderConfig& config) {
  bool has_function_tools = false;
  for (const Message& m : messages) {
    if (!m.developer) continue;
    for (const auto& ns : m.developer->tools) has_function_tools |= ns.name == "functions" && !ns.tools.empty();
  }
  bool last_assistant_final = false;
  for (auto it = messages.rbegin(); it != messages.rend(); ++it) {
    if (it->role == "assistant") {
      last_assistant_final = it->channel && *it->channel == "final";
      break;
    }
  }
  const bool drop = config.auto_drop_analysis && last_assistant_final;
  size_t first_final = messages.size();
  for (size_t i = 0; i < messages.size(); ++i) {
    if (messages[i].channel && *messages[i].channel == "final") {
      first_final = i;
      break;
    }
  }
  std::vector<int32_t> out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const Message& m = messages[i];
    if (drop && i < first_final && m.channel && *m.channel == "analysis") continue;
    RETURN_IF_ERROR(RenderMessage(tok, m, has_function_tools, &out));
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> RenderForCompletion(const Tokenizer& tok, const std::vector<Message>& messages,
                                                         const std::string& next_role, const RenderConfig& config) {
  ASSIGN_OR_RETURN(std::vector<int32_t> out, RenderConversation(tok, messages, config));
  out.push_back(kStart);
  const auto ids = tok.EncodeOrdinary(next_role);
  out.insert(out.end(), ids.begin(), ids.end());
  return out;
}

}  // namespace moeserve::text
