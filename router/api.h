// The OpenAI request semantics, shared by the HTTP gateway and the public
// gRPC API (DESIGN §2, §3): one validation, one generation state machine.
//
// A Completion takes an OpenAI-shaped body (/v1/chat/completions or
// /v1/completions), validates it, submits its n choices to the worker pool and
// turns their sampled tokens into OpenAI objects: chunks while streaming, one
// response otherwise. Output goes to a CompletionSink (SSE, a gRPC stream).
//
// Threading: every Completion method runs on the sink's executor (Post), so
// a completion needs no lock: Start is called there, and token callbacks from
// the group loops are posted there.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"
#include "router/metrics.h"
#include "router/text/harmony_parser.h"
#include "router/text/stop_matcher.h"
#include "router/text/tokenizer.h"
#include "router/worker_pool.h"

namespace moeserve::router {

using ordered_json = nlohmann::ordered_json;

struct ApiError {
  int status = 400;  // HTTP status
  std::string message;
  std::string type = "invalid_request_error";
  std::string param;
  std::string code;
  int retry_after = 0;  // seconds, for 429
};

// OpenAI's error object: {"error": {"message", "type", "param", "code"}}.
ordered_json ErrorJson(const ApiError& e);
ApiError FromStatus(const absl::Status& st);

// Request bodies nesting deeper than this are refused before parsing
// (docs/limits.md): no OpenAI request needs more, and JSON Schemas of tools
// stay far below it.
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

// What every request of one router shares.
struct ApiContext {
  WorkerPool* pool = nullptr;
  const text::Tokenizer* tokenizer = nullptr;
  RouterMetrics* metrics = nullptr;
  std::string served_model_name = "gpt-oss";
  std::string current_date;  // rendered into the harmony system message
  RequestLimits limits;
  // The model's eos ids (the workers' Describe): where a generation stops.
  std::vector<int32_t> eos_token_ids;
};

class CompletionSink {
 public:
  virtual ~CompletionSink() = default;
  // Runs fn on the executor that owns the completion, after what is queued.
  virtual void Post(std::function<void()> fn) = 0;
  // Streaming: one chunk object.
  virtual void OnChunk(const ordered_json& chunk) = 0;
  // The end: the whole response (not streaming) or null (streaming: after the last chunk).
  virtual void OnDone(const ordered_json& response) = 0;
  // The request failed after it was accepted (a worker error with no group to move to).
  virtual void OnError(const ApiError& error) = 0;
};

struct CompletionOptions {
  // Logprob entries in the chat shape for completions too, each with the
  // token's "id" (the gRPC API's form; HTTP keeps OpenAI's shapes).
  bool token_id_logprobs = false;
};

class Completion : public std::enable_shared_from_this<Completion> {
 public:
  // Validates `body` and submits it. On error nothing runs and the error is
  // returned. Streaming chat completions emit their role chunks at once.
  static std::optional<ApiError> Start(ApiContext* ctx, bool chat, const ordered_json& body,
                                       std::shared_ptr<CompletionSink> sink, std::shared_ptr<Completion>* out,
                                       CompletionOptions options = {});
  // What Start validates, without submitting: the request (n copies are
  // submitted) and its stop strings, or the error Start would return.
  // `max_model_len` stands for the pool's. For tests and fuzzing.
  struct Decoded {
    GenerationRequest request;
    std::vector<std::string> stops;
    int n = 1;
    bool stream = false;
  };
  static std::optional<ApiError> Decode(ApiContext* ctx, bool chat, const ordered_json& body, int64_t max_model_len,
                                        Decoded* out);
  // The client went away: every choice still running is aborted, nothing more is emitted.
  void Abort();
  bool stream() const { return stream_; }
  bool finished() const { return done_; }

  struct Choice;
  Completion(ApiContext* ctx, bool chat, std::shared_ptr<CompletionSink> sink);
  ~Completion();

 private:
  std::optional<ApiError> Parse(const ordered_json& body, int64_t max_model_len, GenerationRequest* request,
                                std::vector<std::string>* stops);
  // Parse, with any JSON type error it missed turned into a 400.
  std::optional<ApiError> SafeParse(const ordered_json& body, int64_t max_model_len, GenerationRequest* request,
                                    std::vector<std::string>* stops);
  void OnToken(Choice& c, const worker::v1::SampleOutput& s);
  void OnFinish(Choice& c, RequestStatus st, const std::string& why);
  void EmitContent(Choice& c, const std::string& raw);
  void Apply(Choice& c, const std::vector<text::HarmonyDelta>& ds);
  void Emit(Choice& c, ordered_json delta, ordered_json finish_reason, ordered_json logprobs = nullptr);
  ordered_json LogprobEntry(const worker::v1::SampleOutput& s) const;
  ordered_json LegacyLogprobs(Choice& c, const ordered_json& entries) const;
  ordered_json Usage() const;
  void Finish();

  ApiContext* ctx_;
  bool chat_;
  CompletionOptions options_;
  std::shared_ptr<CompletionSink> sink_;
  bool stream_ = false, include_usage_ = false, logprobs_ = false, return_token_ids_ = false;
  std::string response_id_;
  int64_t created_ = 0;
  std::vector<int32_t> prompt_;
  std::vector<int32_t> prefill_;  // tool_choice: the start of the reply, rendered into the prompt
  std::vector<std::unique_ptr<Choice>> choices_;
  int num_finished_ = 0;
  bool done_ = false, failed_ = false;
};

}  // namespace moeserve::router
