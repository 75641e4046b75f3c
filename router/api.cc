#include "router/api.h"

#include <atomic>
#include <chrono>

#include "absl/strings/str_cat.h"
#include "router/text/chat.h"

namespace moeserve::router {
namespace {

using json = ordered_json;


int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

ApiError BadRequest(std::string message, std::string param) {
  ApiError e;
  e.message = std::move(message);
  e.param = std::move(param);
  return e;
}

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

}  // namespace

json ErrorJson(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

int JsonDepth(std::string_view text, int stop_at) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (const char ch : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (ch == '\\') escaped = true;
      else if (ch == '"') in_string = false;
    } else if (ch == '"') {
      in_string = true;
    } else if (ch == '[' || ch == '{') {
      deepest = std::max(deepest, ++depth);
      if (deepest >= stop_at) return deepest;
    } else if (ch == ']' || ch == '}') {
      --depth;
    }
  }
  return deepest;
}

ApiError FromStatus(const absl::Status& st) {
  ApiError e;
  e.message = std::string(st.message());
  switch (st.code()) {
    case absl::StatusCode::kResourceExhausted:
      e.status = 429;
      e.type = "rate_limit_error";
      e.retry_after = 1;
      break;
    case absl::StatusCode::kUnavailable:
      e.status = 503;
      e.type = "server_error";
      break;
    case absl::StatusCode::kInvalidArgument:
      break;
    default:
      e.status = 500;
      e.type = "server_error";
  }
  return e;
}

// One of the n choices of a request: its own request id, text state and output.
struct Completion::Choice {
  int index = 0;
  int64_t id = -1;
  bool finished = false;
  std::vector<int32_t> tokens;
  std::vector<int32_t> pending_ids;  // return_token_ids: sampled since the last chunk
  std::unique_ptr<text::HarmonyStreamParser> parser;
  std::unique_ptr<text::IncrementalDecoder> decoder;
  std::unique_ptr<text::StopMatcher> stop;
  std::map<int, std::string> call_ids;
  bool stopped_by_string = false;
  int64_t cached_tokens = -1;  // prompt tokens found in the prefix cache (-1: not scheduled yet)
  std::string finish_hint;
  json pending_logprob;  // of the token being applied
  int64_t text_offset = 0;
  std::chrono::steady_clock::time_point start, last_token;
  // Not streaming: the message accumulates here.
  std::string content, reasoning;
  json calls = json::array();
  json logprob_entries = json::array();
  std::string finish_reason;
};

Completion::Completion(ApiContext* ctx, bool chat, std::shared_ptr<CompletionSink> sink)
    : ctx_(ctx), chat_(chat), sink_(std::move(sink)) {}

Completion::~Completion() = default;

