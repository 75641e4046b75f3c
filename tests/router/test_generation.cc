// The generation core and its codecs without sockets or workers: a scripted
// backend stands in for the worker pool and plays sampled tokens (harmony
// text tokenized by the real o200k_harmony tokenizer) into a Generation; the
// tests check the typed events, the results, and what each API's encoder
// writes (OpenAI chunks, Responses events, Ollama lines), parsed back as JSON.
#include <gtest/gtest.h>

#include <deque>

#include "absl/strings/str_split.h"
#include "router/errors.h"
#include "router/generation.h"
#include "router/ollama_api.h"
#include "router/openai_api.h"
#include "router/responses_api.h"

namespace moeserve::router {
namespace {

using json = ordered_json;

const text::Tokenizer& Tok() {
  static const text::Tokenizer* t = text::Tokenizer::FromTokenizerJson(MOESERVE_TOKENIZER_JSON)->release();
  return *t;
}

class ScriptedBackend : public GenerationBackend {
 public:
  struct Submitted {
    GenerationRequest request;
    GenerationCallbacks callbacks;
  };
  absl::StatusOr<int64_t> Submit(GenerationRequest request, GenerationCallbacks callbacks) override {
    if (capacity >= 0 && static_cast<int>(submitted.size()) >= capacity) {
      return absl::ResourceExhaustedError("the queue is full");
    }
    submitted.push_back({std::move(request), std::move(callbacks)});
    return static_cast<int64_t>(submitted.size()) - 1;
  }
  void Finish(int64_t id, RequestStatus status) override { finished.emplace_back(id, status); }
  int64_t max_model_len() const override { return 4096; }

  // Plays sampled tokens into request `id`, then its end (unless a stop string ended it first).
  void Play(int64_t id, const std::vector<int32_t>& tokens, RequestStatus end, const std::string& why = "") {
    for (int32_t t : tokens) {
      worker::v1::SampleOutput s;
      s.set_token(t);
      s.set_logprob(-0.5f);
      submitted[id].callbacks.on_token(s);
      if (StoppedEarly(id)) return submitted[id].callbacks.on_finish(RequestStatus::kFinishedStopped, "");
    }
    submitted[id].callbacks.on_finish(end, why);
  }
  bool StoppedEarly(int64_t id) const {
    for (const auto& [f, st] : finished) {
      if (f == id && st == RequestStatus::kFinishedStopped) return true;
    }
    return false;
  }

  int capacity = -1;
  std::vector<Submitted> submitted;
  std::vector<std::pair<int64_t, RequestStatus>> finished;
};

// Runs posted work at once (the test is its own executor) and keeps what the encoder writes.
class TestSink : public GenerationSink {
 public:
  explicit TestSink(std::unique_ptr<HttpEncoder> enc) : enc_(std::move(enc)) {}
  void Post(std::function<void()> fn) override { fn(); }
  void OnStart(const Generation& g) override {
    if (enc_->streaming()) bytes += enc_->Head(g);
  }
  void OnEvent(const Generation& g, const GenerationEvent& e) override {
    events.push_back(e);
    if (enc_->streaming()) bytes += enc_->Event(g, e);
  }
  void OnDone(const Generation& g) override {
    done = true;
    bytes += enc_->streaming() ? enc_->End(g) : enc_->Body(g);
  }
  void OnError(const Generation& g, const ApiError& e) override {
    error = e;
    if (enc_->streaming()) bytes += enc_->StreamError(g, e);
  }

  std::vector<GenerationEvent> events;
  std::string bytes;
  bool done = false;
  std::optional<ApiError> error;

 private:
  std::unique_ptr<HttpEncoder> enc_;
};

class GenerationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ctx_.backend = &backend_;
    ctx_.tokenizer = &Tok();
    ctx_.metrics = &metrics_;
    ctx_.served_model_name = "gpt-oss";
    ctx_.eos_token_ids = {200002, 199999, 200012};
    static grammar::ReplyGrammarCache* grammars = new grammar::ReplyGrammarCache(Tok());
    ctx_.grammars = grammars;
  }

  std::vector<int32_t> Ids(const std::string& harmony) { return Tok().EncodeWithSpecials(harmony); }

