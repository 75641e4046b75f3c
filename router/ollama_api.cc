#include "router/ollama_api.h"

#include <time.h>

#include <chrono>
#include <cstdio>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace moeserve::router {
namespace {

using json = ordered_json;

// The Ollama release whose API this one follows (/api/version).
constexpr char kOllamaApiVersion[] = "0.12.0";

// RFC 3339 with microseconds, as Ollama writes created_at.
std::string NowRfc3339() {
  const auto now = std::chrono::system_clock::now();
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count();
  const time_t secs = static_cast<time_t>(us / 1000000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(us % 1000000));
  return buf;
}

ApiError NotFound(const ApiContext& ctx, const std::string& model) {
  return ApiError{404, absl::StrCat("model \"", model, "\" not found; this server serves \"", ctx.served_model_name,
                                    "\""),
                  "invalid_request_error", "model", "model_not_found"};
}

// Sampling and runner options. Honoured ones set the spec; runner tuning
// that moeserve decides itself is accepted without effect (docs/api.md);
// samplers moeserve does not have are refused.
std::optional<ApiError> DecodeOptions(const ApiContext& ctx, const json& o, GenerationSpec* spec) {
  if (o.is_null()) return std::nullopt;
  if (!o.is_object()) return BadRequest("'options' must be an object", "options");
  static const char* const kNoEffect[] = {"num_ctx", "num_keep", "num_batch", "num_gpu", "main_gpu", "use_mmap",
                                          "use_mlock", "num_thread", "numa", "low_vram", "vocab_only", "f16_kv",
                                          "penalize_newline", "repeat_last_n", "logits_all", "embedding_only"};
  worker::v1::SamplingParams& sp = spec->sampling;
  for (const auto& item : o.items()) {
    const std::string& key = item.key();
    const json& v = item.value();
    auto num = [&](double lo, double hi, double* out) -> std::optional<ApiError> {
      if (!v.is_number() || v.get<double>() < lo || v.get<double>() > hi) {
        return BadRequest(absl::StrCat("option '", key, "' must be a number in [", lo, ", ", hi, "]"), key);
      }
      *out = v.get<double>();
      return std::nullopt;
    };
    double x = 0;
    if (key == "temperature") {
      if (auto e = num(0, 2, &x)) return e;
      sp.set_temperature(static_cast<float>(x));
    } else if (key == "top_p") {
      if (auto e = num(0, 1, &x)) return e;
      sp.set_top_p(x <= 0 ? 1.0f : static_cast<float>(x));
    } else if (key == "top_k") {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > (1 << 20)) {
        return BadRequest("option 'top_k' must be a non-negative integer", key);
      }
      sp.set_top_k(static_cast<int32_t>(v.get<int64_t>()));
    } else if (key == "min_p") {
      if (auto e = num(0, 1, &x)) return e;
      sp.set_min_p(static_cast<float>(x));
    } else if (key == "repeat_penalty") {
      if (auto e = num(0, 10, &x)) return e;
      sp.set_repetition_penalty(static_cast<float>(x));
    } else if (key == "presence_penalty" || key == "frequency_penalty") {
      if (auto e = num(-2, 2, &x)) return e;
      if (key == "presence_penalty") sp.set_presence_penalty(static_cast<float>(x));
      else sp.set_frequency_penalty(static_cast<float>(x));
    } else if (key == "seed") {
      if (!v.is_number_integer()) return BadRequest("option 'seed' must be an integer", key);
      sp.set_has_seed(true);
      sp.set_seed(static_cast<uint64_t>(v.get<int64_t>()));
    } else if (key == "num_predict") {
      if (!v.is_number_integer() || v.get<int64_t>() < -2 || v.get<int64_t>() == 0 || v.get<int64_t>() > (1 << 30)) {
        return BadRequest("option 'num_predict' must be a positive integer, -1 (no limit) or -2 (fill the context)",
                          key);
      }
      if (v.get<int64_t>() > 0) spec->max_tokens = v.get<int64_t>();
    } else if (key == "stop") {
      if (!v.is_array() || static_cast<int64_t>(v.size()) > ctx.limits.max_stop) {
        return BadRequest(absl::StrCat("option 'stop' must be an array of at most ", ctx.limits.max_stop, " strings"),
                          key);
      }
      for (const json& s : v) {
        if (!s.is_string() || s.get<std::string>().empty()) {
          return BadRequest("option 'stop' must hold non-empty strings", key);
        }
        spec->stops.push_back(s.get<std::string>());
      }
    } else if (std::find_if(std::begin(kNoEffect), std::end(kNoEffect),
                            [&](const char* k) { return key == k; }) != std::end(kNoEffect)) {
      // Runner tuning: moeserve sizes its own context, batches and devices.
    } else {
      return BadRequest(absl::StrCat("option '", key, "' is not supported by this server (docs/api.md lists the "
                                     "options it honours)"), key);
    }
  }
  return std::nullopt;
}