std::optional<ApiError> Completion::Parse(const json& body, int64_t max_model_len, GenerationRequest* gr,
                                          std::vector<std::string>* stops) {
  ApiError err;
  if (!body.is_object()) return BadRequest("the body is not a JSON object", "");
  if (body.contains("model") && !body["model"].is_null()) {
    if (!body["model"].is_string()) return BadRequest("'model' must be a string", "model");
    if (body["model"].get<std::string>() != ctx_->served_model_name) {
      ApiError e{404, absl::StrCat("The model `", body["model"].get<std::string>(), "` does not exist."),
                 "invalid_request_error", "model", "model_not_found"};
      return e;
    }
  }
  const text::Tokenizer& tok = *ctx_->tokenizer;
  if (chat_) {
    text::ChatRenderOptions o;
    o.current_date = ctx_->current_date;
    if (body.contains("reasoning_effort") && !body["reasoning_effort"].is_null()) {
      if (!body["reasoning_effort"].is_string()) return BadRequest("'reasoning_effort' must be a string", "reasoning_effort");
      o.reasoning_effort = body["reasoning_effort"].get<std::string>();
    }
    if (!body.contains("messages")) return BadRequest("'messages' is required", "messages");
    const RequestLimits& lim = ctx_->limits;
    if (body["messages"].is_array() && static_cast<int64_t>(body["messages"].size()) > lim.max_messages) {
      return BadRequest(absl::StrCat("'messages' holds ", body["messages"].size(), " messages; the limit is ",
                                     lim.max_messages), "messages");
    }
    if (body.contains("tools") && body["tools"].is_array() &&
        static_cast<int64_t>(body["tools"].size()) > lim.max_tools) {
      return BadRequest(absl::StrCat("'tools' holds ", body["tools"].size(), " tools; the limit is ", lim.max_tools),
                        "tools");
    }
    // tool_choice: "auto" (default), "none" (the tools are not shown to the
    // model), "required" or {"type": "function", "function": {"name": N}}: the
    // assistant's reply starts as a tool call (to N), prefilled in harmony.
    json tools = body.contains("tools") ? body["tools"] : json();
    std::string prefill;
    if (body.contains("tool_choice") && !body["tool_choice"].is_null()) {
      const json& tc = body["tool_choice"];
      const bool have_tools = tools.is_array() && !tools.empty();
      if (tc == "none") {
        tools = json();
      } else if (tc == "required") {
        if (!have_tools) return BadRequest("'tool_choice' \"required\" needs 'tools'", "tool_choice");
        prefill = "<|channel|>commentary to=functions.";
      } else if (tc.is_object() && text::StringField(tc, "type") == "function" && tc.contains("function") &&
                 tc["function"].is_object() && tc["function"].contains("name") && tc["function"]["name"].is_string()) {
        const std::string name = tc["function"]["name"].get<std::string>();
        bool known = false;
        if (have_tools) {
          for (const json& t : tools) {
            known |= t.is_object() && t.contains("function") && t["function"].is_object() &&
                     text::StringField(t["function"], "name") == name;
          }
        }
        if (!known) return BadRequest(absl::StrCat("'tool_choice' names function '", name, "', which is not in 'tools'"), "tool_choice");
        prefill = absl::StrCat("<|channel|>commentary to=functions.", name, " <|constrain|>json<|message|>");
      } else if (tc != "auto") {
        return BadRequest("'tool_choice' must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", "
                          "\"function\": {\"name\": ...}}", "tool_choice");
      }
    }
    auto ids = text::RenderChatRequest(tok, body["messages"], tools, o);
    if (!ids.ok()) return FromStatus(ids.status());
    gr->prompt = std::move(*ids);
    if (!prefill.empty()) {
      prefill_ = tok.EncodeWithSpecials(prefill);
      gr->prompt.insert(gr->prompt.end(), prefill_.begin(), prefill_.end());
    }
    gr->stop_token_ids = text::AssistantStopTokens(tok, ctx_->eos_token_ids);
  } else {
    if (!body.contains("prompt")) return BadRequest("'prompt' is required", "prompt");
    auto ids = text::CompletionPromptTokens(tok, body["prompt"]);
    if (!ids.ok()) return BadRequest(std::string(ids.status().message()), "prompt");
    if (ids->empty()) return BadRequest("the prompt is empty", "prompt");
    gr->prompt = std::move(*ids);
    gr->stop_token_ids = ctx_->eos_token_ids;
  }
  float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f, presence = 0.0f, frequency = 0.0f;
  int64_t top_k = 0, seed = 0, n = 1, top_logprobs = 0;
  int64_t max_tokens = std::max<int64_t>(1, max_model_len - static_cast<int64_t>(gr->prompt.size()));
  if (body.contains("top_p") && body["top_p"].is_number() && body["top_p"].get<double>() <= 0.0) {
    return BadRequest("'top_p' must be in (0, 1]", "top_p");
  }
  if (!Num(body, "temperature", 0.0f, 2.0f, &temperature, &err) || !Num(body, "top_p", 0.0f, 1.0f, &top_p, &err) ||
      !Num(body, "min_p", 0.0f, 1.0f, &min_p, &err) || !Num(body, "presence_penalty", -2.0f, 2.0f, &presence, &err) ||
      !Num(body, "frequency_penalty", -2.0f, 2.0f, &frequency, &err) ||
      !Num<int64_t>(body, "top_k", -1, 1 << 20, &top_k, &err) ||
      !Num<int64_t>(body, "seed", INT64_MIN, INT64_MAX, &seed, &err) ||
      !Num<int64_t>(body, "n", 1, ctx_->limits.max_n, &n, &err) ||
      !Num<int64_t>(body, "max_tokens", 1, 1 << 30, &max_tokens, &err) ||
      !Num<int64_t>(body, "max_completion_tokens", 1, 1 << 30, &max_tokens, &err) ||
      !Num<int64_t>(body, "top_logprobs", 0, ctx_->limits.max_top_logprobs, &top_logprobs, &err)) {
    return err;
  }
  if (body.contains("stop") && !body["stop"].is_null()) {
    const json& st = body["stop"];
    if (st.is_string()) {
      stops->push_back(st.get<std::string>());
    } else if (st.is_array() && static_cast<int64_t>(st.size()) <= ctx_->limits.max_stop) {
      for (const json& x : st) {
        if (!x.is_string()) return BadRequest("'stop' must be a string or an array of strings", "stop");
        stops->push_back(x.get<std::string>());
      }
    } else {
      return BadRequest(absl::StrCat("'stop' must be a string or an array of at most ", ctx_->limits.max_stop,
                                     " strings"), "stop");
    }
    for (const auto& x : *stops) {
      if (x.empty()) return BadRequest("stop strings must not be empty", "stop");
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
      gr->stop_token_ids.push_back(t.get<int32_t>());
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
    if (chat_ && lp.is_boolean()) {
      want_logprobs = lp.get<bool>();
    } else if (!chat_ && lp.is_number_integer() && lp.get<int64_t>() >= 0 &&
               lp.get<int64_t>() <= ctx_->limits.max_top_logprobs) {
      want_logprobs = true;
      top_logprobs = lp.get<int64_t>();
    } else {
      return BadRequest(chat_ ? "'logprobs' must be a boolean"
                              : absl::StrCat("'logprobs' must be an integer in [0, ", ctx_->limits.max_top_logprobs, "]"),
                        "logprobs");
    }
  }
  if (chat_ && top_logprobs > 0 && !want_logprobs) return BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs");
  if (body.contains("stream_options") && !body["stream_options"].is_null()) {
    const json& so = body["stream_options"];
    if (!so.is_object() || (so.contains("include_usage") && !so["include_usage"].is_boolean())) {
      return BadRequest("'stream_options' must be an object with a boolean 'include_usage'", "stream_options");
    }
    include_usage_ = so.contains("include_usage") && so["include_usage"].get<bool>();  // checked boolean above
  }
  stream_ = body.contains("stream") && body["stream"].is_boolean() && body["stream"].get<bool>();
  return_token_ids_ = body.contains("return_token_ids") && body["return_token_ids"].is_boolean() &&
                      body["return_token_ids"].get<bool>();
  logprobs_ = want_logprobs;
  gr->max_tokens = max_tokens;
  worker::v1::SamplingParams& sp = gr->sampling;
  sp.set_logprobs(want_logprobs);
  sp.set_top_logprobs(static_cast<int32_t>(top_logprobs));
  sp.set_temperature(temperature);
  sp.set_top_p(top_p);
  sp.set_top_k(static_cast<int32_t>(top_k < 0 ? 0 : top_k));
  sp.set_min_p(min_p);
  sp.set_presence_penalty(presence);
  sp.set_frequency_penalty(frequency);
  if (body.contains("seed") && !body["seed"].is_null()) {
    sp.set_has_seed(true);
    sp.set_seed(static_cast<uint64_t>(seed));
  }
  choices_.resize(static_cast<size_t>(n));
  return std::nullopt;
}

std::optional<ApiError> Completion::SafeParse(const json& body, int64_t max_model_len, GenerationRequest* gr,
                                              std::vector<std::string>* stops) {
  // Parse reads untrusted JSON with checked accessors; a type mismatch it
  // missed is still a 400 naming the cause, never an exception out of here.
  try {
    return Parse(body, max_model_len, gr, stops);
  } catch (const nlohmann::json::exception& e) {
    return BadRequest(absl::StrCat("malformed request: ", e.what()), "");
  }
}

std::optional<ApiError> Completion::Decode(ApiContext* ctx, bool chat, const json& body, int64_t max_model_len,
                                           Decoded* out) {
  Completion c(ctx, chat, nullptr);
  if (auto err = c.SafeParse(body, max_model_len, &out->request, &out->stops)) return err;
  out->n = static_cast<int>(c.choices_.size());
  out->stream = c.stream_;
  return std::nullopt;
}

std::optional<ApiError> Completion::Start(ApiContext* ctx, bool chat, const json& body,
                                          std::shared_ptr<CompletionSink> sink, std::shared_ptr<Completion>* out,
                                          CompletionOptions options) {
  auto c = std::make_shared<Completion>(ctx, chat, std::move(sink));
  c->options_ = options;
  GenerationRequest gr;
  std::vector<std::string> stops;
  if (auto err = c->SafeParse(body, ctx->pool->max_model_len(), &gr, &stops)) return err;
  c->prompt_ = gr.prompt;
  c->created_ = UnixNow();
  c->response_id_ = absl::StrCat(chat ? "chatcmpl-" : "cmpl-", g_next_response++);
  const auto now = std::chrono::steady_clock::now();
  for (size_t i = 0; i < c->choices_.size(); ++i) {
    auto ch = std::make_unique<Choice>();
    ch->index = static_cast<int>(i);
    if (chat) ch->parser = std::make_unique<text::HarmonyStreamParser>(*ctx->tokenizer);
    else ch->decoder = std::make_unique<text::IncrementalDecoder>(*ctx->tokenizer);
    ch->stop = std::make_unique<text::StopMatcher>(stops);
    ch->start = now;
    c->choices_[i] = std::move(ch);
  }
  // Submit every choice (seed + index for seeded requests, as vLLM does), or none.
  std::weak_ptr<CompletionSink> weak_sink = c->sink_;
  for (auto& ch : c->choices_) {
    GenerationRequest r = gr;
    if (r.sampling.has_seed()) r.sampling.set_seed(r.sampling.seed() + static_cast<uint64_t>(ch->index));
    Choice* cp = ch.get();
    GenerationCallbacks cb;
    cb.on_scheduled = [c, cp](int64_t cached) {
      c->sink_->Post([cp, cached] { cp->cached_tokens = cached; });
    };
    cb.on_token = [c, cp](const worker::v1::SampleOutput& s) {
      c->sink_->Post([c, cp, s] { c->OnToken(*cp, s); });
    };
    cb.on_finish = [c, cp](RequestStatus st, const std::string& why) {
      c->sink_->Post([c, cp, st, why] { c->OnFinish(*cp, st, why); });
    };
    auto id = ctx->pool->Submit(std::move(r), std::move(cb));
    if (!id.ok()) {
      c->failed_ = true;  // callbacks of the choices already submitted are ignored
      for (auto& other : c->choices_) {
        if (other->id >= 0) ctx->pool->Abort(other->id);
      }
      return FromStatus(id.status());
    }
    ch->id = *id;
  }
  if (c->stream_ && chat) {
    for (auto& ch : c->choices_) c->Emit(*ch, json{{"role", "assistant"}, {"content", ""}}, nullptr);
  }
  // A prefilled reply start (tool_choice) goes through each parser: the tool call begins.
  for (auto& ch : c->choices_) {
    if (!ch->parser || c->prefill_.empty()) continue;
    std::vector<text::HarmonyDelta> ds;
    for (int32_t t : c->prefill_) ch->parser->Push(t, &ds);
    c->Apply(*ch, ds);
  }
  *out = c;
  return std::nullopt;
}

void Completion::Abort() {
  if (done_) return;
  done_ = true;
  for (auto& ch : choices_) {
    if (!ch->finished && ch->id >= 0) ctx_->pool->Abort(ch->id);
  }
}

// One chunk for one choice (streaming), carrying the token ids sampled since the last one.
void Completion::Emit(Choice& c, json delta, json finish_reason, json logprobs) {
  json choice;
  if (chat_) {
    choice = {{"index", c.index}, {"delta", std::move(delta)}, {"logprobs", std::move(logprobs)},
              {"finish_reason", std::move(finish_reason)}};
  } else {
    choice = {{"index", c.index}, {"text", delta.value("text", "")}, {"logprobs", std::move(logprobs)},
              {"finish_reason", std::move(finish_reason)}};
  }
  if (return_token_ids_) {
    choice["token_ids"] = c.pending_ids;
    c.pending_ids.clear();
  }
  sink_->OnChunk({{"id", response_id_}, {"object", chat_ ? "chat.completion.chunk" : "text_completion"},
                  {"created", created_}, {"model", ctx_->served_model_name},
                  {"choices", json::array({std::move(choice)})}});
}

// Content passes through the stop-string matcher; a match ends the choice.
void Completion::EmitContent(Choice& c, const std::string& raw) {
  const std::string text = c.stop->Push(raw);
  // Logprobs belong to the tokens that produced content (not to harmony's headers).
  json lp = nullptr;
  if (logprobs_ && !c.pending_logprob.is_null() && !raw.empty()) {
    lp = (chat_ || options_.token_id_logprobs) ? json{{"content", json::array({c.pending_logprob})}}
               : (stream_ ? LegacyLogprobs(c, json::array({c.pending_logprob})) : json(nullptr));
    if (!stream_) c.logprob_entries.push_back(c.pending_logprob);
    c.pending_logprob = nullptr;
  }
  if (!text.empty() || (stream_ && !lp.is_null())) {
    if (stream_) Emit(c, chat_ ? json{{"content", text}} : json{{"text", text}}, nullptr, lp);
    else c.content += text;
  }
  if (c.stop->stopped() && !c.stopped_by_string) {
    c.stopped_by_string = true;
    ctx_->pool->Finish(c.id, RequestStatus::kFinishedStopped);  // on_finish follows
  }
}

void Completion::Apply(Choice& c, const std::vector<text::HarmonyDelta>& ds) {
  for (const auto& d : ds) {
    if (c.stopped_by_string) return;
    switch (d.kind) {
      case text::HarmonyDelta::Kind::kContent: EmitContent(c, d.text); break;
      case text::HarmonyDelta::Kind::kReasoning:
        if (stream_) Emit(c, json{{"reasoning", d.text}, {"reasoning_content", d.text}}, nullptr);
        else c.reasoning += d.text;
        break;
      case text::HarmonyDelta::Kind::kToolCallBegin: {
        const std::string call_id = absl::StrCat("call_", response_id_, "_", c.index, "_", d.tool_index);
        c.call_ids[d.tool_index] = call_id;
        if (stream_) {
          Emit(c, json{{"tool_calls", json::array({{{"index", d.tool_index}, {"id", call_id}, {"type", "function"},
                                                    {"function", {{"name", d.tool_name}, {"arguments", ""}}}}})}},
               nullptr);
        } else {
          c.calls.push_back({{"id", call_id}, {"type", "function"},
                             {"function", {{"name", d.tool_name}, {"arguments", ""}}}});
        }
        break;
      }
      case text::HarmonyDelta::Kind::kToolCallArguments:
        if (stream_) {
          Emit(c, json{{"tool_calls", json::array({{{"index", d.tool_index}, {"function", {{"arguments", d.text}}}}})}},
               nullptr);
        } else if (!c.calls.empty()) {
          auto& a = c.calls.back()["function"]["arguments"];
          a = a.get<std::string>() + d.text;
        }
        break;
      case text::HarmonyDelta::Kind::kFinish: c.finish_hint = d.text; break;
    }
  }
}

// Chat-style entries in the legacy /v1/completions shape.
json Completion::LegacyLogprobs(Choice& c, const json& entries) const {
  json l = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
            {"text_offset", json::array()}};
  for (const json& e : entries) {
    l["tokens"].push_back(e["token"]);
    l["token_logprobs"].push_back(e["logprob"]);
    json top = json::object();
    for (const json& t : e["top_logprobs"]) top[t["token"].get<std::string>()] = t["logprob"];
    l["top_logprobs"].push_back(top);
    l["text_offset"].push_back(c.text_offset);
    c.text_offset += static_cast<int64_t>(e["token"].get<std::string>().size());
  }
  return l;
}