  GenerationSpec Chat(const std::string& user) {
    GenerationSpec s;
    s.messages.push_back({"user", user, "", {}, "", ""});
    return s;
  }

  std::shared_ptr<TestSink> Start(GenerationSpec spec, std::unique_ptr<HttpEncoder> enc,
                                  std::optional<ApiError>* err = nullptr) {
    auto sink = std::make_shared<TestSink>(std::move(enc));
    std::shared_ptr<Generation> g;
    auto e = Generation::Start(&ctx_, std::move(spec), "chatcmpl-1", sink, &g);
    if (err) *err = e;
    else EXPECT_FALSE(e.has_value()) << e->message;
    generation_ = g;
    return sink;
  }

  static std::vector<json> SseData(const std::string& bytes) {
    std::vector<json> out;
    for (absl::string_view line : absl::StrSplit(bytes, '\n')) {
      if (absl::ConsumePrefix(&line, "data: ") && line != "[DONE]") out.push_back(json::parse(line));
    }
    return out;
  }

  ScriptedBackend backend_;
  RouterMetrics metrics_;
  ApiContext ctx_;
  std::shared_ptr<Generation> generation_;
  // Reasoning, then a call to get_weather with JSON arguments, as gpt-oss writes it.
  const std::string kToolReply =
      "<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
      "to=functions.get_weather <|constrain|>json<|message|>{\"city\": \"Paris\"}<|call|>";
};

