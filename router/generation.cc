#include "router/generation.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace moeserve::router {

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

// One of the n choices of a request: its own request id, text state and output.
struct Generation::Choice {
  int index = 0;
  int64_t id = -1;
  bool finished = false;
  std::vector<int32_t> pending_ids;  // sampled since this choice's last event
  std::unique_ptr<text::HarmonyStreamParser> parser;
  std::unique_ptr<text::IncrementalDecoder> decoder;
  std::unique_ptr<text::StopMatcher> stop;
  std::map<int, std::string> call_ids;
  bool stopped_by_string = false;
  bool token_gave_reasoning = false;
  int64_t cached_tokens = -1;  // prompt tokens found in the prefix cache (-1: not scheduled yet)
  std::string finish_hint;
  std::optional<TokenLogprob> pending_logprob;  // of the token being applied
  std::chrono::steady_clock::time_point last_token;
  ChoiceResult result;
};

Generation::Generation(ApiContext* ctx, GenerationSpec spec, std::string id, std::shared_ptr<GenerationSink> sink)
    : ctx_(ctx), spec_(std::move(spec)), id_(std::move(id)), sink_(std::move(sink)) {}

Generation::~Generation() = default;

std::optional<ApiError> DecodeJsonSchemaFormat(const ordered_json& js, const std::string& param, ResponseFormat* out) {
  auto bad = [&](const std::string& why) { return BadRequest(absl::StrCat("'", param, "': ", why), param); };
  const auto name = text::StringField(js, "name");
  if (!name || name->empty() || name->size() > 64 ||
      !std::all_of(name->begin(), name->end(), [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; })) {
    return bad("'name' must be 1 to 64 characters of a-z, A-Z, 0-9, _ and -");
  }
  const auto description = text::StringField(js, "description", "");
  if (!description) return bad("'description' must be a string");
  if (!js.contains("schema") || !js["schema"].is_object()) return bad("'schema' must be a JSON Schema object");
  if (js.contains("strict") && !js["strict"].is_null() && !js["strict"].is_boolean()) return bad("'strict' must be a boolean");
  out->type = ResponseFormat::Type::kJsonSchema;
  out->name = *name;
  out->description = *description;
  out->schema = js["schema"];
  out->strict = js.contains("strict") && js["strict"] == true;
  return std::nullopt;
}