// One OpenAI logprob entry: {token, logprob, bytes, top_logprobs}.
json Completion::LogprobEntry(const worker::v1::SampleOutput& s) const {
  auto entry = [&](int32_t t, float lp) {
    const std::string* p = ctx_->tokenizer->TokenBytes(t);
    const std::string b = p ? *p : std::string();
    json bytes = json::array();
    for (unsigned char ch : b) bytes.push_back(static_cast<int>(ch));
    json j = {{"token", text::SanitizeUtf8(b)}, {"logprob", lp}, {"bytes", bytes}};
    if (options_.token_id_logprobs) j["id"] = t;
    return j;
  };
  json e = entry(s.token(), s.logprob());
  e["top_logprobs"] = json::array();
  for (const auto& t : s.top_logprobs()) e["top_logprobs"].push_back(entry(t.token(), t.logprob()));
  return e;
}

void Completion::OnToken(Choice& c, const worker::v1::SampleOutput& s) {
  if (failed_ || done_ || c.finished || c.stopped_by_string) return;
  c.pending_logprob = logprobs_ ? LogprobEntry(s) : json();
  const int32_t token = s.token();
  const auto now = std::chrono::steady_clock::now();
  if (c.tokens.empty()) ctx_->metrics->FirstToken(std::chrono::duration<double>(now - c.start).count());
  else ctx_->metrics->InterToken(std::chrono::duration<double>(now - c.last_token).count());
  c.last_token = now;
  c.tokens.push_back(token);
  if (return_token_ids_) c.pending_ids.push_back(token);
  if (chat_) {
    std::vector<text::HarmonyDelta> ds;
    c.parser->Push(token, &ds);
    Apply(c, ds);
  } else if (std::find(ctx_->eos_token_ids.begin(), ctx_->eos_token_ids.end(), token) == ctx_->eos_token_ids.end()) {
    auto t = c.decoder->Add(token);
    if (t.ok()) EmitContent(c, *t);
  }
}