std::optional<ApiError> DecodeMessages(const json& messages, std::vector<text::ChatTurn>* out) {
  if (!messages.is_array()) return BadRequest("'messages' must be an array", "messages");
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string at = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) return BadRequest(absl::StrCat(at, " must be an object"), "messages");
    text::ChatTurn t;
    auto role = text::StringField(m, "role");
    if (!role) return BadRequest(absl::StrCat(at, ": 'role' must be a string"), "messages");
    t.role = *role;
    auto content = text::StringField(m, "content", "");
    if (!content) return BadRequest(absl::StrCat(at, ": 'content' must be a string"), "messages");
    t.content = *content;
    if (m.contains("images") && !m["images"].is_null() && !(m["images"].is_array() && m["images"].empty())) {
      return BadRequest(absl::StrCat(at, ": images are not supported: gpt-oss reads text only"), "images");
    }
    auto thinking = text::StringField(m, "thinking", "");
    if (!thinking) return BadRequest(absl::StrCat(at, ": 'thinking' must be a string"), "messages");
    t.reasoning = *thinking;
    auto tool_name = text::StringField(m, "tool_name", "");
    if (!tool_name) return BadRequest(absl::StrCat(at, ": 'tool_name' must be a string"), "messages");
    t.name = *tool_name;
    if (t.name.empty()) t.name = text::StringField(m, "name", "").value_or("");
    t.tool_call_id = text::StringField(m, "tool_call_id", "").value_or("");
    if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
      if (!m["tool_calls"].is_array()) return BadRequest(absl::StrCat(at, ": 'tool_calls' must be an array"), "messages");
      for (const json& c : m["tool_calls"]) {
        if (!c.is_object() || !c.contains("function") || !c["function"].is_object() ||
            !text::StringField(c["function"], "name")) {
          return BadRequest(absl::StrCat(at, ": a tool call needs function.name"), "messages");
        }
        text::ChatToolCall call;
        call.name = *text::StringField(c["function"], "name");
        const json args = c["function"].contains("arguments") ? c["function"]["arguments"] : json::object();
        call.arguments = args.is_string() ? args.get<std::string>() : Dump(args);
        call.id = text::StringField(c, "id", "").value_or("");
        t.tool_calls.push_back(std::move(call));
      }
    }
    out->push_back(std::move(t));
  }
  return std::nullopt;
}