std::optional<ApiError> Generation::Prepare(const ApiContext& ctx, const GenerationSpec& spec, int64_t max_model_len,
                                            Prepared* out) {
  const RequestLimits& lim = ctx.limits;
  const text::Tokenizer& tok = *ctx.tokenizer;
  GenerationRequest& gr = out->request;
  if (!spec.model.empty() && spec.model != ctx.served_model_name) {
    if (ctx.adapters) gr.adapter = ctx.adapters->Find(spec.model);
    if (!gr.adapter) {
      return ApiError{404, absl::StrCat("The model `", spec.model, "` does not exist."), "invalid_request_error",
                      "model", "model_not_found"};
    }
    gr.cache_key = gr.adapter->cache_key;
  }
  if (!spec.chat && spec.response_format.type != ResponseFormat::Type::kText) {
    return BadRequest("a JSON response format needs a chat request", "response_format");
  }
  if (spec.chat) {
    if (static_cast<int64_t>(spec.messages.size()) > lim.max_messages) {
      return BadRequest(absl::StrCat("'messages' holds ", spec.messages.size(), " messages; the limit is ",
                                     lim.max_messages), "messages");
    }
    if (static_cast<int64_t>(spec.tools.size()) > lim.max_tools) {
      return BadRequest(absl::StrCat("'tools' holds ", spec.tools.size(), " tools; the limit is ", lim.max_tools),
                        "tools");
    }
    // tool_choice: "none" hides the tools from the model; with "auto" a call
    // must name a declared function (and follow its schema when it is
    // strict); "required" or a named function makes the reply such a call.
    // The reply's grammar (router/grammar/reply_grammar.h) holds the rules.
    std::vector<text::ToolDescription> none;
    const std::vector<text::ToolDescription>& tools = spec.tool_choice == ToolChoice::kNone ? none : spec.tools;
    grammar::ReplyRules rules;
    rules.tools = tools;
    if (!tools.empty()) rules.calls = grammar::ReplyRules::Calls::kAuto;
    if (spec.tool_choice == ToolChoice::kRequired) {
      if (spec.tools.empty()) return BadRequest("'tool_choice' \"required\" needs 'tools'", "tool_choice");
      rules.calls = grammar::ReplyRules::Calls::kRequired;
    } else if (spec.tool_choice == ToolChoice::kNamed) {
      const bool known = std::any_of(spec.tools.begin(), spec.tools.end(),
                                     [&](const text::ToolDescription& t) { return t.name == spec.tool_choice_name; });
      if (!known) {
        return BadRequest(absl::StrCat("'tool_choice' names function '", spec.tool_choice_name,
                                       "', which is not in 'tools'"), "tool_choice");
      }
      rules.calls = grammar::ReplyRules::Calls::kNamed;
      rules.named = spec.tool_choice_name;
    }
    text::ChatRenderOptions o;
    o.current_date = ctx.current_date;
    o.reasoning_effort = spec.reasoning_effort;
    const ResponseFormat& rf = spec.response_format;
    if (rf.type == ResponseFormat::Type::kJsonObject) rules.final = grammar::ReplyRules::Final::kJsonObject;
    if (rf.type == ResponseFormat::Type::kJsonSchema) {
      rules.final = grammar::ReplyRules::Final::kJsonSchema;
      rules.final_schema = rf.schema;
      o.response_format = text::ResponseFormatSection{rf.name, rf.description, rf.schema.dump()};
    }
    if (ctx.grammars) {
      auto g = ctx.grammars->Get(rules);
      if (!g.ok()) {
        const bool tool = absl::StartsWith(g.status().message(), "tools");
        return BadRequest(std::string(g.status().message()), tool ? "tools" : "response_format");
      }
      gr.grammar = std::move(*g);
    } else if (!rules.unconstrained()) {
      return BadRequest("structured output is not available on this server", "response_format");
    }
    auto ids = text::RenderChat(tok, spec.messages, tools, o);
    if (!ids.ok()) return FromStatus(ids.status());
    gr.prompt = std::move(*ids);
    gr.stop_token_ids = text::AssistantStopTokens(tok, ctx.eos_token_ids);
  } else {
    if (spec.prompt.empty()) return BadRequest("the prompt is empty", "prompt");
    for (int32_t t : spec.prompt) {
      if (t < 0 || t >= tok.vocab_size()) {
        return BadRequest(absl::StrCat("token id ", t, " is outside the vocabulary of ", tok.vocab_size()), "prompt");
      }
    }
    gr.prompt = spec.prompt;
    gr.stop_token_ids = ctx.eos_token_ids;
  }
  if (spec.n < 1 || spec.n > lim.max_n) return BadRequest(absl::StrCat("'n' must be in [1, ", lim.max_n, "]"), "n");
  if (static_cast<int64_t>(spec.stops.size()) > lim.max_stop) {
    return BadRequest(absl::StrCat("at most ", lim.max_stop, " stop strings"), "stop");
  }
  for (const auto& s : spec.stops) {
    if (s.empty()) return BadRequest("stop strings must not be empty", "stop");
  }
  if (spec.stop_token_ids.size() > 64) return BadRequest("at most 64 stop token ids", "stop_token_ids");
  for (int32_t t : spec.stop_token_ids) {
    if (t < 0 || t >= tok.vocab_size()) {
      return BadRequest("'stop_token_ids' must be token ids of the vocabulary", "stop_token_ids");
    }
    gr.stop_token_ids.push_back(t);
  }
  if (spec.sampling.top_logprobs() < 0 || spec.sampling.top_logprobs() > lim.max_top_logprobs) {
    return BadRequest(absl::StrCat("'top_logprobs' must be in [0, ", lim.max_top_logprobs, "]"), "top_logprobs");
  }
  // Sampling ranges (each codec has checked its own fields; this holds for all).
  const worker::v1::SamplingParams& sp = spec.sampling;
  if (!(sp.temperature() >= 0 && sp.temperature() <= 2)) return BadRequest("'temperature' must be in [0, 2]", "temperature");
  if (!(sp.top_p() > 0 && sp.top_p() <= 1)) return BadRequest("'top_p' must be in (0, 1]", "top_p");
  if (!(sp.min_p() >= 0 && sp.min_p() <= 1)) return BadRequest("'min_p' must be in [0, 1]", "min_p");
  if (sp.top_k() < 0) return BadRequest("'top_k' must not be negative", "top_k");
  if (!(sp.presence_penalty() >= -2 && sp.presence_penalty() <= 2)) {
    return BadRequest("'presence_penalty' must be in [-2, 2]", "presence_penalty");
  }
  if (!(sp.frequency_penalty() >= -2 && sp.frequency_penalty() <= 2)) {
    return BadRequest("'frequency_penalty' must be in [-2, 2]", "frequency_penalty");
  }
  if (!(sp.repetition_penalty() >= 0 && sp.repetition_penalty() <= 10)) {
    return BadRequest("'repetition_penalty' must be in [0, 10]", "repetition_penalty");
  }
  if (sp.logit_bias_size() > kMaxLogitBias) {
    return BadRequest(absl::StrCat("'logit_bias' holds ", sp.logit_bias_size(), " entries; the limit is ", kMaxLogitBias),
                      "logit_bias");
  }
  for (const auto& [t, b] : sp.logit_bias()) {
    if (t < 0 || t >= tok.vocab_size()) {
      return BadRequest(absl::StrCat("'logit_bias' names token ", t, ", outside the vocabulary of ", tok.vocab_size()),
                        "logit_bias");
    }
    if (!(b >= -100 && b <= 100)) return BadRequest("'logit_bias' values must be in [-100, 100]", "logit_bias");
  }
  if (spec.max_tokens && *spec.max_tokens < 1) return BadRequest("'max_tokens' must be at least 1", "max_tokens");
  gr.max_tokens = spec.max_tokens.value_or(
      std::max<int64_t>(1, max_model_len - static_cast<int64_t>(gr.prompt.size())));
  gr.sampling = spec.sampling;
  return std::nullopt;
}

