#include "router/grpc_api.h"

#include <condition_variable>
#include <deque>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "router/openai_api.h"

namespace moeserve::router {
namespace {

namespace pb = moeserve::v1;

grpc::Status ToGrpc(const ApiError& e) {
  return grpc::Status(static_cast<grpc::StatusCode>(StatusCodeOf(e)),
                      e.param.empty() ? e.message : absl::StrCat(e.message, " (param: ", e.param, ")"));
}


pb::FinishReason ToFinish(const std::string& s) {
  if (s == "length") return pb::FINISH_REASON_LENGTH;
  if (s == "tool_calls") return pb::FINISH_REASON_TOOL_CALLS;
  return pb::FINISH_REASON_STOP;
}

void SetLogprob(const text::Tokenizer& tok, const TokenLogprob& lp, pb::SampledLogprob* s) {
  auto text = [&](int32_t t) {
    const std::string* p = tok.TokenBytes(t);
    return text::SanitizeUtf8(p ? *p : std::string());
  };
  s->set_token(lp.token);
  s->set_text(text(lp.token));
  s->set_logprob(lp.logprob);
  for (const auto& [t, l] : lp.top) {
    pb::TokenLogprob* tl = s->add_top();
    tl->set_token(t);
    tl->set_text(text(t));
    tl->set_logprob(l);
  }
}

void SetUsage(const GenerationUsage& u, pb::Usage* p) {
  p->set_prompt_tokens(u.prompt_tokens);
  p->set_completion_tokens(u.completion_tokens);
  p->set_total_tokens(u.prompt_tokens + u.completion_tokens);
  p->set_cached_prompt_tokens(u.cached_tokens);
}

// One streamed event as a GenerateResponse.
pb::GenerateResponse EventProto(const ApiContext& ctx, const Generation& g, const GenerationEvent& e) {
  using K = GenerationEvent::Kind;
  pb::GenerateResponse res;
  res.set_id(g.id());
  pb::Choice* c = res.add_choices();
  c->set_index(e.choice);
  c->mutable_token_ids()->Add(e.token_ids.begin(), e.token_ids.end());
  switch (e.kind) {
    case K::kContent: c->set_text(e.text); break;
    case K::kReasoning: c->set_reasoning(e.text); break;
    case K::kToolCallBegin: {
      pb::ToolCallDelta* t = c->add_tool_calls();
      t->set_index(e.tool_index);
      t->set_id(e.call_id);
      t->set_name(e.tool_name);
      break;
    }
    case K::kToolCallArguments: {
      pb::ToolCallDelta* t = c->add_tool_calls();
      t->set_index(e.tool_index);
      t->set_arguments(e.text);
      break;
    }
    case K::kFinish: c->set_finish_reason(ToFinish(e.text)); break;
  }
  if (e.logprob) SetLogprob(*ctx.tokenizer, *e.logprob, c->add_logprobs());
  return res;
}

// The whole response (unary).
pb::GenerateResponse ResultProto(const ApiContext& ctx, const Generation& g) {
  pb::GenerateResponse res;
  res.set_id(g.id());
  for (const ChoiceResult& r : g.results()) {
    pb::Choice* c = res.add_choices();
    c->set_index(r.index);
    c->set_text(r.content);
    c->set_reasoning(r.reasoning);
    int k = 0;
    for (const ToolCallResult& t : r.calls) {
      pb::ToolCallDelta* tc = c->add_tool_calls();
      tc->set_index(k++);
      tc->set_id(t.id);
      tc->set_name(t.name);
      tc->set_arguments(t.arguments);
    }
    c->mutable_token_ids()->Add(r.tokens.begin(), r.tokens.end());
    if (g.spec().sampling.logprobs()) {
      for (const TokenLogprob& lp : r.logprobs) SetLogprob(*ctx.tokenizer, lp, c->add_logprobs());
    }
    c->set_finish_reason(ToFinish(r.finish_reason));
  }
  SetUsage(g.usage(), res.mutable_usage());
  res.mutable_prompt_token_ids()->Add(g.prompt().begin(), g.prompt().end());
  return res;
}

// The sink of one call: a queue the handler thread drains; outputs are
// protos ready to write.
class CallSink : public GenerationSink {
 public:
  CallSink(const ApiContext& ctx, bool stream) : ctx_(ctx), stream_(stream) {}
  void Post(std::function<void()> fn) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (closed_) return;
      tasks_.push_back(std::move(fn));
    }
    cv_.notify_one();
  }
  void OnStart(const Generation&) override {}
  void OnEvent(const Generation& g, const GenerationEvent& e) override {
    if (stream_) outputs_.push_back(EventProto(ctx_, g, e));
  }
  void OnDone(const Generation& g) override {
    if (stream_) {
      pb::GenerateResponse last;
      last.set_id(g.id());
      SetUsage(g.usage(), last.mutable_usage());
      outputs_.push_back(std::move(last));
    } else {
      outputs_.push_back(ResultProto(ctx_, g));
    }
    done_ = true;
  }
  void OnError(const Generation&, const ApiError& e) override {
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

  std::vector<pb::GenerateResponse> outputs_;  // handler thread only
  bool done_ = false;
  std::optional<ApiError> error_;

 private:
  const ApiContext& ctx_;
  bool stream_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool closed_ = false;
};

}  // namespace