std::optional<ApiError> Decode(const ApiContext& ctx, bool chat, const json& body, GenerationSpec* spec,
                               OllamaOptions* o) {
  if (!body.is_object()) return BadRequest("the body is not a JSON object");
  o->chat = chat;
  auto model = text::StringField(body, "model");
  if (!model || model->empty()) return BadRequest("model is required", "model");
  o->model = *model;
  const auto resolved = ResolveOllamaModel(ctx, *model);
  if (!resolved) return NotFound(ctx, *model);
  spec->model = *resolved;  // an adapter's name, or empty for the base model
  for (const char* flag : {"stream", "raw"}) {
    if (body.contains(flag) && !body[flag].is_null() && !body[flag].is_boolean()) {
      return BadRequest(absl::StrCat("'", flag, "' must be a boolean"), flag);
    }
  }
  o->stream = !(body.contains("stream") && body["stream"].is_boolean() && !body["stream"].get<bool>());
  if (body.contains("keep_alive") && !body["keep_alive"].is_null() && !body["keep_alive"].is_string() &&
      !body["keep_alive"].is_number()) {
    return BadRequest("'keep_alive' must be a duration string or a number of seconds", "keep_alive");
  }
  // think: true/false or an effort. gpt-oss always reasons: false keeps the
  // reasoning short (low) and leaves it out of the reply.
  if (body.contains("think") && !body["think"].is_null()) {
    const json& t = body["think"];
    if (t.is_boolean()) {
      o->show_thinking = t.get<bool>();
      spec->reasoning_effort = t.get<bool>() ? "medium" : "low";
    } else if (t == "low" || t == "medium" || t == "high") {
      spec->reasoning_effort = t.get<std::string>();
    } else {
      return BadRequest("'think' must be true, false, \"low\", \"medium\" or \"high\"", "think");
    }
  }
  if (body.contains("format") && !body["format"].is_null() && body["format"] != "") {
    if (body["format"] != "json" && !body["format"].is_object()) {
      return BadRequest("'format' must be \"json\" or a JSON schema object", "format");
    }
    spec->response_format.type = body["format"].is_object() ? ResponseFormat::Type::kJsonSchema
                                                            : ResponseFormat::Type::kJsonObject;
    if (body["format"].is_object()) spec->response_format.schema = body["format"];
  }
  if (auto e = DecodeOptions(ctx, body.contains("options") ? body["options"] : json(), spec)) return e;
  if (chat) {
    spec->chat = true;
    if (body.contains("messages") && !body["messages"].is_null()) {
      if (body["messages"].is_array() && static_cast<int64_t>(body["messages"].size()) > ctx.limits.max_messages) {
        return BadRequest(absl::StrCat("'messages' holds ", body["messages"].size(), " messages; the limit is ",
                                       ctx.limits.max_messages), "messages");
      }
      if (auto e = DecodeMessages(body["messages"], &spec->messages)) return e;
    }
    const json tools = body.contains("tools") ? body["tools"] : json();
    if (tools.is_array() && static_cast<int64_t>(tools.size()) > ctx.limits.max_tools) {
      return BadRequest(absl::StrCat("'tools' holds ", tools.size(), " tools; the limit is ", ctx.limits.max_tools),
                        "tools");
    }
    auto t = text::ToolsFromOpenAi(tools);
    if (!t.ok()) return FromStatus(t.status());
    spec->tools = std::move(*t);
    o->load_only = spec->messages.empty();
  } else {
    for (const char* unsupported : {"suffix", "images", "template", "context"}) {
      if (body.contains(unsupported) && !body[unsupported].is_null() &&
          !(body[unsupported].is_string() && body[unsupported].get<std::string>().empty()) &&
          !(body[unsupported].is_array() && body[unsupported].empty())) {
        const char* why = std::string_view(unsupported) == "suffix"
                              ? "fill-in-the-middle (suffix) is not supported: gpt-oss has no infill format"
                          : std::string_view(unsupported) == "images"
                              ? "images are not supported: gpt-oss reads text only"
                          : std::string_view(unsupported) == "template"
                              ? "a custom template is not supported: prompts are rendered in harmony; use raw"
                              : "'context' (a previous reply's tokens) is not supported; use /api/chat";
        return BadRequest(why, unsupported);
      }
    }
    auto prompt = text::StringField(body, "prompt", "");
    auto system = text::StringField(body, "system", "");
    if (!prompt) return BadRequest("'prompt' must be a string", "prompt");
    if (!system) return BadRequest("'system' must be a string", "system");
    const bool raw = body.contains("raw") && body["raw"].is_boolean() && body["raw"].get<bool>();
    o->load_only = prompt->empty();
    if (raw) {
      spec->chat = false;
      spec->prompt = ctx.tokenizer->EncodeWithSpecials(*prompt);
    } else {
      spec->chat = true;
      if (!system->empty()) spec->messages.push_back({"system", *system, "", {}, "", ""});
      spec->messages.push_back({"user", *prompt, "", {}, "", ""});
    }
  }
  return std::nullopt;
}

class OllamaEncoder : public HttpEncoder {
 public:
  explicit OllamaEncoder(const OllamaOptions& o) : opts_(o) {}

  bool streaming() const override { return opts_.stream; }
  const char* stream_content_type() const override { return "application/x-ndjson"; }

  std::string Event(const Generation&, const GenerationEvent& e) override {
    if (e.choice != 0) return "";
    using K = GenerationEvent::Kind;
    switch (e.kind) {
      case K::kContent:
        return e.text.empty() ? "" : Line(Piece(e.text, ""));
      case K::kReasoning:
        return opts_.show_thinking && !e.text.empty() ? Line(Piece("", e.text)) : "";
      case K::kToolCallBegin: {
        std::string out = FlushCall();
        call_ = ToolCallResult{e.call_id, e.tool_name, ""};
        return out;
      }
      case K::kToolCallArguments:
        if (call_) call_->arguments += e.text;
        return "";
      case K::kFinish: return FlushCall();
    }
    return "";
  }

  std::string End(const Generation& g) override { return Line(Final(g, json())); }