std::optional<ApiError> Generation::Start(ApiContext* ctx, GenerationSpec spec, std::string id,
                                          std::shared_ptr<GenerationSink> sink, std::shared_ptr<Generation>* out) {
  Prepared prep;
  if (auto err = Prepare(*ctx, spec, ctx->backend->max_model_len(), &prep)) return err;
  auto g = std::make_shared<Generation>(ctx, std::move(spec), std::move(id), std::move(sink));
  g->prompt_ = prep.request.prompt;
  g->model_name_ = prep.request.adapter ? prep.request.adapter->name : ctx->served_model_name;
  if (prep.request.sampling.prompt_logprobs()) g->prompt_logprobs_.resize(g->prompt_.size());
  g->created_ = std::chrono::duration_cast<std::chrono::seconds>(
                    std::chrono::system_clock::now().time_since_epoch()).count();
  g->start_ = std::chrono::steady_clock::now();
  std::vector<std::string> stops = g->spec_.stops;
  for (int i = 0; i < g->spec_.n; ++i) {
    auto ch = std::make_unique<Choice>();
    ch->index = i;
    ch->result.index = i;
    if (g->spec_.chat) ch->parser = std::make_unique<text::HarmonyStreamParser>(*ctx->tokenizer);
    else ch->decoder = std::make_unique<text::IncrementalDecoder>(*ctx->tokenizer);
    ch->stop = std::make_unique<text::StopMatcher>(stops);
    g->choices_.push_back(std::move(ch));
  }
  // Submit every choice (seed + index for seeded requests, as vLLM does), or none.
  for (auto& ch : g->choices_) {
    GenerationRequest r = prep.request;
    if (r.sampling.has_seed()) r.sampling.set_seed(r.sampling.seed() + static_cast<uint64_t>(ch->index));
    Choice* cp = ch.get();
    GenerationCallbacks cb;
    cb.on_scheduled = [g, cp](int64_t cached) { g->sink_->Post([cp, cached] { cp->cached_tokens = cached; }); };
    cb.on_token = [g, cp](const worker::v1::SampleOutput& s) { g->sink_->Post([g, cp, s] { g->OnToken(*cp, s); }); };
    if (!g->prompt_logprobs_.empty()) {
      cb.on_prompt_logprobs = [g](const worker::v1::PromptLogprobs& pl) {
        g->sink_->Post([g, pl] {
          for (int k = 0; k < pl.tokens_size(); ++k) {
            const size_t pos = static_cast<size_t>(pl.first_position() + k);
            if (pos >= g->prompt_logprobs_.size()) break;
            TokenLogprob lp;
            lp.token = pl.tokens(k).token();
            lp.logprob = pl.tokens(k).logprob();
            for (const auto& t : pl.tokens(k).top_logprobs()) lp.top.emplace_back(t.token(), t.logprob());
            g->prompt_logprobs_[pos] = std::move(lp);
          }
        });
      };
    }
    cb.on_finish = [g, cp](RequestStatus st, const std::string& why) {
      g->sink_->Post([g, cp, st, why] { g->OnFinish(*cp, st, why); });
    };
    auto rid = ctx->backend->Submit(std::move(r), std::move(cb));
    if (!rid.ok()) {
      g->failed_ = true;  // callbacks of the choices already submitted are ignored
      for (auto& other : g->choices_) {
        if (other->id >= 0) ctx->backend->Abort(other->id);
      }
      return FromStatus(rid.status());
    }
    ch->id = *rid;
  }
  g->sink_->OnStart(*g);
  *out = g;
  return std::nullopt;
}

