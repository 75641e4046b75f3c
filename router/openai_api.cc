#include "router/openai_api.h"

#include <atomic>
#include <map>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace moeserve::router {
namespace {

using json = ordered_json;

// Reads an optional number field with a range; the error names the param.
template <typename T>
bool Num(const json& j, const char* key, T lo, T hi, T* out, ApiError* err) {
  if (!j.contains(key) || j[key].is_null()) return true;
  const json& v = j[key];
  const bool ok = std::is_integral_v<T> ? v.is_number_integer() : v.is_number();
  if (!ok || v.get<double>() < static_cast<double>(lo) || v.get<double>() > static_cast<double>(hi)) {
    *err = BadRequest(absl::StrCat("'", key, "' must be a ", std::is_integral_v<T> ? "integer" : "number", " in [",
                                   lo, ", ", hi, "]"),
                      key);
    return false;
  }
  *out = v.get<T>();
  return true;
}

std::atomic<int64_t> g_next_response{1};

// The request fields, each honoured, accepted without effect (docs/api.md), or
// refused unless it has its default value; anything else is an unknown
// parameter (400, as OpenAI answers).
constexpr const char* kHonoured[] = {
    "model", "messages", "prompt", "tools", "tool_choice", "reasoning_effort", "temperature", "top_p", "top_k",
    "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty", "seed", "n", "max_tokens",
    "max_completion_tokens", "stop", "stop_token_ids", "logprobs", "top_logprobs", "stream", "stream_options",
    "return_token_ids", "logit_bias", "response_format", "echo", "best_of", "suffix"};
// No effect on what is generated: bookkeeping for OpenAI's platform, or
// choices harmony makes itself (one tool call per message).
constexpr const char* kNoEffect[] = {"user", "metadata", "store", "service_tier", "parallel_tool_calls",
                                     "prompt_cache_key", "prompt_cache_retention", "safety_identifier"};

std::optional<ApiError> CheckFields(const json& body) {
  for (const auto& item : body.items()) {
    const std::string& k = item.key();
    const json& v = item.value();
    auto in = [&](const auto& list) {
      return std::find_if(std::begin(list), std::end(list), [&](const char* x) { return k == x; }) != std::end(list);
    };
    if (in(kHonoured) || in(kNoEffect)) continue;
    // vLLM's extras, at their defaults (what they would change is not supported).
    if ((k == "skip_special_tokens" && v == true) || (k == "include_stop_str_in_output" && v == false) ||
        (k == "ignore_eos" && v == false) || (k == "min_tokens" && v == 0) ||
        (k == "add_generation_prompt" && v == true) || (k == "spaces_between_special_tokens" && v == true)) {
      continue;
    }
    if (k == "modalities" && v == json::array({"text"})) continue;
    if (k == "verbosity" && v == "medium") continue;
    static const char* const kUnsupported[] = {"prediction", "audio", "modalities", "web_search_options",
                                               "functions", "function_call", "verbosity", "skip_special_tokens",
                                               "include_stop_str_in_output", "ignore_eos", "min_tokens",
                                               "add_generation_prompt", "spaces_between_special_tokens"};
    if (in(kUnsupported)) {
      return BadRequest(absl::StrCat("'", k, "' is not supported with this value (docs/api.md)"), k);
    }
    return BadRequest(absl::StrCat("Unrecognized request argument supplied: ", k), k);
  }
  return std::nullopt;
}

std::optional<ApiError> Decode(const ApiContext& ctx, bool chat, const json& body, GenerationSpec* spec,
                               OpenAiOptions* options) {
  ApiError err;
  if (!body.is_object()) return BadRequest("the body is not a JSON object", "");
  if (auto e = CheckFields(body)) return e;
  if (body.contains("model") && !body["model"].is_null()) {
    if (!body["model"].is_string()) return BadRequest("'model' must be a string", "model");
    spec->model = body["model"].get<std::string>();
  }
  const text::Tokenizer& tok = *ctx.tokenizer;
  const RequestLimits& lim = ctx.limits;
  spec->chat = chat;
  if (chat) {
    if (body.contains("reasoning_effort") && !body["reasoning_effort"].is_null()) {
      if (!body["reasoning_effort"].is_string()) return BadRequest("'reasoning_effort' must be a string", "reasoning_effort");
      spec->reasoning_effort = body["reasoning_effort"].get<std::string>();
    }
    if (!body.contains("messages")) return BadRequest("'messages' is required", "messages");
    if (body["messages"].is_array() && static_cast<int64_t>(body["messages"].size()) > lim.max_messages) {
      return BadRequest(absl::StrCat("'messages' holds ", body["messages"].size(), " messages; the limit is ",
                                     lim.max_messages), "messages");
    }
    const json tools = body.contains("tools") ? body["tools"] : json();
    if (tools.is_array() && static_cast<int64_t>(tools.size()) > lim.max_tools) {
      return BadRequest(absl::StrCat("'tools' holds ", tools.size(), " tools; the limit is ", lim.max_tools), "tools");
    }
    auto t = text::ToolsFromOpenAi(tools);
    if (!t.ok()) return FromStatus(t.status());
    spec->tools = std::move(*t);
    // tool_choice: "auto" (default), "none", "required" or {"type": "function", "function": {"name": N}}.
    if (body.contains("tool_choice") && !body["tool_choice"].is_null()) {
      const json& tc = body["tool_choice"];
      if (tc == "none") {
        spec->tool_choice = ToolChoice::kNone;
      } else if (tc == "required") {
        spec->tool_choice = ToolChoice::kRequired;
      } else if (tc.is_object() && text::StringField(tc, "type") == "function" && tc.contains("function") &&
                 tc["function"].is_object() && tc["function"].contains("name") && tc["function"]["name"].is_string()) {
        spec->tool_choice = ToolChoice::kNamed;
        spec->tool_choice_name = tc["function"]["name"].get<std::string>();
      } else if (tc != "auto") {
        return BadRequest("'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
                          "\"function\": {\"name\": ...}}", "tool_choice");
      }
    }
    auto m = text::ChatTurnsFromOpenAi(body["messages"]);
    if (!m.ok()) return FromStatus(m.status());
    spec->messages = std::move(*m);
  } else {
    if (!body.contains("prompt")) return BadRequest("'prompt' is required", "prompt");
    auto ids = text::CompletionPromptTokens(tok, body["prompt"]);
    if (!ids.ok()) return BadRequest(std::string(ids.status().message()), "prompt");
    if (ids->empty()) return BadRequest("the prompt is empty", "prompt");
    spec->prompt = std::move(*ids);
  }
  float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f, presence = 0.0f, frequency = 0.0f, repetition = 1.0f;
  int64_t top_k = 0, seed = 0, n = 1, top_logprobs = 0, max_tokens = 0;
  if (body.contains("top_p") && body["top_p"].is_number() && body["top_p"].get<double>() <= 0.0) {
    return BadRequest("'top_p' must be in (0, 1]", "top_p");
  }
  if (!Num(body, "temperature", 0.0f, 2.0f, &temperature, &err) || !Num(body, "top_p", 0.0f, 1.0f, &top_p, &err) ||
      !Num(body, "min_p", 0.0f, 1.0f, &min_p, &err) || !Num(body, "presence_penalty", -2.0f, 2.0f, &presence, &err) ||
      !Num(body, "frequency_penalty", -2.0f, 2.0f, &frequency, &err) ||
      !Num(body, "repetition_penalty", 0.01f, 10.0f, &repetition, &err) ||
      !Num<int64_t>(body, "top_k", -1, 1 << 20, &top_k, &err) ||
      !Num<int64_t>(body, "seed", INT64_MIN, INT64_MAX, &seed, &err) ||
      !Num<int64_t>(body, "n", 1, lim.max_n, &n, &err) ||
      !Num<int64_t>(body, "max_tokens", 1, 1 << 30, &max_tokens, &err) ||
      !Num<int64_t>(body, "max_completion_tokens", 1, 1 << 30, &max_tokens, &err) ||
      !Num<int64_t>(body, "top_logprobs", 0, lim.max_top_logprobs, &top_logprobs, &err)) {
    return err;
  }
  if (max_tokens > 0) spec->max_tokens = max_tokens;
  // logit_bias: {"token id": bias in [-100, 100]}.
  if (body.contains("logit_bias") && !body["logit_bias"].is_null()) {
    const json& lb = body["logit_bias"];
    if (!lb.is_object()) return BadRequest("'logit_bias' must be an object of token ids to biases", "logit_bias");
    if (static_cast<int64_t>(lb.size()) > kMaxLogitBias) {
      return BadRequest(absl::StrCat("'logit_bias' holds ", lb.size(), " entries; the limit is ", kMaxLogitBias),
                        "logit_bias");
    }
    for (const auto& item : lb.items()) {
      int64_t id = -1;
      if (!absl::SimpleAtoi(item.key(), &id) || id < 0 || id >= tok.vocab_size()) {
        return BadRequest(absl::StrCat("'logit_bias' key '", item.key(), "' is not a token id of the vocabulary"),
                          "logit_bias");
      }
      if (!item.value().is_number() || !(item.value().get<double>() >= -100 && item.value().get<double>() <= 100)) {
        return BadRequest(absl::StrCat("'logit_bias' value for token ", id, " must be a number in [-100, 100]"),
                          "logit_bias");
      }
      (*spec->sampling.mutable_logit_bias())[static_cast<int32_t>(id)] = item.value().get<float>();
    }
  }
  // Completions: echo (the prompt text first), best_of (only as n), suffix (no infill format).
  if (!chat) {
    if (body.contains("echo") && !body["echo"].is_null()) {
      if (!body["echo"].is_boolean()) return BadRequest("'echo' must be a boolean", "echo");
      options->echo = body["echo"].get<bool>();
    }
    if (body.contains("best_of") && !body["best_of"].is_null() && body["best_of"] != 1 && body["best_of"] != n) {
      return BadRequest("'best_of' other than 1 or n is not supported: every choice is returned", "best_of");
    }
    if (body.contains("suffix") && !body["suffix"].is_null() && body["suffix"] != "") {
      return BadRequest("'suffix' is not supported: gpt-oss has no fill-in-the-middle format", "suffix");
    }
  } else {
    for (const char* k : {"echo", "best_of", "suffix", "prompt"}) {
      if (body.contains(k)) return BadRequest(absl::StrCat("'", k, "' is a completions field, not a chat one"), k);
    }
  }
  if (chat && body.contains("messages") && body.contains("prompt")) return BadRequest("'prompt' is not a chat field", "prompt");
  if (body.contains("response_format") && !body["response_format"].is_null()) {
    const json& rf = body["response_format"];
    const auto type = text::StringField(rf, "type");
    if (!type || (*type != "text" && *type != "json_object" && *type != "json_schema")) {
      return BadRequest("'response_format.type' must be text, json_object or json_schema", "response_format");
    }
    if (*type == "json_object") spec->response_format.type = ResponseFormat::Type::kJsonObject;
    if (*type == "json_schema") {
      if (!rf.contains("json_schema") || !rf["json_schema"].is_object()) {
        return BadRequest("'response_format' of type json_schema needs a 'json_schema' object", "response_format");
      }
      if (auto e = DecodeJsonSchemaFormat(rf["json_schema"], "response_format.json_schema", &spec->response_format)) {
        return e;
      }
    }
  }
  spec->n = static_cast<int>(n);
  if (body.contains("stop") && !body["stop"].is_null()) {
    const json& st = body["stop"];
    if (st.is_string()) {
      spec->stops.push_back(st.get<std::string>());
    } else if (st.is_array() && static_cast<int64_t>(st.size()) <= lim.max_stop) {
      for (const json& x : st) {
        if (!x.is_string()) return BadRequest("'stop' must be a string or an array of strings", "stop");
        spec->stops.push_back(x.get<std::string>());
      }
    } else {
      return BadRequest(absl::StrCat("'stop' must be a string or an array of at most ", lim.max_stop, " strings"),
                        "stop");
    }
  }
  if (body.contains("stop_token_ids") && !body["stop_token_ids"].is_null()) {
    if (!body["stop_token_ids"].is_array() || body["stop_token_ids"].size() > 64) {
      return BadRequest("'stop_token_ids' must be an array of at most 64 integers", "stop_token_ids");
    }
    for (const json& t : body["stop_token_ids"]) {
      if (!t.is_number_integer() || t.get<int64_t>() < 0 || t.get<int64_t>() >= tok.vocab_size()) {
        return BadRequest("'stop_token_ids' must be token ids of the vocabulary", "stop_token_ids");
      }
      spec->stop_token_ids.push_back(t.get<int32_t>());
    }
  }
  for (const char* flag : {"stream", "return_token_ids"}) {
    if (body.contains(flag) && !body[flag].is_null() && !body[flag].is_boolean()) {
      return BadRequest(absl::StrCat("'", flag, "' must be a boolean"), flag);
    }
  }
  // logprobs: chat takes a boolean plus top_logprobs; completions an integer (the top-N count).
  bool want_logprobs = false;
  if (body.contains("logprobs") && !body["logprobs"].is_null()) {
    const json& lp = body["logprobs"];
    if (chat && lp.is_boolean()) {
      want_logprobs = lp.get<bool>();
    } else if (!chat && lp.is_number_integer() && lp.get<int64_t>() >= 0 &&
               lp.get<int64_t>() <= lim.max_top_logprobs) {
      want_logprobs = true;
      top_logprobs = lp.get<int64_t>();
    } else {
      return BadRequest(chat ? "'logprobs' must be a boolean"
                             : absl::StrCat("'logprobs' must be an integer in [0, ", lim.max_top_logprobs, "]"),
                        "logprobs");
    }
  }
  if (chat && top_logprobs > 0 && !want_logprobs) return BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs");
  if (body.contains("stream_options") && !body["stream_options"].is_null()) {
    const json& so = body["stream_options"];
    if (!so.is_object() || (so.contains("include_usage") && !so["include_usage"].is_boolean())) {
      return BadRequest("'stream_options' must be an object with a boolean 'include_usage'", "stream_options");
    }
    options->include_usage = so.contains("include_usage") && so["include_usage"].get<bool>();
  }
  options->stream = body.contains("stream") && body["stream"].is_boolean() && body["stream"].get<bool>();
  if (!options->stream && body.contains("stream_options") && !body["stream_options"].is_null()) {
    return BadRequest("'stream_options' is only allowed when 'stream' is true", "stream_options");
  }
  if (options->echo) {
    if (body["prompt"].is_string()) {
      options->echo_text = body["prompt"].get<std::string>();
    } else {
      auto text = tok.Decode(spec->prompt);
      options->echo_text = text.ok() ? text::SanitizeUtf8(*text) : std::string();
    }
  }
  options->return_token_ids = body.contains("return_token_ids") && body["return_token_ids"].is_boolean() &&
                              body["return_token_ids"].get<bool>();
  worker::v1::SamplingParams& sp = spec->sampling;
  sp.set_logprobs(want_logprobs);
  sp.set_top_logprobs(static_cast<int32_t>(top_logprobs));
  // echo with logprobs: the prompt's tokens come with theirs (the first has none).
  sp.set_prompt_logprobs(options->echo && want_logprobs);
  sp.set_temperature(temperature);
  sp.set_top_p(top_p);
  sp.set_top_k(static_cast<int32_t>(top_k < 0 ? 0 : top_k));
  sp.set_min_p(min_p);
  sp.set_presence_penalty(presence);
  sp.set_frequency_penalty(frequency);
  sp.set_repetition_penalty(repetition);
  if (body.contains("seed") && !body["seed"].is_null()) {
    sp.set_has_seed(true);
    sp.set_seed(static_cast<uint64_t>(seed));
  }
  return std::nullopt;
}

class OpenAiEncoder : public HttpEncoder {
 public:
  OpenAiEncoder(const ApiContext& ctx, bool chat, const OpenAiOptions& o) : ctx_(ctx), chat_(chat), opts_(o) {}