  std::string StreamError(const Generation&, const ApiError& e) override { return Line(OllamaErrorJson(e)); }

  std::string Body(const Generation& g) override {
    const ChoiceResult& c = g.results().at(0);
    json calls = json::array();
    for (const ToolCallResult& t : c.calls) calls.push_back(CallJson(t));
    json msg = {{"role", "assistant"}, {"content", c.content}};
    if (opts_.show_thinking && !c.reasoning.empty()) msg["thinking"] = c.reasoning;
    if (!calls.empty()) msg["tool_calls"] = std::move(calls);
    return Dump(Final(g, msg));
  }

  std::string ErrorBody(const ApiError& e) const override { return Dump(OllamaErrorJson(e)); }

 private:
  static std::string Line(const json& j) { return Dump(j) + "\n"; }

  json Stamp() const { return {{"model", opts_.model}, {"created_at", NowRfc3339()}}; }

  json Piece(const std::string& content, const std::string& thinking) const {
    json j = Stamp();
    if (opts_.chat) {
      json msg = {{"role", "assistant"}, {"content", content}};
      if (!thinking.empty()) msg["thinking"] = thinking;
      j["message"] = std::move(msg);
    } else {
      j["response"] = content;
      if (!thinking.empty()) j["thinking"] = thinking;
    }
    j["done"] = false;
    return j;
  }

  // Ollama gives a call's arguments as an object; text that is not a JSON
  // object (a model that wrote something else) is passed on as a string.
  static json CallJson(const ToolCallResult& t) {
    json args = json::parse(t.arguments, nullptr, false);
    if (args.is_discarded() || !args.is_object()) args = t.arguments;
    return {{"id", t.id}, {"function", {{"name", t.name}, {"arguments", std::move(args)}}}};
  }

  // A streamed call goes out whole once its arguments are complete, as Ollama sends it.
  std::string FlushCall() {
    if (!call_) return "";
    json j = Stamp();
    j["message"] = {{"role", "assistant"}, {"content", ""}, {"tool_calls", json::array({CallJson(*call_)})}};
    j["done"] = false;
    call_.reset();
    return opts_.chat ? Line(j) : "";
  }

  json Final(const Generation& g, json message) const {
    const GenerationUsage u = g.usage();
    const ChoiceResult* c = g.results().empty() ? nullptr : &g.results()[0];
    json j = Stamp();
    if (opts_.chat) {
      j["message"] = message.is_null() ? json{{"role", "assistant"}, {"content", ""}} : std::move(message);
    } else {
      j["response"] = message.is_null() ? "" : message["content"];
      if (!message.is_null() && message.contains("thinking")) j["thinking"] = message["thinking"];
    }
    const int64_t total = g.total_ns(), prompt_ns = g.prompt_eval_ns();
    j["done"] = true;
    j["done_reason"] = c && c->finish_reason == "length" ? "length" : "stop";
    j["total_duration"] = total;
    j["load_duration"] = 0;
    j["prompt_eval_count"] = u.prompt_tokens - u.cached_tokens;
    j["prompt_eval_duration"] = prompt_ns;
    j["eval_count"] = u.completion_tokens;
    j["eval_duration"] = std::max<int64_t>(0, total - prompt_ns);
    return j;
  }

  OllamaOptions opts_;
  std::optional<ToolCallResult> call_;
};

json Details() {
  return {{"parent_model", ""}, {"format", "safetensors"}, {"family", "gpt-oss"}, {"families", json::array({"gpt-oss"})},
          {"parameter_size", ""}, {"quantization_level", "MXFP4"}};
}

}  // namespace

std::optional<std::string> ResolveOllamaModel(const ApiContext& ctx, const std::string& name) {
  if (name == ctx.served_model_name || name == ctx.served_model_name + ":latest") return std::string();
  if (!ctx.adapters) return std::nullopt;
  for (const std::string& n : {name, absl::EndsWith(name, ":latest") ? name.substr(0, name.size() - 7) : name}) {
    if (ctx.adapters->Find(n)) return n;
  }
  return std::nullopt;
}

bool IsServedModel(const ApiContext& ctx, const std::string& name) { return ResolveOllamaModel(ctx, name).has_value(); }

std::optional<ApiError> DecodeOllama(const ApiContext& ctx, bool chat, const ordered_json& body, GenerationSpec* spec,
                                     OllamaOptions* options) {
  try {
    return Decode(ctx, chat, body, spec, options);
  } catch (const nlohmann::json::exception& e) {
    return BadRequest(absl::StrCat("malformed request: ", e.what()));
  }
}

