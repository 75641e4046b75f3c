#include "router/responses_api.h"

#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "router/openai_api.h"

namespace moeserve::router {
namespace {

using json = ordered_json;

// Response ids are capabilities (GET/DELETE by id): random, not counters.
std::string RandomId(const char* prefix) {
  static std::mutex mu;
  static std::mt19937_64 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  return absl::StrFormat("%s%016x%08x", prefix, rng(), static_cast<uint32_t>(rng()));
}

ApiError Bad(std::string message, std::string param) { return BadRequest(std::move(message), std::move(param)); }

// Text of a message's content: a string or a list of text parts.
std::optional<ApiError> PartsText(const json& content, const std::string& at, std::string* out) {
  if (content.is_null()) return std::nullopt;
  if (content.is_string()) {
    *out = content.get<std::string>();
    return std::nullopt;
  }
  if (!content.is_array()) return Bad(absl::StrCat(at, ".content must be a string or a list of parts"), "input");
  for (size_t k = 0; k < content.size(); ++k) {
    const json& p = content[k];
    auto type = text::StringField(p, "type");
    if (!type) return Bad(absl::StrCat(at, ".content[", k, "] needs a 'type'"), "input");
    if (*type == "input_text" || *type == "output_text" || *type == "text" || *type == "refusal" ||
        *type == "summary_text" || *type == "reasoning_text") {
      auto t = text::StringField(p, *type == "refusal" ? "refusal" : "text");
      if (!t) return Bad(absl::StrCat(at, ".content[", k, "] needs a string 'text'"), "input");
      *out += *t;
    } else if (*type == "input_image" || *type == "input_file" || *type == "input_audio") {
      return Bad(absl::StrCat(at, ".content[", k, "]: ", *type, " is not supported: gpt-oss reads text only"), "input");
    } else {
      return Bad(absl::StrCat(at, ".content[", k, "]: unknown part type '", *type, "'"), "input");
    }
  }
  return std::nullopt;
}

std::optional<ApiError> DecodeInput(const json& input, std::vector<text::ChatTurn>* turns) {
  if (input.is_string()) {
    turns->push_back({"user", input.get<std::string>(), "", {}, "", ""});
    return std::nullopt;
  }
  if (!input.is_array()) return Bad("'input' must be a string or a list of items", "input");
  for (size_t i = 0; i < input.size(); ++i) {
    const json& item = input[i];
    const std::string at = absl::StrCat("input[", i, "]");
    if (!item.is_object()) return Bad(absl::StrCat(at, " must be an object"), "input");
    auto type = text::StringField(item, "type", "message");
    if (!type) return Bad(absl::StrCat(at, ".type must be a string"), "input");
    text::ChatTurn t;
    if (*type == "message") {
      auto role = text::StringField(item, "role");
      if (!role || (*role != "user" && *role != "system" && *role != "developer" && *role != "assistant")) {
        return Bad(absl::StrCat(at, ".role must be user, system, developer or assistant"), "input");
      }
      t.role = *role;
      if (auto e = PartsText(item.contains("content") ? item["content"] : json(), at, &t.content)) return e;
    } else if (*type == "function_call") {
      auto call_id = text::StringField(item, "call_id");
      auto name = text::StringField(item, "name");
      auto args = text::StringField(item, "arguments", "{}");
      if (!call_id || !name || name->empty() || !args) {
        return Bad(absl::StrCat(at, ": a function_call needs string 'call_id', 'name' and 'arguments'"), "input");
      }
      t.role = "assistant";
      t.tool_calls.push_back({*call_id, *name, *args});
    } else if (*type == "function_call_output") {
      auto call_id = text::StringField(item, "call_id");
      if (!call_id) return Bad(absl::StrCat(at, ": a function_call_output needs a string 'call_id'"), "input");
      t.role = "tool";
      t.tool_call_id = *call_id;
      if (!item.contains("output")) return Bad(absl::StrCat(at, ": a function_call_output needs 'output'"), "input");
      if (auto e = PartsText(item["output"], at, &t.content)) return e;
    } else if (*type == "reasoning") {
      t.role = "assistant";
      if (item.contains("content") && !item["content"].is_null()) {
        if (auto e = PartsText(item["content"], at, &t.reasoning)) return e;
      } else if (item.contains("summary") && item["summary"].is_array()) {
        if (auto e = PartsText(item["summary"], at, &t.reasoning)) return e;
      }
      if (item.contains("encrypted_content") && !item["encrypted_content"].is_null()) {
        return Bad(absl::StrCat(at, ": encrypted reasoning is not supported; send its text in 'content'"), "input");
      }
      if (t.reasoning.empty()) continue;
    } else {
      return Bad(absl::StrCat(at, ": item type '", *type, "' is not supported (message, function_call, "
                              "function_call_output and reasoning are)"), "input");
    }
    turns->push_back(std::move(t));
  }
  return std::nullopt;
}

template <typename T>
std::optional<ApiError> Number(const json& body, const char* key, T lo, T hi, std::optional<T>* out) {
  if (!body.contains(key) || body[key].is_null()) return std::nullopt;
  const json& v = body[key];
  const bool ok = std::is_integral_v<T> ? v.is_number_integer() : v.is_number();
  if (!ok || v.get<double>() < static_cast<double>(lo) || v.get<double>() > static_cast<double>(hi)) {
    return Bad(absl::StrCat("'", key, "' must be a", std::is_integral_v<T> ? "n integer" : " number", " in [", lo,
                            ", ", hi, "]"), key);
  }
  *out = v.get<T>();
  return std::nullopt;
}

std::optional<ApiError> Decode(const ApiContext& ctx, const json& body, ResponseStore* store, GenerationSpec* spec,
                               ResponsesRequest* req) {
  if (!body.is_object()) return Bad("the body is not a JSON object", "");
  static const char* const kKnown[] = {
      "model", "input", "instructions", "tools", "tool_choice", "reasoning", "text", "max_output_tokens",
      "temperature", "top_p", "metadata", "stream", "store", "previous_response_id", "parallel_tool_calls", "user",
      "truncation", "include", "top_logprobs", "service_tier", "background", "stream_options", "prompt_cache_key",
      "safety_identifier", "seed"};
  for (const auto& item : body.items()) {
    const std::string& key = item.key();
    if (std::find_if(std::begin(kKnown), std::end(kKnown), [&](const char* k) { return key == k; }) ==
        std::end(kKnown)) {
      return Bad(absl::StrCat("Unknown parameter: '", key, "'."), key);
    }
  }
  json echo = json::object();
  if (body.contains("model") && !body["model"].is_null()) {
    if (!body["model"].is_string()) return Bad("'model' must be a string", "model");
    spec->model = body["model"].get<std::string>();
  }
  echo["model"] = spec->model.empty() ? ctx.served_model_name : spec->model;
  for (const char* flag : {"stream", "store", "parallel_tool_calls", "background"}) {
    if (body.contains(flag) && !body[flag].is_null() && !body[flag].is_boolean()) {
      return Bad(absl::StrCat("'", flag, "' must be a boolean"), flag);
    }
  }
  if (body.value("background", false)) return Bad("background responses are not supported", "background");
  req->stream = body.value("stream", false);
  req->store = body.value("store", true);
  // The conversation: the stored one this continues, then this input.
  json prev = nullptr;
  if (body.contains("previous_response_id") && !body["previous_response_id"].is_null()) {
    auto id = text::StringField(body, "previous_response_id");
    if (!id) return Bad("'previous_response_id' must be a string", "previous_response_id");
    auto entry = store->Get(*id);
    if (!entry) {
      ApiError e = Bad(absl::StrCat("Previous response with id '", *id, "' not found."), "previous_response_id");
      e.code = "previous_response_not_found";
      return e;
    }
    req->conversation = std::move(entry->conversation);
    prev = *id;
  }
  echo["previous_response_id"] = prev;
  if (!body.contains("input") || body["input"].is_null()) return Bad("'input' is required", "input");
  if (auto e = DecodeInput(body["input"], &req->conversation)) return e;
  if (req->conversation.empty()) return Bad("'input' holds nothing to respond to", "input");
  json instructions = nullptr;
  if (body.contains("instructions") && !body["instructions"].is_null()) {
    if (!body["instructions"].is_string()) return Bad("'instructions' must be a string", "instructions");
    instructions = body["instructions"];
  }
  echo["instructions"] = instructions;
  spec->chat = true;
  spec->messages.clear();
  if (instructions.is_string()) spec->messages.push_back({"developer", instructions.get<std::string>(), "", {}, "", ""});
  spec->messages.insert(spec->messages.end(), req->conversation.begin(), req->conversation.end());
  // Tools: functions only, in the Responses shape (name at the top level).
  json tools = json::array();
  if (body.contains("tools") && !body["tools"].is_null()) {
    if (!body["tools"].is_array()) return Bad("'tools' must be an array", "tools");
    for (size_t i = 0; i < body["tools"].size(); ++i) {
      const json& t = body["tools"][i];
      const std::string at = absl::StrCat("tools[", i, "]");
      auto type = text::StringField(t, "type");
      if (!type) return Bad(absl::StrCat(at, " needs a 'type'"), "tools");
      if (*type != "function") {
        return Bad(absl::StrCat(at, ": tool type '", *type, "' is not supported; only function tools are"), "tools");
      }
      auto name = text::StringField(t, "name");
      if (!name || name->empty()) return Bad(absl::StrCat(at, " needs a string 'name'"), "tools");
      text::ToolDescription d;
      d.name = *name;
      d.description = text::StringField(t, "description", "").value_or("");
      json params = nullptr;
      if (t.contains("parameters") && !t["parameters"].is_null()) {
        if (!t["parameters"].is_object()) return Bad(absl::StrCat(at, ".parameters must be a JSON Schema object"), "tools");
        d.parameters = t["parameters"];
        params = t["parameters"];
      }
      if (t.contains("strict") && !t["strict"].is_null() && !t["strict"].is_boolean()) {
        return Bad(absl::StrCat(at, ".strict must be a boolean"), "tools");
      }
      // Responses function tools are strict unless they say otherwise (OpenAI's default).
      d.strict = !(t.contains("strict") && t["strict"] == false);
      spec->tools.push_back(std::move(d));
      tools.push_back({{"type", "function"}, {"name", *name}, {"description", t.value("description", json())},
                       {"parameters", params}, {"strict", t.value("strict", json(true))}});
    }
  }
  echo["tools"] = tools;
  json tool_choice = "auto";
  if (body.contains("tool_choice") && !body["tool_choice"].is_null()) {
    const json& tc = body["tool_choice"];
    if (tc == "none") spec->tool_choice = ToolChoice::kNone;
    else if (tc == "required") spec->tool_choice = ToolChoice::kRequired;
    else if (tc.is_object() && text::StringField(tc, "type") == "function" && text::StringField(tc, "name")) {
      spec->tool_choice = ToolChoice::kNamed;
      spec->tool_choice_name = *text::StringField(tc, "name");
    } else if (tc != "auto") {
      return Bad("'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"name\": ...}",
                 "tool_choice");
    }
    tool_choice = tc;
  }
  echo["tool_choice"] = tool_choice;
  // reasoning: {effort, summary}. gpt-oss returns its reasoning text itself, not summaries.
  json reasoning = {{"effort", "medium"}, {"summary", nullptr}};
  if (body.contains("reasoning") && !body["reasoning"].is_null()) {
    const json& r = body["reasoning"];
    if (!r.is_object()) return Bad("'reasoning' must be an object", "reasoning");
    if (r.contains("effort") && !r["effort"].is_null()) {
      if (r["effort"] != "low" && r["effort"] != "medium" && r["effort"] != "high") {
        return Bad("'reasoning.effort' must be \"low\", \"medium\" or \"high\"", "reasoning.effort");
      }
      spec->reasoning_effort = r["effort"].get<std::string>();
      reasoning["effort"] = r["effort"];
    }
  }
  echo["reasoning"] = reasoning;
  json text_format = {{"format", {{"type", "text"}}}};
  if (body.contains("text") && !body["text"].is_null()) {
    const json& t = body["text"];
    if (!t.is_object()) return Bad("'text' must be an object", "text");
    if (t.contains("format") && !t["format"].is_null()) {
      auto type = text::StringField(t["format"], "type");
      if (!type) return Bad("'text.format' needs a 'type'", "text.format");
      if (*type == "json_object") {
        spec->response_format.type = ResponseFormat::Type::kJsonObject;
      } else if (*type == "json_schema") {
        if (auto e = DecodeJsonSchemaFormat(t["format"], "text.format", &spec->response_format)) return e;
      } else if (*type != "text") {
        return Bad("'text.format.type' must be text, json_object or json_schema", "text.format");
      }
      text_format["format"] = t["format"];
    }
    if (t.contains("verbosity") && !t["verbosity"].is_null() && t["verbosity"] != "medium") {
      return Bad("'text.verbosity' other than \"medium\" is not supported: gpt-oss has no verbosity control",
                 "text.verbosity");
    }
  }
  echo["text"] = text_format;
  std::optional<int64_t> max_output_tokens, top_logprobs, seed;
  std::optional<double> temperature, top_p;
  if (auto e = Number<int64_t>(body, "max_output_tokens", 1, 1 << 30, &max_output_tokens)) return e;
  if (auto e = Number<int64_t>(body, "top_logprobs", 0, ctx.limits.max_top_logprobs, &top_logprobs)) return e;
  if (auto e = Number<int64_t>(body, "seed", INT64_MIN, INT64_MAX, &seed)) return e;
  if (auto e = Number<double>(body, "temperature", 0.0, 2.0, &temperature)) return e;
  if (auto e = Number<double>(body, "top_p", 0.0, 1.0, &top_p)) return e;
  if (top_p && *top_p <= 0) return Bad("'top_p' must be in (0, 1]", "top_p");
  spec->max_tokens = max_output_tokens;
  worker::v1::SamplingParams& sp = spec->sampling;
  sp.set_temperature(static_cast<float>(temperature.value_or(1.0)));
  sp.set_top_p(static_cast<float>(top_p.value_or(1.0)));
  if (seed) {
    sp.set_has_seed(true);
    sp.set_seed(static_cast<uint64_t>(*seed));
  }
  bool logprobs = top_logprobs.value_or(0) > 0;
  if (body.contains("include") && !body["include"].is_null()) {
    if (!body["include"].is_array()) return Bad("'include' must be an array", "include");
    for (const json& inc : body["include"]) {
      if (inc == "message.output_text.logprobs") {
        logprobs = true;
      } else if (inc == "reasoning.encrypted_content") {
        return Bad("encrypted reasoning is not supported: reasoning comes back as text in reasoning items", "include");
      } else {
        return Bad(absl::StrCat("'include' value ", Dump(inc), " is not supported"), "include");
      }
    }
  }
  sp.set_logprobs(logprobs);
  sp.set_top_logprobs(static_cast<int32_t>(top_logprobs.value_or(0)));
  echo["max_output_tokens"] = max_output_tokens ? json(*max_output_tokens) : json(nullptr);
  echo["temperature"] = temperature.value_or(1.0);
  echo["top_p"] = top_p.value_or(1.0);
  echo["top_logprobs"] = top_logprobs.value_or(0);
  // metadata: at most 16 string pairs (OpenAI's limits).
  json metadata = json::object();
  if (body.contains("metadata") && !body["metadata"].is_null()) {
    const json& m = body["metadata"];
    if (!m.is_object() || m.size() > 16) return Bad("'metadata' must be an object of at most 16 pairs", "metadata");
    for (const auto& [k, v] : m.items()) {
      if (k.size() > 64 || !v.is_string() || v.get<std::string>().size() > 512) {
        return Bad("'metadata' keys are strings of at most 64 characters, values strings of at most 512", "metadata");
      }
    }
    metadata = m;
  }
  echo["metadata"] = metadata;
  if (body.contains("truncation") && !body["truncation"].is_null() && body["truncation"] != "disabled") {
    return Bad("'truncation' must be \"disabled\": a conversation longer than the context is refused, not cut",
               "truncation");
  }
  echo["truncation"] = "disabled";
  echo["parallel_tool_calls"] = body.value("parallel_tool_calls", true);
  for (const char* s : {"user", "service_tier", "prompt_cache_key", "safety_identifier"}) {
    if (body.contains(s) && !body[s].is_null() && !body[s].is_string()) {
      return Bad(absl::StrCat("'", s, "' must be a string"), s);
    }
  }
  echo["user"] = body.contains("user") ? body["user"] : json(nullptr);
  echo["store"] = req->store;
  echo["background"] = false;
  req->echo = std::move(echo);
  req->id = RandomId("resp_");
  return std::nullopt;
}

json UsageOf(const GenerationUsage& u) {
  return {{"input_tokens", u.prompt_tokens},
          {"input_tokens_details", {{"cached_tokens", u.cached_tokens}}},
          {"output_tokens", u.completion_tokens},
          {"output_tokens_details", {{"reasoning_tokens", u.reasoning_tokens}}},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

class ResponsesEncoder : public HttpEncoder {
 public:
  ResponsesEncoder(const ApiContext& ctx, ResponsesRequest req, ResponseStore* store)
      : ctx_(ctx), req_(std::move(req)), store_(store) {}

  bool streaming() const override { return req_.stream; }

  std::string Head(const Generation& g) override {
    created_ = g.created();
    const json r = Response("in_progress", json::array(), nullptr);
    std::string out = Sse("response.created", {{"response", r}});  // in order: each takes the next sequence number
    return out + Sse("response.in_progress", {{"response", r}});
  }

  std::string Event(const Generation&, const GenerationEvent& e) override {
    using K = GenerationEvent::Kind;
    std::string out;
    switch (e.kind) {
      case K::kReasoning:
        if (e.text.empty()) break;
        if (kind_ != Item::kReasoning) out += Open(Item::kReasoning, "");
        text_ += e.text;
        out += Sse("response.reasoning_text.delta", {{"item_id", item_id_}, {"output_index", output_index()},
                                                      {"content_index", 0}, {"delta", e.text}});
        break;
      case K::kContent: {
        if (e.text.empty() && !e.logprob) break;
        if (kind_ != Item::kMessage) out += Open(Item::kMessage, "");
        text_ += e.text;
        json lps = json::array();
        if (e.logprob) {
          lps.push_back(LogprobJson(*ctx_.tokenizer, *e.logprob));
          logprobs_.push_back(lps.back());
        }
        out += Sse("response.output_text.delta", {{"item_id", item_id_}, {"output_index", output_index()},
                                                   {"content_index", 0}, {"delta", e.text}, {"logprobs", lps}});
        break;
      }
      case K::kToolCallBegin:
        call_id_ = e.call_id;
        out += Open(Item::kFunctionCall, e.tool_name);
        break;
      case K::kToolCallArguments:
        if (kind_ != Item::kFunctionCall || e.text.empty()) break;
        text_ += e.text;
        out += Sse("response.function_call_arguments.delta", {{"item_id", item_id_}, {"output_index", output_index()},
                                                              {"delta", e.text}});
        break;
      case K::kFinish: out += Close(); break;
    }
    return out;
  }

  std::string End(const Generation& g) override {
    std::string out = Close();
    const json r = Final(g);
    out += Sse(r["status"] == "completed" ? "response.completed" : "response.incomplete", {{"response", r}});
    return out;
  }

  std::string StreamError(const Generation&, const ApiError& e) override {
    std::string out = Close();
    json r = Response("failed", output_, nullptr);
    r["error"] = {{"code", "server_error"}, {"message", e.message}};
    out += Sse("error", {{"code", "server_error"}, {"message", e.message}, {"param", nullptr}});
    out += Sse("response.failed", {{"response", r}});
    return out;
  }

  std::string Body(const Generation& g) override {
    created_ = g.created();
    const ChoiceResult& c = g.results().at(0);
    output_ = json::array();
    int n = 0;
    if (!c.reasoning.empty()) {
      output_.push_back({{"type", "reasoning"}, {"id", ItemId("rs_", n++)}, {"summary", json::array()},
                         {"content", json::array({{{"type", "reasoning_text"}, {"text", c.reasoning}}})}});
    }
    for (const ToolCallResult& t : c.calls) {
      output_.push_back({{"type", "function_call"}, {"id", ItemId("fc_", n++)}, {"call_id", t.id}, {"name", t.name},
                         {"arguments", t.arguments}, {"status", "completed"}});
    }
    if (!c.content.empty() || c.calls.empty()) {
      json lps = json::array();
      for (const TokenLogprob& lp : c.logprobs) lps.push_back(LogprobJson(*ctx_.tokenizer, lp));
      const json part = {{"type", "output_text"}, {"text", c.content}, {"annotations", json::array()},
                         {"logprobs", lps}};
      output_.push_back({{"type", "message"}, {"id", ItemId("msg_", n++)}, {"status", "completed"},
                         {"role", "assistant"}, {"content", json::array({part})}});
    }
    return Dump(Final(g));
  }

 private:
  enum class Item { kNone, kReasoning, kMessage, kFunctionCall };

  std::string Sse(const char* type, json data) {
    json j = {{"type", type}, {"sequence_number", seq_++}};
    for (auto& [k, v] : data.items()) j[k] = v;
    return absl::StrCat("event: ", type, "\ndata: ", Dump(j), "\n\n");
  }

  std::string ItemId(const char* prefix, int n) const { return absl::StrCat(prefix, req_.id.substr(5), "_", n); }
  int output_index() const { return static_cast<int>(output_.size()) - 1; }

  // Opens a new output item (closing the current one).
  std::string Open(Item kind, const std::string& name) {
    std::string out = Close();
    kind_ = kind;
    text_.clear();
    logprobs_ = json::array();
    const int n = static_cast<int>(output_.size());
    json item;
    if (kind == Item::kReasoning) {
      item_id_ = ItemId("rs_", n);
      item = {{"type", "reasoning"}, {"id", item_id_}, {"summary", json::array()}, {"content", json::array()}};
    } else if (kind == Item::kMessage) {
      item_id_ = ItemId("msg_", n);
      item = {{"type", "message"}, {"id", item_id_}, {"status", "in_progress"}, {"role", "assistant"},
              {"content", json::array()}};
    } else {
      item_id_ = ItemId("fc_", n);
      item = {{"type", "function_call"}, {"id", item_id_}, {"call_id", call_id_}, {"name", name},
              {"arguments", ""}, {"status", "in_progress"}};
    }
    output_.push_back(item);
    out += Sse("response.output_item.added", {{"output_index", n}, {"item", item}});
    if (kind == Item::kReasoning) {
      out += Sse("response.content_part.added", {{"item_id", item_id_}, {"output_index", n}, {"content_index", 0},
                                                  {"part", {{"type", "reasoning_text"}, {"text", ""}}}});
    } else if (kind == Item::kMessage) {
      out += Sse("response.content_part.added",
                 {{"item_id", item_id_}, {"output_index", n}, {"content_index", 0},
                  {"part", {{"type", "output_text"}, {"text", ""}, {"annotations", json::array()}}}});
    }
    return out;
  }

  // Ends the current output item: its done events.
  std::string Close() {
    if (kind_ == Item::kNone) return "";
    std::string out;
    json& item = output_.back();
    const int n = output_index();
    if (kind_ == Item::kReasoning) {
      const json part = {{"type", "reasoning_text"}, {"text", text_}};
      out += Sse("response.reasoning_text.done", {{"item_id", item_id_}, {"output_index", n}, {"content_index", 0},
                                                  {"text", text_}});
      out += Sse("response.content_part.done", {{"item_id", item_id_}, {"output_index", n}, {"content_index", 0},
                                                {"part", part}});
      item["content"] = json::array({part});
    } else if (kind_ == Item::kMessage) {
      const json part = {{"type", "output_text"}, {"text", text_}, {"annotations", json::array()},
                         {"logprobs", logprobs_}};
      out += Sse("response.output_text.done", {{"item_id", item_id_}, {"output_index", n}, {"content_index", 0},
                                               {"text", text_}, {"logprobs", logprobs_}});
      out += Sse("response.content_part.done", {{"item_id", item_id_}, {"output_index", n}, {"content_index", 0},
                                                {"part", part}});
      item["content"] = json::array({part});
      item["status"] = "completed";
    } else {
      out += Sse("response.function_call_arguments.done", {{"item_id", item_id_}, {"output_index", n},
                                                           {"name", item["name"]}, {"arguments", text_}});
      item["arguments"] = text_;
      item["status"] = "completed";
    }
    out += Sse("response.output_item.done", {{"output_index", n}, {"item", item}});
    kind_ = Item::kNone;
    return out;
  }

  json Response(const char* status, json output, json usage) const {
    json r = {{"id", req_.id}, {"object", "response"}, {"created_at", created_}, {"status", status},
              {"background", false}, {"error", nullptr}, {"incomplete_details", nullptr}};
    for (const auto& [k, v] : req_.echo.items()) r[k] = v;
    r["output"] = std::move(output);
    r["usage"] = std::move(usage);
    return r;
  }

  // The finished response; stored when asked.
  json Final(const Generation& g) {
    const ChoiceResult& c = g.results().at(0);
    const bool incomplete = c.finish_reason == "length";
    json r = Response(incomplete ? "incomplete" : "completed", output_, UsageOf(g.usage()));
    if (incomplete) r["incomplete_details"] = {{"reason", "max_output_tokens"}};
    if (req_.store) {
      ResponseStore::Entry e;
      e.conversation = req_.conversation;
      text::ChatTurn out;
      out.role = "assistant";
      out.reasoning = c.reasoning;
      out.content = c.content;
      for (const ToolCallResult& t : c.calls) out.tool_calls.push_back({t.id, t.name, t.arguments});
      e.conversation.push_back(std::move(out));
      e.response = r;
      store_->Put(req_.id, std::move(e));
    }
    return r;
  }

  const ApiContext& ctx_;
  ResponsesRequest req_;
  ResponseStore* store_;
  int64_t created_ = 0;
  int64_t seq_ = 0;
  json output_ = json::array();
  Item kind_ = Item::kNone;
  std::string item_id_, call_id_, text_;
  json logprobs_ = json::array();
};

}  // namespace

void ResponseStore::Expire() {
  const auto now = std::chrono::steady_clock::now();
  while (!order_.empty()) {
    auto it = slots_.find(order_.front());
    if (it != slots_.end() && it->second.expires > now && slots_.size() <= capacity_) break;
    if (it != slots_.end()) slots_.erase(it);
    order_.pop_front();
  }
}

void ResponseStore::Put(const std::string& id, Entry entry) {
  std::lock_guard<std::mutex> lock(mu_);
  if (capacity_ == 0) return;
  auto old = slots_.find(id);
  if (old != slots_.end()) {
    order_.erase(old->second.order);
    slots_.erase(old);
  }
  order_.push_back(id);
  slots_[id] = Slot{std::move(entry), std::chrono::steady_clock::now() + ttl_, std::prev(order_.end())};
  Expire();
}

std::optional<ResponseStore::Entry> ResponseStore::Get(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  Expire();
  auto it = slots_.find(id);
  if (it == slots_.end()) return std::nullopt;
  return it->second.entry;
}

bool ResponseStore::Delete(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = slots_.find(id);
  if (it == slots_.end()) return false;
  order_.erase(it->second.order);
  slots_.erase(it);
  return true;
}

size_t ResponseStore::size() {
  std::lock_guard<std::mutex> lock(mu_);
  Expire();
  return slots_.size();
}

std::optional<ApiError> DecodeResponses(const ApiContext& ctx, const ordered_json& body, ResponseStore* store,
                                        GenerationSpec* spec, ResponsesRequest* request) {
  try {
    return Decode(ctx, body, store, spec, request);
  } catch (const nlohmann::json::exception& e) {
    return BadRequest(absl::StrCat("malformed request: ", e.what()), "");
  }
}

std::unique_ptr<HttpEncoder> MakeResponsesEncoder(const ApiContext& ctx, ResponsesRequest request,
                                                  ResponseStore* store) {
  return std::make_unique<ResponsesEncoder>(ctx, std::move(request), store);
}

}  // namespace moeserve::router