json Completion::Usage() const {
  int64_t completion = 0;
  for (const auto& c : choices_) completion += static_cast<int64_t>(c->tokens.size());
  const int64_t prompt = static_cast<int64_t>(prompt_.size());
  // The prompt is shared by the choices: its cached part is what the first
  // lookup found (later choices reuse what the first computed).
  int64_t cached = -1;
  for (const auto& c : choices_) {
    if (c->cached_tokens >= 0) cached = cached < 0 ? c->cached_tokens : std::min(cached, c->cached_tokens);
  }
  return {{"prompt_tokens", prompt},
          {"completion_tokens", completion},
          {"total_tokens", prompt + completion},
          {"prompt_tokens_details", {{"cached_tokens", std::max<int64_t>(cached, 0)}}}};
}

void Completion::OnFinish(Choice& c, RequestStatus st, const std::string& why) {
  if (failed_ || c.finished) return;
  c.finished = true;
  ++num_finished_;
  const int64_t prompt = static_cast<int64_t>(prompt_.size());
  const int64_t completion = static_cast<int64_t>(c.tokens.size());
  const double e2e = std::chrono::duration<double>(std::chrono::steady_clock::now() - c.start).count();
  if (!c.stopped_by_string && (st == RequestStatus::kFinishedError || st == RequestStatus::kFinishedAborted)) {
    ctx_->metrics->RequestFinished(st == RequestStatus::kFinishedError ? "error" : "abort", prompt, completion, e2e);
    if (done_) return;  // the client is gone
    // A choice that cannot finish fails the request: the others are aborted.
    failed_ = done_ = true;
    for (auto& other : choices_) {
      if (!other->finished) ctx_->pool->Abort(other->id);
    }
    ApiError e{500, why.empty() ? "the request was aborted" : why, "server_error"};
    sink_->OnError(e);
    return;
  }
  if (done_) return;
  std::string finish = "stop";
  if (!c.stopped_by_string) {
    if (chat_) {
      std::vector<text::HarmonyDelta> ds;
      c.parser->Finish(st == RequestStatus::kFinishedLength, &ds);
      Apply(c, ds);
    } else {
      EmitContent(c, c.decoder->Flush());
    }
  }
  if (!c.stopped_by_string) {
    const std::string tail = c.stop->Flush();
    if (!tail.empty()) {
      if (!stream_) c.content += tail;
      else Emit(c, chat_ ? json{{"content", tail}} : json{{"text", tail}}, nullptr);
    }
    if (st == RequestStatus::kFinishedLength) finish = "length";
    if (chat_ && c.finish_hint == "tool_calls") finish = "tool_calls";
  }
  c.finish_reason = finish;
  ctx_->metrics->RequestFinished(finish, prompt, completion, e2e);
  if (stream_) Emit(c, chat_ ? json::object() : json{{"text", ""}}, finish);
  if (num_finished_ == static_cast<int>(choices_.size())) Finish();
}