std::unique_ptr<HttpEncoder> MakeOllamaEncoder(const ApiContext&, const OllamaOptions& options) {
  return std::make_unique<OllamaEncoder>(options);
}

std::string OllamaLoadReply(const ApiContext&, const OllamaOptions& o) {
  json j = {{"model", o.model}, {"created_at", NowRfc3339()}};
  if (o.chat) j["message"] = {{"role", "assistant"}, {"content", ""}};
  else j["response"] = "";
  j["done"] = true;
  j["done_reason"] = "load";
  return Dump(j);
}

std::optional<HttpReply> OllamaInfoRoute(const ApiContext& ctx, const std::string& method, const std::string& path,
                                         const std::string& body) {
  auto error = [](int status, std::string message) { return HttpReply{status, Dump(json{{"error", message}})}; };
  const std::string name = ctx.served_model_name;
  const std::string digest(64, '0');  // weights are not content-addressed here
  if (path == "/api/version") {
    if (method != "GET") return error(405, "use GET");
    return HttpReply{200, Dump(json{{"version", kOllamaApiVersion}})};
  }
  if (path == "/api/tags") {
    if (method != "GET") return error(405, "use GET");
    json m = {{"name", name + ":latest"}, {"model", name + ":latest"}, {"modified_at", "1970-01-01T00:00:00Z"},
              {"size", 0}, {"digest", digest}, {"details", Details()}};
    json models = json::array({m});
    if (ctx.adapters) {
      for (const auto& a : ctx.adapters->List()) {
        json d = Details();
        d["parent_model"] = name + ":latest";
        models.push_back({{"name", a->name + ":latest"}, {"model", a->name + ":latest"},
                          {"modified_at", "1970-01-01T00:00:00Z"}, {"size", a->bytes}, {"digest", digest},
                          {"details", d}});
      }
    }
    return HttpReply{200, Dump(json{{"models", models}})};
  }
  if (path == "/api/ps") {
    if (method != "GET") return error(405, "use GET");
    json m = {{"name", name + ":latest"}, {"model", name + ":latest"}, {"size", 0}, {"digest", digest},
              {"details", Details()}, {"expires_at", "9999-12-31T23:59:59Z"}, {"size_vram", 0},
              {"context_length", ctx.pool ? ctx.pool->max_model_len() : 0}};
    return HttpReply{200, Dump(json{{"models", json::array({m})}})};
  }
  if (path == "/api/show") {
    if (method != "POST") return error(405, "use POST");
    json req = json::parse(body, nullptr, false);
    if (req.is_discarded() || !req.is_object()) return error(400, "the body is not a JSON object");
    auto model = text::StringField(req, "model");
    if (!model) model = text::StringField(req, "name");  // the older field
    if (!model) return error(400, "model is required");
    if (!IsServedModel(ctx, *model)) return error(404, absl::StrCat("model \"", *model, "\" not found"));
    const int64_t len = ctx.pool ? ctx.pool->max_model_len() : 0;
    json info = {{"general.architecture", "gpt-oss"}, {"gpt-oss.context_length", len}};
    if (ctx.pool) {
      const auto& d = ctx.pool->description();
      info["gpt-oss.block_count"] = d.num_layers();
      info["gpt-oss.attention.sliding_window"] = d.sliding_window();
      info["tokenizer.ggml.model"] = "o200k_harmony";
      info["general.vocab_size"] = d.vocab_size();
    }
    return HttpReply{200, Dump(json{{"license", "Apache-2.0"}, {"modelfile", ""}, {"parameters", ""},
                                    {"template", "harmony (rendered by the server)"}, {"details", Details()},
                                    {"model_info", info},
                                    {"capabilities", json::array({"completion", "tools", "thinking"})},
                                    {"modified_at", "1970-01-01T00:00:00Z"}})};
  }
  if (path == "/api/embed" || path == "/api/embeddings") {
    return error(400, absl::StrCat("\"", name, "\" does not support embeddings: it is a text-generation model"));
  }
  for (const char* managed : {"/api/pull", "/api/push", "/api/create", "/api/copy", "/api/delete"}) {
    if (path == managed || absl::StartsWith(path, "/api/blobs/")) {
      return error(501, absl::StrCat(path, " is not available: moeserve serves the model given by --model; "
                                           "restart it with other weights to change models"));
    }
  }
  return std::nullopt;
}

}  // namespace moeserve::router
