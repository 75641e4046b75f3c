// The typed generation core of the router's front (DESIGN §3): every API —
// OpenAI chat completions and completions, Responses, Ollama, the public gRPC
// API — decodes its request into a GenerationSpec, and encodes the typed
// events a Generation emits. Nothing here knows JSON bodies, HTTP or protobuf
// messages of the public API.
//
//   spec --Generation::Start--> n choices submitted to the worker pool
//   sampled tokens --harmony parser / detokenizer, stop strings--> events
//   (reasoning delta, content delta, tool-call begin / arguments delta,
//   finish) --> the sink, then OnDone with per-choice results and usage.
//
// Threading: every Generation method runs on its sink's executor (Post):
// Start is called there, token callbacks from the group loops are posted
// there, so a generation needs no lock.
#pragma once

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "router/adapters.h"
#include "router/errors.h"
#include "router/grammar/reply_grammar.h"
#include "router/metrics.h"
#include "router/text/chat.h"
#include "router/text/harmony_parser.h"
#include "router/text/stop_matcher.h"
#include "router/text/tokenizer.h"
#include "router/worker_pool.h"

namespace moeserve::router {

// Request bodies nesting deeper than this are refused before parsing
// (docs/limits.md): no request needs more, and JSON Schemas of tools stay
// far below it.
inline constexpr int kMaxJsonDepth = 64;
// The deepest nesting of arrays and objects in JSON text (strings skipped),
// counting up to stop_at; not a validator.
int JsonDepth(std::string_view text, int stop_at);

// Per-request limits (docs/limits.md); beyond them a request gets a 400 that
// names the limit.
struct RequestLimits {
  int max_n = 16;             // choices per request
  int max_messages = 2048;    // chat messages
  int max_tools = 128;        // tools (OpenAI's limit)
  int max_stop = 16;          // stop strings
  int max_top_logprobs = 20;  // OpenAI's limit
};
// Entries of a logit_bias map (docs/limits.md).
inline constexpr int kMaxLogitBias = 1024;

// What every request of one router shares.
struct ApiContext {
  GenerationBackend* backend = nullptr;  // runs the generations (the pool)
  WorkerPool* pool = nullptr;            // its groups' state, for /ready, /metrics, model facts (may be null)
  const text::Tokenizer* tokenizer = nullptr;
  RouterMetrics* metrics = nullptr;
  std::string served_model_name = "gpt-oss";
  std::string current_date;  // rendered into the harmony system message
  RequestLimits limits;
  // The model's eos ids (the workers' Describe): where a generation stops.
  std::vector<int32_t> eos_token_ids;
  // Compiled reply grammars (structured output); null: requests that need one are refused.
  grammar::ReplyGrammarCache* grammars = nullptr;
  // LoRA adapters a request may name as its model (null: none).
  const AdapterRegistry* adapters = nullptr;
};

enum class ToolChoice { kAuto, kNone, kRequired, kNamed };

struct ResponseFormat {
  enum class Type { kText, kJsonObject, kJsonSchema };
  Type type = Type::kText;
  std::string name;
  std::string description;
  ordered_json schema;
  bool strict = false;
};

// A JSON-schema response format's {name, description, schema, strict} (OpenAI
// chat's response_format.json_schema, Responses' text.format); errors name `param`.
std::optional<ApiError> DecodeJsonSchemaFormat(const ordered_json& js, const std::string& param, ResponseFormat* out);

// OpenAI's defaults: temperature 1, top_p 1 (the proto's zeros would mean greedy).
inline worker::v1::SamplingParams DefaultSampling() {
  worker::v1::SamplingParams p;
  p.set_temperature(1.0f);
  p.set_top_p(1.0f);
  return p;
}

// What to generate, whatever API asked.
struct GenerationSpec {
  bool chat = true;   // a conversation rendered in harmony; else a raw prompt
  std::string model;  // empty: the served model
  // Chat.
  std::vector<text::ChatTurn> messages;
  std::vector<text::ToolDescription> tools;
  ToolChoice tool_choice = ToolChoice::kAuto;
  std::string tool_choice_name;  // kNamed
  std::string reasoning_effort = "medium";
  ResponseFormat response_format;
  // Raw prompt: token ids (text prompts are tokenized by the codec).
  std::vector<int32_t> prompt;
  // Both.
  std::optional<int64_t> max_tokens;  // unset: up to the context length
  worker::v1::SamplingParams sampling = DefaultSampling();  // includes logprobs, top_logprobs, seed
  std::vector<std::string> stops;
  std::vector<int32_t> stop_token_ids;  // beyond the model's own
  int n = 1;
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
  std::vector<std::pair<int32_t, float>> top;
};

struct GenerationEvent {
  enum class Kind { kReasoning, kContent, kToolCallBegin, kToolCallArguments, kFinish };
  Kind kind = Kind::kContent;
  int choice = 0;
  std::string text;         // reasoning / content / argument text; kFinish: the finish reason
  std::string tool_name;    // kToolCallBegin
  std::string call_id;      // kToolCallBegin / kToolCallArguments
  int tool_index = -1;      // kToolCallBegin / kToolCallArguments: 0, 1, ... within the choice
  std::optional<TokenLogprob> logprob;  // kContent: the token behind it (may come with empty text)
  std::vector<int32_t> token_ids;       // tokens sampled since this choice's previous event
};

struct ToolCallResult {
  std::string id, name, arguments;
};

// A finished choice, for encoders of whole (non-streamed) responses.
struct ChoiceResult {
  int index = 0;
  std::string content, reasoning;
  std::vector<ToolCallResult> calls;
  std::vector<TokenLogprob> logprobs;  // of the tokens that produced content
  std::vector<int32_t> tokens;         // all sampled tokens
  int64_t reasoning_tokens = 0;        // sampled tokens that produced reasoning text
  std::string finish_reason;           // stop | length | tool_calls
};

struct GenerationUsage {
  int64_t prompt_tokens = 0, completion_tokens = 0, cached_tokens = 0, reasoning_tokens = 0;
};

class Generation;

class GenerationSink {
 public:
  virtual ~GenerationSink() = default;
  // Runs fn on the executor that owns the generation, after what is queued.
  virtual void Post(std::function<void()> fn) = 0;
  // Every choice was submitted; events follow (streaming encoders write their head).
  virtual void OnStart(const Generation& g) = 0;
  virtual void OnEvent(const Generation& g, const GenerationEvent& e) = 0;
  // Every choice finished: results() and usage() are final.
  virtual void OnDone(const Generation& g) = 0;
  // The generation failed after it was started (a worker error with no group to move to).
  virtual void OnError(const Generation& g, const ApiError& error) = 0;
};

class Generation : public std::enable_shared_from_this<Generation> {
 public:
  // The prompt and the worker request of a spec, validated; or the error a
  // client gets. `max_model_len` stands for the pool's (tests and fuzzing).
  struct Prepared {
    GenerationRequest request;
  };
  static std::optional<ApiError> Prepare(const ApiContext& ctx, const GenerationSpec& spec, int64_t max_model_len,
                                         Prepared* out);
  // Whether the spec's reply may have a grammar to compile (a response format,
  // or tools a call may use): an HTTP front runs Prepare for such a spec off
  // its I/O threads first, so a first-seen schema's compile (up to hundreds of
  // milliseconds) does not hold up other connections.
  static bool MayCompileGrammar(const GenerationSpec& spec) {
    return spec.chat && (spec.response_format.type != ResponseFormat::Type::kText ||
                         (!spec.tools.empty() && spec.tool_choice != ToolChoice::kNone));
  }

