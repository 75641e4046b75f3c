#include "router/gateway.h"

#include <boost/asio.hpp>
#include <boost/beast.hpp>
#include <array>
#include <chrono>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "router/metrics.h"
#include "router/text/chat.h"
#include "router/text/harmony_parser.h"
#include "router/text/stop_matcher.h"

namespace moeserve::router {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
using json = nlohmann::ordered_json;

struct ApiError {
  http::status status = http::status::bad_request;
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;
  std::string code;
};

std::string ErrorBody(const ApiError& e) {
  json j = {{"error",
             {{"message", e.message},
              {"type", e.type},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
  return j.dump();
}

ApiError FromStatus(const absl::Status& st) {
  ApiError e;
  e.message = std::string(st.message());
  switch (st.code()) {
    case absl::StatusCode::kResourceExhausted:
      e.status = http::status::too_many_requests;
      e.type = "rate_limit_error";
      break;
    case absl::StatusCode::kUnavailable:
      e.status = http::status::service_unavailable;
      e.type = "server_error";
      break;
    case absl::StatusCode::kInvalidArgument:
      break;
    default:
      e.status = http::status::internal_server_error;
      e.type = "server_error";
  }
  return e;
}

int64_t UnixNow() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Reads an optional number field with a range; returns an error naming the param.
template <typename T>
bool Num(const json& j, const char* key, T lo, T hi, T* out, ApiError* err) {
  if (!j.contains(key) || j[key].is_null()) return true;
  const json& v = j[key];
  const bool ok = std::is_integral_v<T> ? v.is_number_integer() : v.is_number();
  if (!ok || v.get<double>() < static_cast<double>(lo) || v.get<double>() > static_cast<double>(hi)) {
    err->message = absl::StrCat("'", key, "' must be a ", std::is_integral_v<T> ? "integer" : "number", " in [", lo,
                                ", ", hi, "]");
    err->param = key;
    return false;
  }
  *out = v.get<T>();
  return true;
}

}  // namespace

struct Gateway::Impl {
  GatewayOptions opts;
  GroupRunner* runner;
  const text::Tokenizer* tok;
  net::io_context ioc;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::vector<std::thread> threads;
  std::atomic<int64_t> next_response{1};
  RouterMetrics metrics;

  void Accept();
};

namespace {

class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, Gateway::Impl* gw) : stream_(std::move(socket)), gw_(gw) {}
  void Start() { Read(); }

 private:
  struct Generation {
    bool chat = true;
    bool stream = false;
    bool include_usage = false;
    int64_t id = -1;
    std::string response_id;
    int64_t created = 0;
    int64_t prompt_tokens = 0;
    std::vector<int32_t> tokens;
    std::unique_ptr<text::HarmonyStreamParser> parser;
    std::unique_ptr<text::IncrementalDecoder> decoder;
    std::map<int, std::string> call_ids;
    std::unique_ptr<text::StopMatcher> stop;
    bool stopped_by_string = false;
    bool finished = false;
    // Non-streamed responses accumulate here.
    std::string content, reasoning;
    json calls = json::array();
    std::chrono::steady_clock::time_point start, last_token;
    bool logprobs = false;
    json logprob_entries = json::array();  // non-streamed: OpenAI logprobs.content entries
  };

  void Read() {
    parser_.emplace();
    parser_->body_limit(gw_->opts.max_body_bytes);
    stream_.expires_after(std::chrono::seconds(60));  // slow or silent clients are dropped
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, size_t) { self->OnRead(ec); });
  }

  void OnRead(beast::error_code ec) {
    if (ec == http::error::body_limit) {
      // Answer 413, then keep reading (and discarding) what the client is still
      // sending for a while, so it sees the answer instead of a reset.
      ApiError e{http::status::payload_too_large, "request body too large"};
      auto res = std::make_shared<http::response<http::string_body>>(e.status, 11);
      res->set(http::field::content_type, "application/json");
      res->keep_alive(false);
      res->body() = ErrorBody(e);
      res->prepare_payload();
      http::async_write(stream_, *res, [self = shared_from_this(), res](beast::error_code, size_t) {
        beast::error_code ignored;
        self->stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
        self->stream_.expires_after(std::chrono::seconds(10));
        self->Drain();
      });
      return;
    }
    if (ec) return Close();
    stream_.expires_never();
    req_ = parser_->release();
    Handle();
  }