TEST_F(GenerationTest, HarmonyReplyBecomesTypedEventsAndResults) {
  GenerationSpec spec = Chat("Weather in Paris?");
  spec.tools.push_back({"get_weather", "", json{{"type", "object"}}});
  auto sink = Start(std::move(spec), MakeOpenAiEncoder(ctx_, true, {}));
  ASSERT_EQ(backend_.submitted.size(), 1u);
  backend_.Play(0, Ids(kToolReply), RequestStatus::kFinishedStopped);
  ASSERT_TRUE(sink->done);
  std::string reasoning, args, name;
  for (const auto& e : sink->events) {
    if (e.kind == GenerationEvent::Kind::kReasoning) reasoning += e.text;
    if (e.kind == GenerationEvent::Kind::kToolCallBegin) name = e.tool_name;
    if (e.kind == GenerationEvent::Kind::kToolCallArguments) args += e.text;
  }
  EXPECT_EQ(reasoning, "Need the weather.");
  EXPECT_EQ(name, "get_weather");
  EXPECT_EQ(args, "{\"city\": \"Paris\"}");
  EXPECT_EQ(sink->events.back().kind, GenerationEvent::Kind::kFinish);
  EXPECT_EQ(sink->events.back().text, "tool_calls");
  const ChoiceResult& r = generation_->results().at(0);
  EXPECT_EQ(r.reasoning, "Need the weather.");
  ASSERT_EQ(r.calls.size(), 1u);
  EXPECT_EQ(r.calls[0].arguments, "{\"city\": \"Paris\"}");
  EXPECT_EQ(r.finish_reason, "tool_calls");
  // Every sampled token is reported once, on some event.
  size_t reported = 0;
  for (const auto& e : sink->events) reported += e.token_ids.size();
  EXPECT_EQ(reported, r.tokens.size());
  EXPECT_GT(r.reasoning_tokens, 0);
  EXPECT_LT(r.reasoning_tokens, static_cast<int64_t>(r.tokens.size()));
  // The OpenAI body: the call in the message, arguments intact.
  const json body = json::parse(sink->bytes);
  EXPECT_EQ(body["choices"][0]["finish_reason"], "tool_calls");
  EXPECT_EQ(body["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(body["choices"][0]["message"]["reasoning_content"], "Need the weather.");
  EXPECT_EQ(body["usage"]["completion_tokens"], static_cast<int64_t>(r.tokens.size()));
}

TEST_F(GenerationTest, StopStringEndsTheChoiceAcrossTokens) {
  GenerationSpec spec = Chat("x");
  spec.stops = {"END"};
  OpenAiOptions o;
  o.stream = true;
  auto sink = Start(std::move(spec), MakeOpenAiEncoder(ctx_, true, o));
  backend_.Play(0, Ids("<|channel|>final<|message|>Hello wor" "ld EN" "D and more<|return|>"),
                RequestStatus::kFinishedStopped);
  ASSERT_TRUE(sink->done);
  ASSERT_EQ(backend_.finished.size(), 1u);
  EXPECT_EQ(backend_.finished[0].second, RequestStatus::kFinishedStopped);
  std::string content;
  std::string finish;
  for (const json& c : SseData(sink->bytes)) {
    const json& ch = c["choices"][0];
    if (ch["delta"].contains("content")) content += ch["delta"]["content"].get<std::string>();
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  EXPECT_EQ(content, "Hello world ");
  EXPECT_EQ(finish, "stop");
  EXPECT_NE(sink->bytes.find("data: [DONE]\n\n"), std::string::npos);
}

TEST_F(GenerationTest, ChoicesGetSeedPlusIndexAndAFailedChoiceFailsTheRequest) {
  GenerationSpec spec = Chat("x");
  spec.n = 3;
  spec.sampling.set_has_seed(true);
  spec.sampling.set_seed(10);
  auto sink = Start(std::move(spec), MakeOpenAiEncoder(ctx_, true, {}));
  ASSERT_EQ(backend_.submitted.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(backend_.submitted[i].request.sampling.seed(), 10u + i);
  backend_.Play(0, Ids("<|channel|>final<|message|>ok<|return|>"), RequestStatus::kFinishedStopped);
  backend_.Play(1, {}, RequestStatus::kFinishedError, "worker lost");
  ASSERT_TRUE(sink->error.has_value());
  EXPECT_EQ(sink->error->status, 500);
  EXPECT_EQ(sink->error->message, "worker lost");
  EXPECT_FALSE(sink->done);
  ASSERT_EQ(backend_.finished.size(), 1u);  // the third, still running, is aborted
  EXPECT_EQ(backend_.finished[0], std::make_pair(int64_t{2}, RequestStatus::kFinishedAborted));
  backend_.Play(2, {}, RequestStatus::kFinishedAborted);  // its end arrives and changes nothing
  EXPECT_FALSE(sink->done);
}

TEST_F(GenerationTest, AFullQueueRefusesTheWholeRequest) {
  backend_.capacity = 1;
  GenerationSpec spec = Chat("x");
  spec.n = 2;
  std::optional<ApiError> err;
  auto sink = Start(std::move(spec), MakeOpenAiEncoder(ctx_, true, {}), &err);
  ASSERT_TRUE(err.has_value());
  EXPECT_EQ(err->status, 429);
  EXPECT_EQ(err->retry_after, 1);
  ASSERT_EQ(backend_.finished.size(), 1u);
  EXPECT_EQ(backend_.finished[0].second, RequestStatus::kFinishedAborted);
}

// Whether the request's grammar accepts `harmony` (a whole reply) token by token.
bool GrammarAccepts(const GenerationRequest& r, const std::vector<int32_t>& ids) {
  if (!r.grammar) return false;
  grammar::GrammarMatcher m(r.grammar);
  for (int32_t t : ids) {
    if (!m.Accept(t)) return false;
  }
  return m.can_end();
}

TEST_F(GenerationTest, ToolChoiceAndResponseFormatBecomeTheReplysGrammar) {
  const json params = json::parse(R"({"type":"object","properties":{"city":{"type":"string"}},"required":["city"]})");
  GenerationSpec spec = Chat("x");
  spec.tools.push_back({"get_weather", "", params});
  spec.tools.push_back({"get_time", "", std::nullopt});
  spec.tool_choice = ToolChoice::kNamed;
  spec.tool_choice_name = "get_weather";
  auto sink = Start(spec, MakeOpenAiEncoder(ctx_, true, {}));
  const GenerationRequest& named = backend_.submitted[0].request;
  // The prompt ends with "<|start|>assistant": the model writes the call itself, reasoning first if it likes.
  const std::vector<int32_t> tail = Ids("<|start|>assistant");
  EXPECT_TRUE(std::equal(tail.begin(), tail.end(), named.prompt.end() - tail.size()));
  EXPECT_TRUE(GrammarAccepts(named, Ids(kToolReply)));
  EXPECT_TRUE(GrammarAccepts(named, Ids("<|channel|>commentary to=functions.get_weather<|message|>{\"city\":\"Oslo\"}<|call|>")));
  EXPECT_TRUE(GrammarAccepts(named, Ids(" to=functions.get_weather<|channel|>commentary json<|message|>{\"city\":\"a\"}<|call|>")));
  EXPECT_FALSE(GrammarAccepts(named, Ids("<|channel|>commentary to=functions.get_weather<|message|>{\"town\":\"Oslo\"}<|call|>")));
  EXPECT_FALSE(GrammarAccepts(named, Ids("<|channel|>commentary to=functions.get_time<|message|>{}<|call|>")));
  EXPECT_FALSE(GrammarAccepts(named, Ids("<|channel|>final<|message|>Hi<|return|>")));
  backend_.Play(0, Ids(kToolReply), RequestStatus::kFinishedStopped);
  EXPECT_EQ(generation_->results()[0].calls[0].arguments, "{\"city\": \"Paris\"}");

  // "auto": a final answer or a call to a declared function (arguments free unless the tool is strict).
  spec.tool_choice = ToolChoice::kAuto;
  Start(spec, MakeOpenAiEncoder(ctx_, true, {}));
  const GenerationRequest& automatic = backend_.submitted[1].request;
  EXPECT_TRUE(GrammarAccepts(automatic, Ids("<|channel|>final<|message|>Hi<|return|>")));
  EXPECT_TRUE(GrammarAccepts(automatic, Ids("<|channel|>commentary to=functions.get_weather<|message|>not json<|call|>")));
  EXPECT_FALSE(GrammarAccepts(automatic, Ids("<|channel|>commentary to=functions.get_date<|message|>{}<|call|>")));
  spec.tools[0].strict = true;
  Start(spec, MakeOpenAiEncoder(ctx_, true, {}));
  EXPECT_FALSE(GrammarAccepts(backend_.submitted[2].request,
                              Ids("<|channel|>commentary to=functions.get_weather<|message|>not json<|call|>")));

  // A response format: the reasoning is free, the final message is the schema's JSON and ends the turn.
  GenerationSpec f = Chat("x");
  f.response_format.type = ResponseFormat::Type::kJsonSchema;
  f.response_format.name = "city";
  f.response_format.schema = params;
  Start(f, MakeOpenAiEncoder(ctx_, true, {}));
  const GenerationRequest& formatted = backend_.submitted[3].request;
  EXPECT_TRUE(GrammarAccepts(formatted, Ids("<|channel|>analysis<|message|>Think {freely}.<|end|>"
                                            "<|start|>assistant<|channel|>final<|message|>{\"city\":\"Oslo\"}<|return|>")));
  EXPECT_FALSE(GrammarAccepts(formatted, Ids("<|channel|>final<|message|>{\"city\":1}<|return|>")));
  EXPECT_FALSE(GrammarAccepts(formatted, Ids("<|channel|>final<|message|>{\"city\":\"Oslo\"}<|end|>")));
  EXPECT_FALSE(GrammarAccepts(formatted, Ids("<|channel|>commentary to=functions.get_weather<|message|>{}<|call|>")));
  // The schema is shown to the model in the developer message.
  const std::string prompt = *Tok().Decode(formatted.prompt);
  EXPECT_NE(prompt.find("# Response Formats\n\n## city\n\n{\"type\":\"object\""), std::string::npos) << prompt;
  // Without a constraint no grammar goes with the request.
  Start(Chat("x"), MakeOpenAiEncoder(ctx_, true, {}));
  EXPECT_EQ(backend_.submitted[4].request.grammar, nullptr);
}

TEST_F(GenerationTest, PrepareRefusesWhatNoApiMayAsk) {
  Generation::Prepared p;
  GenerationSpec s = Chat("x");
  s.tool_choice = ToolChoice::kNamed;
  s.tool_choice_name = "nope";
  EXPECT_EQ(Generation::Prepare(ctx_, s, 4096, &p)->param, "tool_choice");
  s = Chat("x");
  s.response_format.type = ResponseFormat::Type::kJsonSchema;
  s.response_format.schema = json::parse(R"({"type":"object","patternProperties":{}})");
  EXPECT_EQ(Generation::Prepare(ctx_, s, 4096, &p)->param, "response_format");
  s = Chat("x");
  s.tools.push_back({"f", "", json::parse(R"({"type":"object","properties":{"a":{"not":{}}}})")});
  s.tool_choice = ToolChoice::kRequired;
  EXPECT_EQ(Generation::Prepare(ctx_, s, 4096, &p)->param, "tools");
  s = Chat("x");
  s.n = 17;
  EXPECT_EQ(Generation::Prepare(ctx_, s, 4096, &p)->param, "n");
  s = Chat("x");
  s.sampling.set_top_p(0);
  EXPECT_EQ(Generation::Prepare(ctx_, s, 4096, &p)->param, "top_p");
  s = Chat("x");
  s.model = "llama3";
  EXPECT_EQ(Generation::Prepare(ctx_, s, 4096, &p)->status, 404);
  s = GenerationSpec();
  s.chat = false;
  s.prompt = {1, 300000};
  EXPECT_EQ(Generation::Prepare(ctx_, s, 4096, &p)->param, "prompt");
  s = Chat("x");
  ASSERT_FALSE(Generation::Prepare(ctx_, s, 4096, &p).has_value());
  EXPECT_EQ(p.request.max_tokens, 4096 - static_cast<int64_t>(p.request.prompt.size()));
}

TEST_F(GenerationTest, ResponsesEventsAreNumberedAndPaired) {
  ResponseStore store(4, std::chrono::seconds(60));
  GenerationSpec spec;
  ResponsesRequest req;
  json body = {{"input", "Weather in Paris?"}, {"stream", true},
               {"tools", json::array({{{"type", "function"}, {"name", "get_weather"}}})}};
  ASSERT_FALSE(DecodeResponses(ctx_, body, &store, &spec, &req).has_value());
  const std::string id = req.id;
  auto sink = Start(std::move(spec), MakeResponsesEncoder(ctx_, std::move(req), &store));
  backend_.Play(0, Ids(kToolReply), RequestStatus::kFinishedStopped);
  ASSERT_TRUE(sink->done);
  std::vector<json> events;
  for (absl::string_view block : absl::StrSplit(sink->bytes, "\n\n", absl::SkipEmpty())) {
    std::vector<absl::string_view> lines = absl::StrSplit(block, '\n');
    ASSERT_EQ(lines.size(), 2u);
    ASSERT_TRUE(absl::ConsumePrefix(&lines[0], "event: "));
    ASSERT_TRUE(absl::ConsumePrefix(&lines[1], "data: "));
    events.push_back(json::parse(lines[1]));
    EXPECT_EQ(events.back()["type"], std::string(lines[0]));
  }
  std::vector<std::string> added;
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i]["sequence_number"], static_cast<int64_t>(i));
    if (events[i]["type"] == "response.output_item.added") added.push_back(events[i]["item"]["type"]);
  }
  EXPECT_EQ(added, (std::vector<std::string>{"reasoning", "function_call"}));
  EXPECT_EQ(events.front()["type"], "response.created");
  EXPECT_EQ(events.back()["type"], "response.completed");
  const json& out = events.back()["response"]["output"];
  EXPECT_EQ(out[1]["arguments"], "{\"city\": \"Paris\"}");
  EXPECT_EQ(out[1]["call_id"], "call_chatcmpl-1_0_0");
  // Stored: the conversation continues with the call in it.
  auto entry = store.Get(id);
  ASSERT_TRUE(entry.has_value());
  ASSERT_EQ(entry->conversation.size(), 2u);
  ASSERT_EQ(entry->conversation[1].tool_calls.size(), 1u);
  EXPECT_EQ(entry->conversation[1].tool_calls[0].name, "get_weather");
  EXPECT_EQ(entry->conversation[1].reasoning, "Need the weather.");
}

TEST_F(GenerationTest, OllamaLinesCarryWholeToolCallsAndAFinalObject) {
  GenerationSpec spec;
  OllamaOptions o;
  json body = {{"model", "gpt-oss:latest"}, {"messages", json::array({{{"role", "user"}, {"content", "x"}}})},
               {"tools", json::array({{{"type", "function"}, {"function", {{"name", "get_weather"}}}}})}};
  ASSERT_FALSE(DecodeOllama(ctx_, true, body, &spec, &o).has_value());
  EXPECT_TRUE(o.stream);
  auto sink = Start(std::move(spec), MakeOllamaEncoder(ctx_, o));
  backend_.Play(0, Ids(kToolReply), RequestStatus::kFinishedStopped);
  std::vector<json> lines;
  for (absl::string_view l : absl::StrSplit(sink->bytes, '\n', absl::SkipEmpty())) lines.push_back(json::parse(l));
  ASSERT_GE(lines.size(), 3u);
  std::string thinking;
  json calls = json::array();
  for (const json& l : lines) {
    thinking += l["message"].value("thinking", "");
    if (l["message"].contains("tool_calls")) calls.push_back(l["message"]["tool_calls"][0]);
  }
  EXPECT_EQ(thinking, "Need the weather.");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0]["function"]["arguments"], json({{"city", "Paris"}}));
  EXPECT_TRUE(lines.back()["done"].get<bool>());
  EXPECT_EQ(lines.back()["eval_count"], static_cast<int64_t>(generation_->results()[0].tokens.size()));
}