  bool streaming() const override { return opts_.stream; }

  std::string Head(const Generation& g) override {
    if (!chat_) {
      std::string out;
      // With logprobs the echo waits for the prompt's logprobs: it goes before the choice's first event.
      for (int i = 0; opts_.echo && i < g.spec().n; ++i) {
        if (g.spec().sampling.prompt_logprobs()) echo_pending_.insert(i);
        else out += Chunk(g, i, json{{"content", opts_.echo_text}}, nullptr, nullptr, {});
      }
      return out;
    }
    std::string out;
    for (int i = 0; i < g.spec().n; ++i) {
      out += Chunk(g, i, json{{"role", "assistant"}, {"content", ""}}, nullptr, nullptr, {});
    }
    return out;
  }

  std::string Event(const Generation& g, const GenerationEvent& e) override {
    std::string echo;
    if (echo_pending_.erase(e.choice)) {
      echo = Chunk(g, e.choice, json{{"content", opts_.echo_text}}, Legacy(e.choice, PromptEntries(g)), nullptr, {});
    }
    return echo + ChoiceEvent(g, e);
  }

  std::string ChoiceEvent(const Generation& g, const GenerationEvent& e) {
    using K = GenerationEvent::Kind;
    json lp = nullptr;
    if (e.logprob) {
      const json entry = LogprobJson(*ctx_.tokenizer, *e.logprob);
      lp = chat_ ? json{{"content", json::array({entry})}} : Legacy(e.choice, json::array({entry}));
    }
    switch (e.kind) {
      case K::kContent: return Chunk(g, e.choice, json{{"content", e.text}}, lp, nullptr, e.token_ids);
      case K::kReasoning:
        return Chunk(g, e.choice, json{{"reasoning", e.text}, {"reasoning_content", e.text}}, nullptr, nullptr,
                     e.token_ids);
      case K::kToolCallBegin:
        return Chunk(g, e.choice,
                     json{{"tool_calls", json::array({{{"index", e.tool_index}, {"id", e.call_id}, {"type", "function"},
                                                       {"function", {{"name", e.tool_name}, {"arguments", ""}}}}})}},
                     nullptr, nullptr, e.token_ids);
      case K::kToolCallArguments:
        return Chunk(g, e.choice,
                     json{{"tool_calls", json::array({{{"index", e.tool_index}, {"function", {{"arguments", e.text}}}}})}},
                     nullptr, nullptr, e.token_ids);
      case K::kFinish: return Chunk(g, e.choice, json::object(), nullptr, e.text, e.token_ids);
    }
    return "";
  }