void Completion::Finish() {
  done_ = true;
  const json usage = Usage();
  if (stream_) {
    if (include_usage_) {
      sink_->OnChunk({{"id", response_id_}, {"object", chat_ ? "chat.completion.chunk" : "text_completion"},
                      {"created", created_}, {"model", ctx_->served_model_name}, {"choices", json::array()},
                      {"usage", usage}});
    }
    sink_->OnDone(nullptr);
    return;
  }
  json choices = json::array();
  for (auto& cp : choices_) {
    Choice& c = *cp;
    json choice;
    if (chat_) {
      json msg = {{"role", "assistant"}, {"content", c.content}};
      if (!c.reasoning.empty()) {
        msg["reasoning"] = c.reasoning;
        msg["reasoning_content"] = c.reasoning;
      }
      if (!c.calls.empty()) msg["tool_calls"] = c.calls;
      choice = {{"index", c.index}, {"message", msg},
                {"logprobs", logprobs_ ? json{{"content", c.logprob_entries}} : json(nullptr)},
                {"finish_reason", c.finish_reason}};
    } else {
      json lp = nullptr;
      if (logprobs_) {
        lp = options_.token_id_logprobs ? json{{"content", c.logprob_entries}} : LegacyLogprobs(c, c.logprob_entries);
      }
      choice = {{"index", c.index}, {"text", c.content}, {"logprobs", std::move(lp)},
                {"finish_reason", c.finish_reason}};
    }
    if (return_token_ids_) choice["token_ids"] = c.tokens;
    choices.push_back(std::move(choice));
  }
  json res = {{"id", response_id_}, {"object", chat_ ? "chat.completion" : "text_completion"}, {"created", created_},
              {"model", ctx_->served_model_name}, {"choices", std::move(choices)}, {"usage", usage}};
  if (return_token_ids_) res["prompt_token_ids"] = prompt_;
  sink_->OnDone(res);
}

}  // namespace moeserve::router