  // Validates and submits the spec's n choices; on error nothing runs. `id`
  // names the response (call ids derive from it).
  static std::optional<ApiError> Start(ApiContext* ctx, GenerationSpec spec, std::string id,
                                       std::shared_ptr<GenerationSink> sink, std::shared_ptr<Generation>* out);
  // The client went away: every choice still running is aborted, nothing more is emitted.
  void Abort();

  const GenerationSpec& spec() const { return spec_; }
  // The model it runs: the served model's name or the adapter's (what responses echo).
  const std::string& model_name() const { return model_name_; }
  const std::string& id() const { return id_; }
  int64_t created() const { return created_; }  // unix seconds
  const std::vector<int32_t>& prompt() const { return prompt_; }
  const std::vector<ChoiceResult>& results() const { return results_; }
  // With sampling.prompt_logprobs: per prompt position, its token's logprob
  // (none for the first token). Complete once any choice produced a token.
  const std::vector<std::optional<TokenLogprob>>& prompt_logprobs() const { return prompt_logprobs_; }
  GenerationUsage usage() const;
  bool finished() const { return done_; }
  // Nanoseconds from Start to the first token of choice 0, and to the end (Ollama's durations).
  int64_t prompt_eval_ns() const;
  int64_t total_ns() const;

  struct Choice;
  Generation(ApiContext* ctx, GenerationSpec spec, std::string id, std::shared_ptr<GenerationSink> sink);
  ~Generation();

 private:
  void OnToken(Choice& c, const worker::v1::SampleOutput& s);
  void OnFinish(Choice& c, RequestStatus st, const std::string& why);
  void EmitContent(Choice& c, const std::string& raw);
  void Apply(Choice& c, const std::vector<text::HarmonyDelta>& ds);
  void Emit(Choice& c, GenerationEvent e);
  void Finish();

  ApiContext* ctx_;
  GenerationSpec spec_;
  std::string id_;
  std::shared_ptr<GenerationSink> sink_;
  int64_t created_ = 0;
  std::chrono::steady_clock::time_point start_, first_token_, end_;
  std::vector<int32_t> prompt_;
  std::string model_name_;
  std::vector<std::optional<TokenLogprob>> prompt_logprobs_;
  std::vector<std::unique_ptr<Choice>> choices_;
  std::vector<ChoiceResult> results_;
  int num_finished_ = 0;
  bool done_ = false, failed_ = false;
};

}  // namespace moeserve::router