  std::string End(const Generation& g) override {
    std::string out;
    if (opts_.include_usage) {
      out += Sse(json{{"id", g.id()}, {"object", chat_ ? "chat.completion.chunk" : "text_completion"},
                      {"created", g.created()}, {"model", g.model_name()}, {"choices", json::array()},
                      {"usage", UsageJson(g.usage())}});
    }
    return out + "data: [DONE]\n\n";
  }

  std::string StreamError(const Generation&, const ApiError& e) override {
    return absl::StrCat("data: ", ErrorJson(e).dump(), "\n\ndata: [DONE]\n\n");
  }

  std::string Body(const Generation& g) override {
    json choices = json::array();
    for (const ChoiceResult& c : g.results()) {
      json entries = g.spec().sampling.prompt_logprobs() ? PromptEntries(g) : json::array();
      if (g.spec().sampling.logprobs()) {
        for (const TokenLogprob& lp : c.logprobs) entries.push_back(LogprobJson(*ctx_.tokenizer, lp));
      }
      json choice;
      if (chat_) {
        json msg = {{"role", "assistant"}, {"content", c.content}};
        if (!c.reasoning.empty()) {
          msg["reasoning"] = c.reasoning;
          msg["reasoning_content"] = c.reasoning;
        }
        if (!c.calls.empty()) {
          json calls = json::array();
          for (const ToolCallResult& t : c.calls) {
            calls.push_back({{"id", t.id}, {"type", "function"}, {"function", {{"name", t.name}, {"arguments", t.arguments}}}});
          }
          msg["tool_calls"] = std::move(calls);
        }
        choice = {{"index", c.index}, {"message", msg},
                  {"logprobs", g.spec().sampling.logprobs() ? json{{"content", entries}} : json(nullptr)},
                  {"finish_reason", c.finish_reason}};
      } else {
        choice = {{"index", c.index}, {"text", opts_.echo ? opts_.echo_text + c.content : c.content},
                  {"logprobs", g.spec().sampling.logprobs() ? Legacy(c.index, entries) : json(nullptr)},
                  {"finish_reason", c.finish_reason}};
      }
      if (opts_.return_token_ids) choice["token_ids"] = c.tokens;
      choices.push_back(std::move(choice));
    }
    json res = {{"id", g.id()}, {"object", chat_ ? "chat.completion" : "text_completion"}, {"created", g.created()},
                {"model", g.model_name()}, {"choices", std::move(choices)}, {"usage", UsageJson(g.usage())}};
    if (opts_.return_token_ids) res["prompt_token_ids"] = g.prompt();
    return Dump(res);
  }