void Generation::Abort() {
  if (done_) return;
  done_ = true;
  for (auto& ch : choices_) {
    if (!ch->finished && ch->id >= 0) ctx_->backend->Abort(ch->id);
  }
}

void Generation::Emit(Choice& c, GenerationEvent e) {
  e.choice = c.index;
  e.token_ids = std::move(c.pending_ids);
  c.pending_ids.clear();
  sink_->OnEvent(*this, e);
}

// Content passes through the stop-string matcher; a match ends the choice.
void Generation::EmitContent(Choice& c, const std::string& raw) {
  const std::string text = c.stop->Push(raw);
  // Logprobs belong to the tokens that produced content (not to harmony's headers).
  std::optional<TokenLogprob> lp;
  if (c.pending_logprob && !raw.empty()) {
    lp = std::move(c.pending_logprob);
    c.pending_logprob.reset();
    c.result.logprobs.push_back(*lp);
  }
  if (!text.empty() || lp) {
    c.result.content += text;
    GenerationEvent e;
    e.kind = GenerationEvent::Kind::kContent;
    e.text = text;
    e.logprob = std::move(lp);
    Emit(c, std::move(e));
  }
  if (c.stop->stopped() && !c.stopped_by_string) {
    c.stopped_by_string = true;
    ctx_->backend->Finish(c.id, RequestStatus::kFinishedStopped);  // on_finish follows
  }
}

void Generation::Apply(Choice& c, const std::vector<text::HarmonyDelta>& ds) {
  for (const auto& d : ds) {
    if (c.stopped_by_string) return;
    GenerationEvent e;
    switch (d.kind) {
      case text::HarmonyDelta::Kind::kContent: EmitContent(c, d.text); break;
      case text::HarmonyDelta::Kind::kReasoning:
        c.result.reasoning += d.text;
        c.token_gave_reasoning = true;
        e.kind = GenerationEvent::Kind::kReasoning;
        e.text = d.text;
        Emit(c, std::move(e));
        break;
      case text::HarmonyDelta::Kind::kToolCallBegin: {
        const std::string call_id = absl::StrCat("call_", id_, "_", c.index, "_", d.tool_index);
        c.call_ids[d.tool_index] = call_id;
        c.result.calls.push_back({call_id, d.tool_name, ""});
        e.kind = GenerationEvent::Kind::kToolCallBegin;
        e.tool_name = d.tool_name;
        e.tool_index = d.tool_index;
        e.call_id = call_id;
        Emit(c, std::move(e));
        break;
      }
      case text::HarmonyDelta::Kind::kToolCallArguments:
        if (!c.result.calls.empty()) c.result.calls.back().arguments += d.text;
        e.kind = GenerationEvent::Kind::kToolCallArguments;
        e.text = d.text;
        e.tool_index = d.tool_index;
        e.call_id = c.call_ids[d.tool_index];
        Emit(c, std::move(e));
        break;
      case text::HarmonyDelta::Kind::kFinish: c.finish_hint = d.text; break;
    }
  }
}

