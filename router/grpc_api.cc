#include "router/grpc_api.h"

#include <condition_variable>
#include <deque>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace moeserve::router {
namespace {

namespace pb = moeserve::v1;
using json = ordered_json;

grpc::Status ToGrpc(const ApiError& e) {
  grpc::StatusCode code = grpc::StatusCode::INTERNAL;
  switch (e.status) {
    case 400: case 413: code = grpc::StatusCode::INVALID_ARGUMENT; break;
    case 401: code = grpc::StatusCode::UNAUTHENTICATED; break;
    case 404: code = grpc::StatusCode::NOT_FOUND; break;
    case 429: code = grpc::StatusCode::RESOURCE_EXHAUSTED; break;
    case 503: code = grpc::StatusCode::UNAVAILABLE; break;
    default: break;
  }
  return grpc::Status(code, e.param.empty() ? e.message : absl::StrCat(e.message, " (param: ", e.param, ")"));
}

// The OpenAI body the HTTP API would receive for this request.
absl::StatusOr<json> ToOpenAi(const pb::GenerateRequest& r, bool stream, bool* chat) {
  json body = json::object();
  if (!r.model().empty()) body["model"] = r.model();
  *chat = r.has_chat();
  switch (r.input_case()) {
    case pb::GenerateRequest::kText: body["prompt"] = r.text(); break;
    case pb::GenerateRequest::kTokenIds: body["prompt"] = r.token_ids().ids(); break;
    case pb::GenerateRequest::kChat: {
      json messages = json::array();
      for (const pb::ChatMessage& m : r.chat().messages()) {
        json j = {{"role", m.role()}, {"content", m.content()}};
        if (!m.reasoning_content().empty()) j["reasoning_content"] = m.reasoning_content();
        if (!m.tool_call_id().empty()) j["tool_call_id"] = m.tool_call_id();
        if (!m.name().empty()) j["name"] = m.name();
        if (m.tool_calls_size() > 0) {
          j["tool_calls"] = json::array();
          for (const pb::ToolCall& c : m.tool_calls()) {
            j["tool_calls"].push_back({{"id", c.id()}, {"type", "function"},
                                       {"function", {{"name", c.name()}, {"arguments", c.arguments()}}}});
          }
        }
        messages.push_back(std::move(j));
      }
      body["messages"] = std::move(messages);
      if (r.chat().tools_size() > 0) {
        json tools = json::array();
        for (const pb::Tool& t : r.chat().tools()) {
          json fn = {{"name", t.name()}};
          if (!t.description().empty()) fn["description"] = t.description();
          if (!t.parameters_json().empty()) {
            json p = json::parse(t.parameters_json(), nullptr, false);
            if (p.is_discarded()) {
              return absl::InvalidArgumentError(absl::StrCat("tool ", t.name(), ": parameters_json is not JSON"));
            }
            fn["parameters"] = std::move(p);
          }
          tools.push_back({{"type", "function"}, {"function", std::move(fn)}});
        }
        body["tools"] = std::move(tools);
      }
      if (!r.chat().reasoning_effort().empty()) body["reasoning_effort"] = r.chat().reasoning_effort();
      break;
    }
    default: return absl::InvalidArgumentError("one of text, token_ids or chat is required");
  }
  if (r.has_max_tokens()) body["max_tokens"] = r.max_tokens();
  if (r.has_temperature()) body["temperature"] = r.temperature();
  if (r.has_top_p()) body["top_p"] = r.top_p();
  if (r.has_top_k()) body["top_k"] = r.top_k();
  if (r.has_min_p()) body["min_p"] = r.min_p();
  if (r.has_presence_penalty()) body["presence_penalty"] = r.presence_penalty();
  if (r.has_frequency_penalty()) body["frequency_penalty"] = r.frequency_penalty();
  if (r.has_seed()) body["seed"] = r.seed();
  if (r.stop_size() > 0) body["stop"] = r.stop();
  if (r.stop_token_ids_size() > 0) body["stop_token_ids"] = r.stop_token_ids();
  if (*chat) {
    if (r.logprobs()) body["logprobs"] = true;
    if (r.top_logprobs() != 0) body["top_logprobs"] = r.top_logprobs();
  } else if (r.logprobs() || r.top_logprobs() != 0) {
    body["logprobs"] = r.top_logprobs();
  }
  if (r.n() != 0) body["n"] = r.n();
  body["stream"] = stream;
  if (stream) body["stream_options"] = {{"include_usage", true}};
  body["return_token_ids"] = true;
  return body;
}

pb::FinishReason ToFinish(const json& f) {
  if (!f.is_string()) return pb::FINISH_REASON_UNSPECIFIED;
  const std::string s = f.get<std::string>();
  if (s == "length") return pb::FINISH_REASON_LENGTH;
  if (s == "tool_calls") return pb::FINISH_REASON_TOOL_CALLS;
  return pb::FINISH_REASON_STOP;
}

// A chunk or a whole response (OpenAI JSON) as a GenerateResponse.
pb::GenerateResponse ToProto(const json& j) {
  pb::GenerateResponse res;
  res.set_id(j.value("id", ""));
  for (const json& c : j.value("choices", json::array())) {
    pb::Choice* p = res.add_choices();
    p->set_index(c.value("index", 0));
    const json& d = c.contains("delta") ? c["delta"] : (c.contains("message") ? c["message"] : c);
    if (d.contains("content") && d["content"].is_string()) p->set_text(d["content"].get<std::string>());
    if (c.contains("text") && c["text"].is_string()) p->set_text(c["text"].get<std::string>());
    if (d.contains("reasoning") && d["reasoning"].is_string()) p->set_reasoning(d["reasoning"].get<std::string>());
    if (d.contains("tool_calls")) {
      int k = 0;
      for (const json& t : d["tool_calls"]) {
        pb::ToolCallDelta* tc = p->add_tool_calls();
        tc->set_index(t.value("index", k++));
        tc->set_id(t.value("id", ""));
        if (t.contains("function")) {
          tc->set_name(t["function"].value("name", ""));
          tc->set_arguments(t["function"].value("arguments", ""));
        }
      }
    }
    if (c.contains("token_ids")) {
      for (const json& t : c["token_ids"]) p->add_token_ids(t.get<int32_t>());
    }
    if (c.contains("logprobs") && c["logprobs"].is_object() && c["logprobs"].contains("content")) {
      for (const json& e : c["logprobs"]["content"]) {
        pb::SampledLogprob* s = p->add_logprobs();
        s->set_token(e.value("id", -1));
        s->set_text(e.value("token", ""));
        s->set_logprob(e.value("logprob", 0.0f));
        for (const json& t : e.value("top_logprobs", json::array())) {
          pb::TokenLogprob* tl = s->add_top();
          tl->set_token(t.value("id", -1));
          tl->set_text(t.value("token", ""));
          tl->set_logprob(t.value("logprob", 0.0f));
        }
      }
    }
    p->set_finish_reason(ToFinish(c.contains("finish_reason") ? c["finish_reason"] : json()));
  }
  if (j.contains("usage") && j["usage"].is_object()) {
    res.mutable_usage()->set_prompt_tokens(j["usage"].value("prompt_tokens", 0));
    res.mutable_usage()->set_completion_tokens(j["usage"].value("completion_tokens", 0));
    res.mutable_usage()->set_total_tokens(j["usage"].value("total_tokens", 0));
    if (j["usage"].contains("prompt_tokens_details")) {
      res.mutable_usage()->set_cached_prompt_tokens(j["usage"]["prompt_tokens_details"].value("cached_tokens", 0));
    }
  }
  if (j.contains("prompt_token_ids")) {
    for (const json& t : j["prompt_token_ids"]) res.add_prompt_token_ids(t.get<int32_t>());
  }
  return res;
}

// The sink of one call: a queue the handler thread drains.
class CallSink : public CompletionSink {
 public:
  void Post(std::function<void()> fn) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return;
      tasks_.push_back(std::move(fn));
    }
    cv_.notify_one();
  }
  void OnChunk(const json& chunk) override { outputs_.push_back(chunk); }
  void OnDone(const json& response) override {
    if (!response.is_null()) outputs_.push_back(response);
    done_ = true;
  }
  void OnError(const ApiError& e) override {
    error_ = e;
    done_ = true;
  }
  // Runs queued tasks (waiting up to `wait`); false if none came.
  bool RunSome(std::chrono::milliseconds wait) {
    std::deque<std::function<void()>> tasks;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, wait, [&] { return !tasks_.empty(); });
      tasks.swap(tasks_);
    }
    for (auto& t : tasks) t();
    return !tasks.empty();
  }
  void Close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    tasks_.clear();
  }

  std::vector<json> outputs_;  // handler thread only
  bool done_ = false;
  std::optional<ApiError> error_;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool closed_ = false;
};

}  // namespace