  void Drain() {
    auto buf = std::make_shared<std::array<char, 65536>>();
    stream_.async_read_some(net::buffer(*buf), [self = shared_from_this(), buf](beast::error_code ec, size_t) {
      if (ec) return self->Close();
      self->Drain();
    });
  }

  void Reply(http::status status, std::string body, bool keep_alive, int retry_after = 0) {
    auto res = std::make_shared<http::response<http::string_body>>(status, 11);
    res->set(http::field::content_type, "application/json");
    res->set(http::field::server, "moeserve");
    if (retry_after > 0) res->set(http::field::retry_after, std::to_string(retry_after));
    res->keep_alive(keep_alive);
    res->body() = std::move(body);
    res->prepare_payload();
    http::async_write(stream_, *res, [self = shared_from_this(), res, keep_alive](beast::error_code ec, size_t) {
      if (ec || !keep_alive) return self->Close();
      self->Read();
    });
  }

  void ReplyError(const ApiError& e) {
    Reply(e.status, ErrorBody(e), req_.keep_alive(), e.status == http::status::too_many_requests ? 1 : 0);
  }

  void Close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
    stream_.socket().close(ec);
    if (gen_ && !gen_->finished && gen_->id >= 0) gw_->runner->Abort(gen_->id);  // the client went away
  }

  void Handle() {
    const std::string target(req_.target());
    const std::string path = target.substr(0, target.find('?'));
    if (path == "/health") return Reply(http::status::ok, "{}", req_.keep_alive());
    if (path == "/metrics") {
      auto res = std::make_shared<http::response<http::string_body>>(http::status::ok, 11);
      res->set(http::field::content_type, "text/plain; version=0.0.4");
      res->keep_alive(req_.keep_alive());
      res->body() = gw_->metrics.Serialize(*gw_->runner);
      res->prepare_payload();
      const bool keep = req_.keep_alive();
      http::async_write(stream_, *res, [self = shared_from_this(), res, keep](beast::error_code ec, size_t) {
        if (ec || !keep) return self->Close();
        self->Read();
      });
      return;
    }
    if (path == "/ready") {
      return Reply(http::status::ok, json{{"ready", true}}.dump(), req_.keep_alive());
    }
    if (!gw_->opts.api_key.empty()) {
      const std::string auth(req_[http::field::authorization]);
      if (auth != "Bearer " + gw_->opts.api_key) {
        return ReplyError({http::status::unauthorized, "Incorrect API key provided.", "invalid_request_error", "",
                           "invalid_api_key"});
      }
    }
    if (path == "/v1/models") {
      if (req_.method() != http::verb::get) return ReplyError({http::status::method_not_allowed, "use GET"});
      json j = {{"object", "list"},
                {"data", json::array({{{"id", gw_->opts.served_model_name}, {"object", "model"}, {"created", 0},
                                       {"owned_by", "moeserve"}}})}};
      return Reply(http::status::ok, j.dump(), req_.keep_alive());
    }
    if (path == "/v1/chat/completions" || path == "/v1/completions") {
      if (req_.method() != http::verb::post) return ReplyError({http::status::method_not_allowed, "use POST"});
      return Generate(path == "/v1/chat/completions");
    }
    ReplyError({http::status::not_found, absl::StrCat("no route ", path), "invalid_request_error", "", "not_found"});
  }

  void Generate(bool chat) {
    json body = json::parse(req_.body(), nullptr, false);
    if (body.is_discarded() || !body.is_object()) return ReplyError({http::status::bad_request, "the body is not a JSON object"});
    ApiError err;
    if (body.contains("model") && !body["model"].is_null() && !body["model"].is_string()) {
      return ReplyError({http::status::bad_request, "'model' must be a string", "invalid_request_error", "model"});
    }
    if (body.contains("model") && body["model"].is_string() && body["model"] != gw_->opts.served_model_name) {
      return ReplyError({http::status::not_found,
                         absl::StrCat("The model `", body["model"].is_string() ? body["model"].get<std::string>() : "?",
                                      "` does not exist."),
                         "invalid_request_error", "model", "model_not_found"});
    }
    auto g = std::make_unique<Generation>();
    g->chat = chat;
    GenerationRequest gr;
    if (chat) {
      text::ChatRenderOptions o;
      o.current_date = gw_->opts.current_date;
      if (body.contains("reasoning_effort") && !body["reasoning_effort"].is_null()) {
        if (!body["reasoning_effort"].is_string()) return ReplyError({http::status::bad_request, "'reasoning_effort' must be a string", "invalid_request_error", "reasoning_effort"});
        o.reasoning_effort = body["reasoning_effort"].get<std::string>();
      }
      if (!body.contains("messages")) return ReplyError({http::status::bad_request, "'messages' is required", "invalid_request_error", "messages"});
      auto ids = text::RenderChatRequest(*gw_->tok, body["messages"], body.contains("tools") ? body["tools"] : json(), o);
      if (!ids.ok()) return ReplyError(FromStatus(ids.status()));
      gr.prompt = std::move(*ids);
      gr.stop_token_ids = text::AssistantStopTokens();
      g->parser = std::make_unique<text::HarmonyStreamParser>(*gw_->tok);
    } else {
      if (!body.contains("prompt")) return ReplyError({http::status::bad_request, "'prompt' is required", "invalid_request_error", "prompt"});
      auto ids = text::CompletionPromptTokens(*gw_->tok, body["prompt"]);
      if (!ids.ok()) return ReplyError({http::status::bad_request, std::string(ids.status().message()), "invalid_request_error", "prompt"});
      if (ids->empty()) return ReplyError({http::status::bad_request, "the prompt is empty", "invalid_request_error", "prompt"});
      gr.prompt = std::move(*ids);
      gr.stop_token_ids = {199999, 200002, 200012};
      g->decoder = std::make_unique<text::IncrementalDecoder>(*gw_->tok);
    }
    float temperature = 1.0f, top_p = 1.0f, min_p = 0.0f, presence = 0.0f, frequency = 0.0f;
    int64_t top_k = 0, seed = 0, n = 1, top_logprobs = 0;
    int64_t max_tokens = std::max<int64_t>(1, gw_->runner->description().max_model_len() - static_cast<int64_t>(gr.prompt.size()));
    if (body.contains("top_p") && body["top_p"].is_number() && body["top_p"].get<double>() <= 0.0) {
      return ReplyError({http::status::bad_request, "'top_p' must be in (0, 1]", "invalid_request_error", "top_p"});
    }
    if (!Num(body, "temperature", 0.0f, 2.0f, &temperature, &err) || !Num(body, "top_p", 0.0f, 1.0f, &top_p, &err) ||
        !Num(body, "min_p", 0.0f, 1.0f, &min_p, &err) || !Num(body, "presence_penalty", -2.0f, 2.0f, &presence, &err) ||
        !Num(body, "frequency_penalty", -2.0f, 2.0f, &frequency, &err) ||
        !Num<int64_t>(body, "top_k", -1, 1 << 20, &top_k, &err) ||
        !Num<int64_t>(body, "seed", INT64_MIN, INT64_MAX, &seed, &err) || !Num<int64_t>(body, "n", 1, 1, &n, &err) ||
        !Num<int64_t>(body, "max_tokens", 1, 1 << 30, &max_tokens, &err) ||
        !Num<int64_t>(body, "max_completion_tokens", 1, 1 << 30, &max_tokens, &err) ||
        !Num<int64_t>(body, "top_logprobs", 0, 20, &top_logprobs, &err)) {
      return ReplyError(err);
    }
    std::vector<std::string> stops;
    if (body.contains("stop") && !body["stop"].is_null()) {
      const json& st = body["stop"];
      if (st.is_string()) {
        stops.push_back(st.get<std::string>());
      } else if (st.is_array() && st.size() <= 16) {
        for (const json& x : st) {
          if (!x.is_string()) return ReplyError({http::status::bad_request, "'stop' must be a string or an array of strings", "invalid_request_error", "stop"});
          stops.push_back(x.get<std::string>());
        }
      } else {
        return ReplyError({http::status::bad_request, "'stop' must be a string or an array of at most 16 strings", "invalid_request_error", "stop"});
      }
      for (const auto& x : stops) {
        if (x.empty()) return ReplyError({http::status::bad_request, "stop strings must not be empty", "invalid_request_error", "stop"});
      }
    }
    if (body.contains("stop_token_ids") && body["stop_token_ids"].is_array()) {
      for (const json& t : body["stop_token_ids"]) {
        if (!t.is_number_integer()) return ReplyError({http::status::bad_request, "'stop_token_ids' must be integers", "invalid_request_error", "stop_token_ids"});
        gr.stop_token_ids.push_back(t.get<int32_t>());
      }
    }
    if (body.contains("stream") && !body["stream"].is_null() && !body["stream"].is_boolean()) {
      return ReplyError({http::status::bad_request, "'stream' must be a boolean", "invalid_request_error", "stream"});
    }
    // logprobs: chat takes a boolean plus top_logprobs; completions an integer (the top-N count).
    bool want_logprobs = false;
    if (body.contains("logprobs") && !body["logprobs"].is_null()) {
      const json& lp = body["logprobs"];
      if (chat && lp.is_boolean()) {
        want_logprobs = lp.get<bool>();
      } else if (!chat && lp.is_number_integer() && lp.get<int64_t>() >= 0 && lp.get<int64_t>() <= 20) {
        want_logprobs = true;
        top_logprobs = lp.get<int64_t>();
      } else {
        return ReplyError({http::status::bad_request,
                           chat ? "'logprobs' must be a boolean" : "'logprobs' must be an integer in [0, 20]",
                           "invalid_request_error", "logprobs"});
      }
    }
    if (chat && top_logprobs > 0 && !want_logprobs) {
      return ReplyError({http::status::bad_request, "'top_logprobs' needs 'logprobs': true", "invalid_request_error",
                         "top_logprobs"});
    }
    gr.sampling.set_logprobs(want_logprobs);
    gr.sampling.set_top_logprobs(static_cast<int32_t>(top_logprobs));
    g->logprobs = want_logprobs;
    g->stream = body.value("stream", false);
    if (body.contains("stream_options") && body["stream_options"].is_object()) {
      g->include_usage = body["stream_options"].value("include_usage", false);
    }
    gr.max_tokens = max_tokens;
    gr.sampling.set_temperature(temperature);
    gr.sampling.set_top_p(top_p);
    gr.sampling.set_top_k(static_cast<int32_t>(top_k < 0 ? 0 : top_k));
    gr.sampling.set_min_p(min_p);
    gr.sampling.set_presence_penalty(presence);
    gr.sampling.set_frequency_penalty(frequency);
    if (body.contains("seed") && !body["seed"].is_null()) {
      gr.sampling.set_has_seed(true);
      gr.sampling.set_seed(static_cast<uint64_t>(seed));
    }
    g->stop = std::make_unique<text::StopMatcher>(stops);
    g->start = std::chrono::steady_clock::now();
    g->prompt_tokens = static_cast<int64_t>(gr.prompt.size());
    g->created = UnixNow();
    g->response_id = absl::StrCat(chat ? "chatcmpl-" : "cmpl-", gw_->next_response++);
    gen_ = std::move(g);

    // The callbacks own the session until the request ends: with no read or
    // write outstanding, nothing else keeps it alive while it waits.
    GenerationCallbacks cb;
    auto self = shared_from_this();
    auto exec = stream_.get_executor();
    cb.on_token = [self, exec](const worker::v1::SampleOutput& s) {
      net::post(exec, [self, s] { self->OnToken(s); });
    };
    cb.on_finish = [self, exec](RequestStatus st, const std::string& why) {
      net::post(exec, [self, st, why] { self->OnFinish(st, why); });
    };
    auto id = gw_->runner->Submit(std::move(gr), std::move(cb));
    if (!id.ok()) {
      gen_.reset();
      return ReplyError(FromStatus(id.status()));
    }
    gen_->id = *id;
    if (gen_->stream) {
      Write("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n");
      if (chat) Event(Chunk(json{{"role", "assistant"}, {"content", ""}}, nullptr));
    }
  }

  json Chunk(json delta, json finish_reason, json logprobs = nullptr) {
    if (gen_->chat) {
      return {{"id", gen_->response_id}, {"object", "chat.completion.chunk"}, {"created", gen_->created},
              {"model", gw_->opts.served_model_name},
              {"choices", json::array({{{"index", 0}, {"delta", std::move(delta)}, {"logprobs", std::move(logprobs)},
                                        {"finish_reason", std::move(finish_reason)}}})}};
    }
    return {{"id", gen_->response_id}, {"object", "text_completion"}, {"created", gen_->created},
            {"model", gw_->opts.served_model_name},
            {"choices", json::array({{{"index", 0}, {"text", delta.value("text", "")},
                                      {"logprobs", std::move(logprobs)}, {"finish_reason", std::move(finish_reason)}}})}};
  }

  // Content passes through the stop-string matcher; a match ends the request.
  void EmitContent(const std::string& raw) {
    const std::string text = gen_->stop->Push(raw);
    // Logprobs belong to the tokens that produced content (not to harmony's headers).
    json lp = nullptr;
    if (gen_->logprobs && !pending_logprob_.is_null() && !raw.empty()) {
      lp = gen_->chat ? json{{"content", json::array({pending_logprob_})}}
                      : (gen_->stream ? LegacyLogprobs(json::array({pending_logprob_})) : json(nullptr));
      if (!gen_->stream) gen_->logprob_entries.push_back(pending_logprob_);
      pending_logprob_ = nullptr;
    }
    if (!text.empty() || (gen_->stream && !lp.is_null())) {
      if (!gen_->chat) {
        if (gen_->stream) Event(Chunk(json{{"text", text}}, nullptr, lp));
        else gen_->content += text;
      } else if (gen_->stream) {
        Event(Chunk(json{{"content", text}}, nullptr, lp));
      } else {
        gen_->content += text;
      }
    }
    if (gen_->stop->stopped() && !gen_->stopped_by_string) {
      gen_->stopped_by_string = true;
      gw_->runner->Abort(gen_->id);  // on_finish follows; it is reported as "stop"
    }
  }

  void Apply(const std::vector<text::HarmonyDelta>& ds) {
    for (const auto& d : ds) {
      if (gen_->stopped_by_string) return;
      switch (d.kind) {
        case text::HarmonyDelta::Kind::kContent: EmitContent(d.text); break;
        case text::HarmonyDelta::Kind::kReasoning:
          if (gen_->stream) Event(Chunk(json{{"reasoning", d.text}, {"reasoning_content", d.text}}, nullptr));
          else gen_->reasoning += d.text;
          break;
        case text::HarmonyDelta::Kind::kToolCallBegin: {
          const std::string call_id = absl::StrCat("call_", gen_->response_id, "_", d.tool_index);
          gen_->call_ids[d.tool_index] = call_id;
          if (gen_->stream) {
            Event(Chunk(json{{"tool_calls", json::array({{{"index", d.tool_index}, {"id", call_id}, {"type", "function"},
                                                         {"function", {{"name", d.tool_name}, {"arguments", ""}}}}})}},
                        nullptr));
          } else {
            gen_->calls.push_back({{"id", call_id}, {"type", "function"},
                                   {"function", {{"name", d.tool_name}, {"arguments", ""}}}});
          }
          break;
        }
        case text::HarmonyDelta::Kind::kToolCallArguments:
          if (gen_->stream) {
            Event(Chunk(json{{"tool_calls", json::array({{{"index", d.tool_index},
                                                         {"function", {{"arguments", d.text}}}}})}},
                        nullptr));
          } else if (!gen_->calls.empty()) {
            auto& a = gen_->calls.back()["function"]["arguments"];
            a = a.get<std::string>() + d.text;
          }
          break;
        case text::HarmonyDelta::Kind::kFinish: finish_hint_ = d.text; break;
      }
    }
  }

  // Chat-style entries in the legacy /v1/completions shape.
  json LegacyLogprobs(const json& entries) {
    json l = {{"tokens", json::array()}, {"token_logprobs", json::array()}, {"top_logprobs", json::array()},
              {"text_offset", json::array()}};
    for (const json& e : entries) {
      l["tokens"].push_back(e["token"]);
      l["token_logprobs"].push_back(e["logprob"]);
      json top = json::object();
      for (const json& t : e["top_logprobs"]) top[t["token"].get<std::string>()] = t["logprob"];
      l["top_logprobs"].push_back(top);
      l["text_offset"].push_back(text_offset_);
      text_offset_ += static_cast<int64_t>(e["token"].get<std::string>().size());
    }
    return l;
  }

  // One OpenAI logprob entry: {token, logprob, bytes, top_logprobs}.
  json LogprobEntry(int32_t token, float logprob, const google::protobuf::RepeatedPtrField<worker::v1::TokenLogprob>* top) {
    auto piece = [&](int32_t t) {
      const std::string* b = gw_->tok->TokenBytes(t);
      return b ? *b : std::string();
    };
    auto entry = [&](int32_t t, float lp) {
      const std::string b = piece(t);
      json bytes = json::array();
      for (unsigned char c : b) bytes.push_back(static_cast<int>(c));
      return json{{"token", text::SanitizeUtf8(b)}, {"logprob", lp}, {"bytes", bytes}};
    };
    json e = entry(token, logprob);
    e["top_logprobs"] = json::array();
    if (top) {
      for (const auto& t : *top) e["top_logprobs"].push_back(entry(t.token(), t.logprob()));
    }
    return e;
  }

  void OnToken(const worker::v1::SampleOutput& s) {
    if (!gen_ || gen_->finished || gen_->stopped_by_string) return;
    pending_logprob_ = gen_->logprobs ? LogprobEntry(s.token(), s.logprob(), &s.top_logprobs()) : json();
    OnToken(s.token());
  }

  void OnToken(int32_t token) {
    if (!gen_ || gen_->finished || gen_->stopped_by_string) return;
    const auto now = std::chrono::steady_clock::now();
    if (gen_->tokens.empty()) gw_->metrics.FirstToken(std::chrono::duration<double>(now - gen_->start).count());
    else gw_->metrics.InterToken(std::chrono::duration<double>(now - gen_->last_token).count());
    gen_->last_token = now;
    gen_->tokens.push_back(token);
    if (gen_->chat) {
      std::vector<text::HarmonyDelta> ds;
      gen_->parser->Push(token, &ds);
      Apply(ds);
    } else if (!IsStop(token)) {
      auto t = gen_->decoder->Add(token);
      if (t.ok()) EmitContent(*t);
    }
  }

  bool IsStop(int32_t token) const { return token == 199999 || token == 200002 || token == 200012; }

  void OnFinish(RequestStatus st, const std::string& why) {
    if (!gen_ || gen_->finished) return;
    gen_->finished = true;
    const int64_t completion = static_cast<int64_t>(gen_->tokens.size());
    const json usage = {{"prompt_tokens", gen_->prompt_tokens}, {"completion_tokens", completion},
                        {"total_tokens", gen_->prompt_tokens + completion}};
    const double e2e = std::chrono::duration<double>(std::chrono::steady_clock::now() - gen_->start).count();
    if (!gen_->stopped_by_string && (st == RequestStatus::kFinishedError || st == RequestStatus::kFinishedAborted)) {
      gw_->metrics.RequestFinished(st == RequestStatus::kFinishedError ? "error" : "abort", gen_->prompt_tokens,
                                   completion, e2e);
      ApiError e{http::status::internal_server_error, why.empty() ? "the request was aborted" : why, "server_error"};
      if (gen_->stream) {
        Event(json::parse(ErrorBody(e)));
        Write("data: [DONE]\n\n", /*last=*/true);
      } else {
        ReplyError(e);
      }
      return;
    }
    std::string finish = "stop";
    if (!gen_->stopped_by_string) {
      if (gen_->chat) {
        std::vector<text::HarmonyDelta> ds;
        gen_->parser->Finish(st == RequestStatus::kFinishedLength, &ds);
        Apply(ds);
      } else {
        EmitContent(gen_->decoder->Flush());
      }
    }
    if (!gen_->stopped_by_string) {
      const std::string tail = gen_->stop->Flush();
      if (!tail.empty()) {
        if (!gen_->stream) gen_->content += tail;
        else if (gen_->chat) Event(Chunk(json{{"content", tail}}, nullptr));
        else Event(Chunk(json{{"text", tail}}, nullptr));
      }
      if (st == RequestStatus::kFinishedLength) finish = "length";
      if (gen_->chat && finish_hint_ == "tool_calls") finish = "tool_calls";
    }
    gw_->metrics.RequestFinished(finish, gen_->prompt_tokens, completion, e2e);
    if (!gen_->stream) {
      json res;
      if (gen_->chat) {
        json msg = {{"role", "assistant"}, {"content", gen_->content}};
        if (!gen_->reasoning.empty()) {
          msg["reasoning"] = gen_->reasoning;
          msg["reasoning_content"] = gen_->reasoning;
        }
        if (!gen_->calls.empty()) msg["tool_calls"] = gen_->calls;
        res = {{"id", gen_->response_id}, {"object", "chat.completion"}, {"created", gen_->created},
               {"model", gw_->opts.served_model_name},
               {"choices", json::array({{{"index", 0}, {"message", msg},
                                         {"logprobs", gen_->logprobs ? json{{"content", gen_->logprob_entries}} : json(nullptr)},
                                         {"finish_reason", finish}}})},
               {"usage", usage}};
      } else {
        res = {{"id", gen_->response_id}, {"object", "text_completion"}, {"created", gen_->created},
               {"model", gw_->opts.served_model_name},
               {"choices", json::array({{{"index", 0}, {"text", gen_->content},
                                         {"logprobs", gen_->logprobs ? LegacyLogprobs(gen_->logprob_entries) : json(nullptr)},
                                         {"finish_reason", finish}}})},
               {"usage", usage}};
      }
      return Reply(http::status::ok, res.dump(), req_.keep_alive());
    }
    Event(Chunk(gen_->chat ? json::object() : json{{"text", ""}}, finish));
    if (gen_->include_usage) {
      json u = Chunk(json::object(), nullptr);
      u["choices"] = json::array();
      u["usage"] = usage;
      Event(u);
    }
    Write("data: [DONE]\n\n", /*last=*/true);
  }

  void Event(const json& j) { Write(absl::StrCat("data: ", j.dump(), "\n\n")); }

  // Queues raw bytes on the socket (SSE); `last` closes the connection after.
  void Write(std::string data, bool last = false) {
    queue_.push_back(std::make_shared<std::string>(std::move(data)));
    if (last) close_after_ = true;
    if (!writing_) WriteNext();
  }

  void WriteNext() {
    if (queue_.empty()) {
      writing_ = false;
      if (close_after_) Close();
      return;
    }
    writing_ = true;
    auto buf = queue_.front();
    queue_.pop_front();
    net::async_write(stream_.socket(), net::buffer(*buf), [self = shared_from_this(), buf](beast::error_code ec, size_t) {
      if (ec) {
        self->queue_.clear();
        self->writing_ = false;
        return self->Close();  // aborts the generation if it is still running
      }
      self->WriteNext();
    });
  }

  beast::tcp_stream stream_;
  Gateway::Impl* gw_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> req_;
  std::unique_ptr<Generation> gen_;
  std::deque<std::shared_ptr<std::string>> queue_;
  bool writing_ = false, close_after_ = false;
  std::string finish_hint_;
  json pending_logprob_;  // of the token being applied
  int64_t text_offset_ = 0;
};

}  // namespace