TEST_F(GenerationTest, OpenAiDecoderHonoursOrRefusesEveryField) {
  GenerationSpec spec;
  OpenAiOptions o;
  json body = {{"prompt", "Hi"}, {"logit_bias", {{"290", 100}, {"13", -100}}}, {"echo", true},
               {"repetition_penalty", 1.2}, {"user", "u"}, {"skip_special_tokens", true}};
  ASSERT_FALSE(DecodeOpenAi(ctx_, false, body, &spec, &o).has_value());
  EXPECT_EQ(spec.sampling.logit_bias().at(290), 100.0f);
  EXPECT_EQ(spec.sampling.logit_bias().at(13), -100.0f);
  EXPECT_FLOAT_EQ(spec.sampling.repetition_penalty(), 1.2f);
  EXPECT_TRUE(o.echo);
  EXPECT_EQ(o.echo_text, "Hi");
  for (const auto& [field, value] : std::vector<std::pair<std::string, json>>{
           {"frobnicate", 1}, {"ignore_eos", true}, {"logit_bias", {{"x", 1}}}, {"logit_bias", {{"5", 200}}},
           {"stream_options", {{"include_usage", true}}}, {"suffix", "x"}, {"best_of", 4}}) {
    GenerationSpec s;
    OpenAiOptions opts;
    json b = {{"prompt", "Hi"}};
    b[field] = value;
    auto err = DecodeOpenAi(ctx_, false, b, &s, &opts);
    ASSERT_TRUE(err.has_value()) << field;
    EXPECT_EQ(err->status, 400) << field;
    EXPECT_EQ(err->param, field) << field;
  }
}