GrpcApi::GrpcApi(ApiContext* api, std::string api_key) : api_(api), api_key_(std::move(api_key)) {}

GrpcApi::~GrpcApi() { Stop(); }

absl::StatusOr<int> GrpcApi::Start(const std::string& address) {
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
  b.RegisterService(this);
  b.SetMaxReceiveMessageSize(8 << 20);  // as the HTTP body limit
  server_ = b.BuildAndStart();
  if (!server_ || port == 0) return absl::UnavailableError(absl::StrCat("cannot listen on ", address));
  return port;
}

void GrpcApi::Stop() {
  if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server_.reset();
}

grpc::Status GrpcApi::Authorize(grpc::ServerContext* ctx) const {
  if (api_key_.empty()) return grpc::Status::OK;
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end() || std::string(it->second.data(), it->second.size()) != "Bearer " + api_key_) {
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "Incorrect API key provided.");
  }
  return grpc::Status::OK;
}

grpc::Status GrpcApi::Run(grpc::ServerContext* ctx, const pb::GenerateRequest& req, bool stream,
                          const std::function<bool(const json&)>& on_output) {
  if (grpc::Status st = Authorize(ctx); !st.ok()) return st;
  bool chat = false;
  auto body = ToOpenAi(req, stream, &chat);
  if (!body.ok()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(body.status().message()));
  auto sink = std::make_shared<CallSink>();
  std::shared_ptr<Completion> c;
  CompletionOptions opts;
  opts.token_id_logprobs = true;
  if (auto err = Completion::Start(api_, chat, *body, sink, &c, opts)) return ToGrpc(*err);
  while (true) {
    for (const json& o : sink->outputs_) {
      if (!on_output(o)) {  // the client went away
        c->Abort();
        sink->Close();
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
    }
    sink->outputs_.clear();
    if (sink->done_) break;
    if (ctx->IsCancelled()) {
      c->Abort();
      sink->Close();
      return grpc::Status(grpc::StatusCode::CANCELLED, "the client cancelled the call");
    }
    sink->RunSome(std::chrono::milliseconds(100));
  }
  sink->Close();
  if (sink->error_) return ToGrpc(*sink->error_);
  return grpc::Status::OK;
}

grpc::Status GrpcApi::Generate(grpc::ServerContext* ctx, const pb::GenerateRequest* req,
                               grpc::ServerWriter<pb::GenerateResponse>* writer) {
  return Run(ctx, *req, true, [&](const json& chunk) { return writer->Write(ToProto(chunk)); });
}

grpc::Status GrpcApi::GenerateUnary(grpc::ServerContext* ctx, const pb::GenerateRequest* req,
                                    pb::GenerateResponse* res) {
  return Run(ctx, *req, false, [&](const json& response) {
    *res = ToProto(response);
    return true;
  });
}

grpc::Status GrpcApi::Tokenize(grpc::ServerContext* ctx, const pb::TokenizeRequest* req, pb::TokenizeResponse* res) {
  if (grpc::Status st = Authorize(ctx); !st.ok()) return st;
  const auto ids = req->allow_special() ? api_->tokenizer->EncodeWithSpecials(req->text())
                                        : api_->tokenizer->EncodeOrdinary(req->text());
  res->mutable_ids()->Add(ids.begin(), ids.end());
  return grpc::Status::OK;
}

grpc::Status GrpcApi::Detokenize(grpc::ServerContext* ctx, const pb::DetokenizeRequest* req,
                                 pb::DetokenizeResponse* res) {
  if (grpc::Status st = Authorize(ctx); !st.ok()) return st;
  auto text = api_->tokenizer->Decode(std::vector<int32_t>(req->ids().begin(), req->ids().end()));
  if (!text.ok()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::string(text.status().message()));
  res->set_text(text::SanitizeUtf8(*text));
  return grpc::Status::OK;
}

grpc::Status GrpcApi::ListModels(grpc::ServerContext* ctx, const pb::ListModelsRequest*, pb::ListModelsResponse* res) {
  if (grpc::Status st = Authorize(ctx); !st.ok()) return st;
  pb::Model* m = res->add_models();
  m->set_id(api_->served_model_name);
  m->set_max_model_len(api_->pool->max_model_len());
  return grpc::Status::OK;
}

grpc::Status GrpcApi::Health(grpc::ServerContext*, const pb::HealthRequest*, pb::HealthResponse* res) {
  const auto groups = api_->pool->Status();
  int up = 0;
  for (const auto& g : groups) up += g.up ? 1 : 0;
  res->set_ready(up > 0);
  res->set_groups_up(up);
  res->set_groups_total(static_cast<int>(groups.size()));
  return grpc::Status::OK;
}

}  // namespace moeserve::router