void Generation::OnToken(Choice& c, const worker::v1::SampleOutput& s) {
  if (failed_ || done_ || c.finished || c.stopped_by_string) return;
  c.pending_logprob.reset();
  if (spec_.sampling.logprobs()) {
    TokenLogprob lp{s.token(), s.logprob(), {}};
    for (const auto& t : s.top_logprobs()) lp.top.emplace_back(t.token(), t.logprob());
    c.pending_logprob = std::move(lp);
  }
  const int32_t token = s.token();
  const auto now = std::chrono::steady_clock::now();
  if (c.result.tokens.empty()) {
    ctx_->metrics->FirstToken(std::chrono::duration<double>(now - start_).count());
    if (c.index == 0) first_token_ = now;
  } else {
    ctx_->metrics->InterToken(std::chrono::duration<double>(now - c.last_token).count());
  }
  c.last_token = now;
  c.result.tokens.push_back(token);
  c.pending_ids.push_back(token);
  if (spec_.chat) {
    std::vector<text::HarmonyDelta> ds;
    c.parser->Push(token, &ds);
    c.token_gave_reasoning = false;
    Apply(c, ds);
    if (c.token_gave_reasoning) ++c.result.reasoning_tokens;
  } else if (std::find(ctx_->eos_token_ids.begin(), ctx_->eos_token_ids.end(), token) == ctx_->eos_token_ids.end()) {
    auto t = c.decoder->Add(token);
    if (t.ok()) EmitContent(c, *t);
  }
}

GenerationUsage Generation::usage() const {
  GenerationUsage u;
  u.prompt_tokens = static_cast<int64_t>(prompt_.size());
  // The prompt is shared by the choices: its cached part is what the first
  // lookup found (later choices reuse what the first computed).
  int64_t cached = -1;
  for (const auto& c : choices_) {
    u.completion_tokens += static_cast<int64_t>(c->result.tokens.size());
    u.reasoning_tokens += c->result.reasoning_tokens;
    if (c->cached_tokens >= 0) cached = cached < 0 ? c->cached_tokens : std::min(cached, c->cached_tokens);
  }
  u.cached_tokens = std::max<int64_t>(cached, 0);
  return u;
}

int64_t Generation::prompt_eval_ns() const {
  const auto first = first_token_ == std::chrono::steady_clock::time_point{} ? end_ : first_token_;
  return std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::nanoseconds>(first - start_).count());
}

int64_t Generation::total_ns() const {
  const auto end = end_ == std::chrono::steady_clock::time_point{} ? std::chrono::steady_clock::now() : end_;
  return std::chrono::duration_cast<std::chrono::nanoseconds>(end - start_).count();
}

void Generation::OnFinish(Choice& c, RequestStatus st, const std::string& why) {
  if (failed_ || c.finished) return;
  c.finished = true;
  ++num_finished_;
  const int64_t prompt = static_cast<int64_t>(prompt_.size());
  const int64_t completion = static_cast<int64_t>(c.result.tokens.size());
  const double e2e = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  if (!c.stopped_by_string && (st == RequestStatus::kFinishedError || st == RequestStatus::kFinishedAborted)) {
    ctx_->metrics->RequestFinished(st == RequestStatus::kFinishedError ? "error" : "abort", prompt, completion, e2e);
    if (model_name_ != ctx_->served_model_name) {
      ctx_->metrics->LoraRequestFinished(model_name_, st == RequestStatus::kFinishedError ? "error" : "abort", prompt,
                                         completion);
    }
    if (done_) return;  // the client is gone
    // A choice that cannot finish fails the request: the others are aborted.
    failed_ = done_ = true;
    for (auto& other : choices_) {
      if (!other->finished) ctx_->backend->Abort(other->id);
    }
    end_ = std::chrono::steady_clock::now();
    sink_->OnError(*this, ApiError{500, why.empty() ? "the request was aborted" : why, "server_error"});
    return;
  }
  if (done_) return;
  std::string finish = "stop";
  if (!c.stopped_by_string) {
    if (spec_.chat) {
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
      c.result.content += tail;
      GenerationEvent e;
      e.kind = GenerationEvent::Kind::kContent;
      e.text = tail;
      Emit(c, std::move(e));
    }
    if (st == RequestStatus::kFinishedLength) finish = "length";
    if (spec_.chat && c.finish_hint == "tool_calls") finish = "tool_calls";
  }
  c.result.finish_reason = finish;
  ctx_->metrics->RequestFinished(finish, prompt, completion, e2e);
  if (model_name_ != ctx_->served_model_name) ctx_->metrics->LoraRequestFinished(model_name_, finish, prompt, completion);
  GenerationEvent e;
  e.kind = GenerationEvent::Kind::kFinish;
  e.text = finish;
  Emit(c, std::move(e));
  if (num_finished_ == static_cast<int>(choices_.size())) Finish();
}

void Generation::Finish() {
  done_ = true;
  end_ = std::chrono::steady_clock::now();
  results_.clear();
  for (auto& c : choices_) results_.push_back(c->result);
  sink_->OnDone(*this);
}

}  // namespace moeserve::router