void Gateway::Impl::Accept() {
  acceptor->async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec) return;
    std::make_shared<Session>(std::move(socket), this)->Start();
    Accept();
  });
}

Gateway::Gateway(GatewayOptions options, GroupRunner* runner, const text::Tokenizer* tokenizer)
    : impl_(std::make_unique<Impl>()) {
  impl_->opts = std::move(options);
  impl_->runner = runner;
  impl_->tok = tokenizer;
}

Gateway::~Gateway() { Stop(); }

absl::StatusOr<int> Gateway::Start() {
  beast::error_code ec;
  auto addr = net::ip::make_address(impl_->opts.host, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("bad --host ", impl_->opts.host));
  impl_->acceptor = std::make_unique<tcp::acceptor>(impl_->ioc);
  tcp::endpoint ep(addr, static_cast<uint16_t>(impl_->opts.port));
  impl_->acceptor->open(ep.protocol(), ec);
  if (!ec) impl_->acceptor->set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor->bind(ep, ec);
  if (!ec) impl_->acceptor->listen(net::socket_base::max_listen_connections, ec);
  if (ec) return absl::UnavailableError(absl::StrCat("cannot listen on ", impl_->opts.host, ":", impl_->opts.port, ": ", ec.message()));
  impl_->Accept();
  for (int i = 0; i < std::max(1, impl_->opts.io_threads); ++i) impl_->threads.emplace_back([this] { impl_->ioc.run(); });
  return impl_->acceptor->local_endpoint().port();
}

void Gateway::Stop() {
  if (!impl_) return;
  impl_->ioc.stop();
  for (auto& t : impl_->threads)
    if (t.joinable()) t.join();
  impl_->threads.clear();
}

void Gateway::Wait() {
  for (auto& t : impl_->threads)
    if (t.joinable()) t.join();
}

}  // namespace moeserve::router