 private:
  static std::string Sse(const json& j) { return absl::StrCat("data: ", Dump(j), "\n\n"); }

  std::string Chunk(const Generation& g, int index, json delta, json logprobs, json finish_reason,
                    const std::vector<int32_t>& token_ids) {
    json choice;
    if (chat_) {
      choice = {{"index", index}, {"delta", std::move(delta)}, {"logprobs", std::move(logprobs)},
                {"finish_reason", std::move(finish_reason)}};
    } else {
      choice = {{"index", index}, {"text", delta.value("content", "")}, {"logprobs", std::move(logprobs)},
                {"finish_reason", std::move(finish_reason)}};
    }
    if (opts_.return_token_ids) choice["token_ids"] = token_ids;
    return Sse({{"id", g.id()}, {"object", chat_ ? "chat.completion.chunk" : "text_completion"},
                {"created", g.created()}, {"model", g.model_name()},
                {"choices", json::array({std::move(choice)})}});
  }

  // The prompt's tokens as logprob entries (echo with logprobs); the first
  // token, which nothing predicts, has null logprob and alternatives.
  json PromptEntries(const Generation& g) {
    json entries = json::array();
    const auto& lps = g.prompt_logprobs();
    for (size_t i = 0; i < g.prompt().size(); ++i) {
      if (i < lps.size() && lps[i]) {
        entries.push_back(LogprobJson(*ctx_.tokenizer, *lps[i]));
      } else {
        json e = LogprobJson(*ctx_.tokenizer, TokenLogprob{g.prompt()[i], 0, {}});
        e["logprob"] = nullptr;
        e["top_logprobs"] = nullptr;
        entries.push_back(std::move(e));
      }
    }
    return entries;
  }