TEST(ErrorTable, StatusesMapBothWays) {
  EXPECT_EQ(FromStatus(absl::InvalidArgumentError("x")).status, 400);
  EXPECT_EQ(FromStatus(absl::NotFoundError("x")).status, 404);
  const ApiError busy = FromStatus(absl::ResourceExhaustedError("x"));
  EXPECT_EQ(busy.status, 429);
  EXPECT_EQ(busy.type, "rate_limit_error");
  EXPECT_EQ(busy.retry_after, 1);
  EXPECT_EQ(FromStatus(absl::UnavailableError("x")).status, 503);
  EXPECT_EQ(FromStatus(absl::InternalError("x")).type, "server_error");
  EXPECT_EQ(FromStatus(absl::DataLossError("x")).status, 500);
  for (int http : {400, 401, 404, 429, 500, 501, 503}) {
    ApiError e;
    e.status = http;
    EXPECT_EQ(FromStatus(absl::Status(StatusCodeOf(e), "x")).status, http) << http;
  }
  ApiError too_big;
  too_big.status = 413;
  EXPECT_EQ(StatusCodeOf(too_big), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(OllamaErrorJson(BadRequest("bad 'stop'", "stop")), json({{"error", "bad 'stop'"}}));
}

}  // namespace
}  // namespace moeserve::router