std::optional<ApiError> GenerateRequestToSpec(const ApiContext& ctx, const pb::GenerateRequest& r,
                                              GenerationSpec* spec) {
  spec->model = r.model();
  switch (r.input_case()) {
    case pb::GenerateRequest::kText:
      spec->chat = false;
      spec->prompt = ctx.tokenizer->EncodeWithSpecials(r.text());
      break;
    case pb::GenerateRequest::kTokenIds:
      spec->chat = false;
      spec->prompt.assign(r.token_ids().ids().begin(), r.token_ids().ids().end());
      break;
    case pb::GenerateRequest::kChat: {
      spec->chat = true;
      for (const pb::ChatMessage& m : r.chat().messages()) {
        text::ChatTurn t{m.role(), m.content(), m.reasoning_content(), {}, m.tool_call_id(), m.name()};
        for (const pb::ToolCall& c : m.tool_calls()) t.tool_calls.push_back({c.id(), c.name(), c.arguments()});
        spec->messages.push_back(std::move(t));
      }
      for (const pb::Tool& t : r.chat().tools()) {
        text::ToolDescription d;
        d.name = t.name();
        d.description = t.description();
        if (!t.parameters_json().empty()) {
          // The HTTP APIs refuse bodies nested deeper than this before parsing;
          // the schema renderer and the grammar compiler recurse on it.
          if (JsonDepth(t.parameters_json(), kMaxJsonDepth + 1) > kMaxJsonDepth) {
            return BadRequest(absl::StrCat("tool ", t.name(), ": parameters_json nests deeper than ", kMaxJsonDepth,
                                           " levels"), "tools");
          }
          ordered_json p = ordered_json::parse(t.parameters_json(), nullptr, false);
          if (p.is_discarded() || !p.is_object()) {
            return BadRequest(absl::StrCat("tool ", t.name(), ": parameters_json is not a JSON object"), "tools");
          }
          d.parameters = std::move(p);
        }
        spec->tools.push_back(std::move(d));
      }
      if (!r.chat().reasoning_effort().empty()) spec->reasoning_effort = r.chat().reasoning_effort();
      break;
    }
    default: return BadRequest("one of text, token_ids or chat is required", "input");
  }
  if (r.has_max_tokens()) spec->max_tokens = r.max_tokens();
  worker::v1::SamplingParams& sp = spec->sampling;
  sp.set_temperature(r.has_temperature() ? r.temperature() : 1.0f);
  sp.set_top_p(r.has_top_p() ? r.top_p() : 1.0f);
  if (r.has_top_k()) sp.set_top_k(r.top_k() < 0 ? 0 : r.top_k());
  if (r.has_min_p()) sp.set_min_p(r.min_p());
  if (r.has_presence_penalty()) sp.set_presence_penalty(r.presence_penalty());
  if (r.has_frequency_penalty()) sp.set_frequency_penalty(r.frequency_penalty());
  if (r.has_repetition_penalty()) sp.set_repetition_penalty(r.repetition_penalty());
  *sp.mutable_logit_bias() = r.logit_bias();
  if (r.has_seed()) {
    sp.set_has_seed(true);
    sp.set_seed(static_cast<uint64_t>(r.seed()));
  }
  spec->stops.assign(r.stop().begin(), r.stop().end());
  spec->stop_token_ids.assign(r.stop_token_ids().begin(), r.stop_token_ids().end());
  if (spec->chat && r.top_logprobs() > 0 && !r.logprobs()) {
    return BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs");
  }
  sp.set_logprobs(r.logprobs() || (!spec->chat && r.top_logprobs() != 0));
  sp.set_top_logprobs(r.top_logprobs());
  spec->n = r.n() == 0 ? 1 : r.n();
  return std::nullopt;
}

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
                          const std::function<bool(const pb::GenerateResponse&)>& on_output) {
  if (grpc::Status st = Authorize(ctx); !st.ok()) return st;
  GenerationSpec spec;
  if (auto err = GenerateRequestToSpec(*api_, req, &spec)) return ToGrpc(*err);
  auto sink = std::make_shared<CallSink>(*api_, stream);
  std::shared_ptr<Generation> g;
  if (auto err = Generation::Start(api_, std::move(spec), NextResponseId(req.has_chat() ? "chatcmpl-" : "cmpl-"), sink,
                                   &g)) {
    return ToGrpc(*err);
  }
  while (true) {
    for (const pb::GenerateResponse& o : sink->outputs_) {
      if (!on_output(o)) {  // the client went away
        g->Abort();
        sink->Close();
        return grpc::Status(grpc::StatusCode::CANCELLED, "the client went away");
      }
    }
    sink->outputs_.clear();
    if (sink->done_) break;
    if (ctx->IsCancelled()) {
      g->Abort();
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
  return Run(ctx, *req, true, [&](const pb::GenerateResponse& r) { return writer->Write(r); });
}

grpc::Status GrpcApi::GenerateUnary(grpc::ServerContext* ctx, const pb::GenerateRequest* req,
                                    pb::GenerateResponse* res) {
  return Run(ctx, *req, false, [&](const pb::GenerateResponse& r) {
    *res = r;
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
  if (api_->adapters) {
    for (const auto& a : api_->adapters->List()) {
      pb::Model* am = res->add_models();
      am->set_id(a->name);
      am->set_max_model_len(api_->pool->max_model_len());
      am->set_parent(api_->served_model_name);
    }
  }
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