  // Chat-style entries in the legacy /v1/completions shape; text offsets run on per choice.
  json Legacy(int choice, const json& entries) {
    int64_t& offset = text_offsets_[choice];
    json l = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
    for (const json& e : entries) {
      l["tokens"].push_back(e["token"]);
      l["token_logprobs"].push_back(e["logprob"]);
      json top = e["top_logprobs"].is_null() ? json(nullptr) : json::object();
      if (!top.is_null()) {
        for (const json& t : e["top_logprobs"]) top[t["token"].get<std::string>()] = t["logprob"];
      }
      l["top_logprobs"].push_back(top);
      l["text_offset"].push_back(offset);
      offset += static_cast<int64_t>(e["token"].get<std::string>().size());
    }
    return l;
  }

  const ApiContext& ctx_;
  bool chat_;
  OpenAiOptions opts_;
  std::map<int, int64_t> text_offsets_;
  std::set<int> echo_pending_;  // choices whose echo (with prompt logprobs) is still to be sent
};

}  // namespace

std::string NextResponseId(const char* prefix) { return absl::StrCat(prefix, g_next_response++); }

std::optional<ApiError> DecodeOpenAi(const ApiContext& ctx, bool chat, const ordered_json& body, GenerationSpec* spec,
                                     OpenAiOptions* options) {
  // Decode reads untrusted JSON with checked accessors; a type mismatch it
  // missed is still a 400 naming the cause, never an exception out of here.
  try {
    return Decode(ctx, chat, body, spec, options);
  } catch (const nlohmann::json::exception& e) {
    return BadRequest(absl::StrCat("malformed request: ", e.what()), "");
  }
}

std::unique_ptr<HttpEncoder> MakeOpenAiEncoder(const ApiContext& ctx, bool chat, const OpenAiOptions& options) {
  return std::make_unique<OpenAiEncoder>(ctx, chat, options);
}

ordered_json LogprobJson(const text::Tokenizer& tok, const TokenLogprob& lp) {
  auto entry = [&](int32_t t, float logprob) {
    const std::string* p = tok.TokenBytes(t);
    const std::string b = p ? *p : std::string();
    json bytes = json::array();
    for (unsigned char ch : b) bytes.push_back(static_cast<int>(ch));
    return json{{"token", text::SanitizeUtf8(b)}, {"logprob", logprob}, {"bytes", bytes}};
  };
  json e = entry(lp.token, lp.logprob);
  e["top_logprobs"] = json::array();
  for (const auto& [t, l] : lp.top) e["top_logprobs"].push_back(entry(t, l));
  return e;
}

ordered_json UsageJson(const GenerationUsage& u) {
  return {{"prompt_tokens", u.prompt_tokens},
          {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens},
          {"prompt_tokens_details", {{"cached_tokens", u.cached_tokens}}},
          {"completion_tokens_details", {{"reasoning_tokens", u.reasoning_tokens}}}};
}

}  // namespace moeserve::router
